"""Training the EAGLE head: KL to the target's next-token distribution plus smooth-L1 on the predicted feature, at
draft depth 1..``ttt_depth`` (depth > 1 feeds the head's own predictions, as at inference: "training-time test")."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from speckv.drafters.eagle import EagleHead, head_config
from speckv.kvcache import CACHE_KWARG


def kl_to_target(student: torch.Tensor, target_feat: torch.Tensor, weight: torch.Tensor):
    """Mean KL(p_target ‖ q_student) over rows [N, H]; both logits through the same frozen LM head weight."""
    with torch.no_grad():
        p_log = F.log_softmax(F.linear(target_feat, weight).float(), dim=-1)
    q_log = F.log_softmax(F.linear(student, weight).float(), dim=-1)
    return (p_log.exp() * (p_log - q_log)).sum(-1).mean()


def ttt_mask(length: int, depth: int) -> torch.Tensor:
    """[n, keys] bool for the n = length - depth slots of draft depth ``depth`` ("training-time test").

    The cache holds one block per earlier depth e (length - e slots each, slot i of every block belongs to the
    chain that starts at real slot i). A depth-d slot i sees real slots j ≤ i and its own chain at depths 1..d —
    exactly what a drafted position sees at inference."""
    n = length - depth
    real = torch.ones(n, length, dtype=torch.bool).tril()
    return torch.cat([real] + [torch.eye(n, length - e, dtype=torch.bool) for e in range(1, depth + 1)], dim=1)


def ttt_forward(head: EagleHead, feats: torch.Tensor, embeds: torch.Tensor, depth: int) -> list[torch.Tensor]:
    """Predicted features at draft depths 1..depth for every slot: ``feats``/``embeds`` [B, W, H] of tokens x_0..x_{W-1}.

    Slot i at depth d (0-based) has position i+d, feeds (depth d-1's prediction, or f_i when d = 0; x_{i+d+1}) and
    predicts the feature at i+d+1. Returns depth d's predictions as [B, W-1-d, H]."""
    from transformers import DynamicCache

    batch, width, _ = feats.shape
    length = width - 1
    cache = DynamicCache()
    cur, preds = feats, []  # depth 0 feeds the real features f_i
    for d in range(depth):
        n = length - d  # slots whose token x_{i+d+1} exists
        mask = ttt_mask(length, d)[None, None].expand(batch, 1, -1, -1)
        position_ids = (torch.arange(n) + d)[None, :].expand(batch, -1)
        cur = head(cur[:, :n], embeds[:, d + 1 : d + 1 + n], attention_mask=mask, position_ids=position_ids,
                   use_cache=True, **{CACHE_KWARG: cache})
        preds.append(cur)  # the next depth feeds these predictions
    return preds


def eagle_loss(head: EagleHead, target, toks, feats, prompt, lens, depth: int, feat_weight: float,
               draft_vocab: int | None = None):
    """KL + feat_weight · smooth-L1 averaged over draft depths 1..depth, on answer positions only.

    With ``draft_vocab`` the KL is over the head's restricted vocabulary (the target renormalised on it), as the
    head drafts at inference; that also makes the LM-head matmuls, the bulk of a step, several times cheaper."""
    weight = target.get_output_embeddings().weight[:draft_vocab]
    embeds = target.get_input_embeddings()(toks).float()  # [B, W, H]
    total, stats = 0.0, {}
    for d, pred in enumerate(ttt_forward(head, feats, embeds, depth)):
        # the feature predicted at i+d+1 drafts token i+d+2, which must be an answer token after the target's
        # first one, and lie inside the sequence (not after EOS)
        i = torch.arange(pred.shape[1])[None, :]
        keep = (i + d + 2 >= prompt[:, None] + 1) & (i + d + 2 <= lens[:, None] - 1)
        real = feats[:, d + 1 : d + 1 + pred.shape[1]]
        kl = kl_to_target(pred[keep], real[keep], weight)
        reg = F.smooth_l1_loss(pred[keep].float(), real[keep])
        total = total + kl + feat_weight * reg
        stats[f"kl{d + 1}"] = float(kl)
        if d == 0:
            stats["reg"] = float(reg)
    return total / depth, stats


def init_eagle_head(target) -> EagleHead:
    """Start from the target's last decoder layer and final norm: the head's output lives where f lives."""
    head = EagleHead(head_config(target.config)).float()
    head.model.layers[0].load_state_dict(target.model.layers[-1].state_dict())
    head.model.norm.load_state_dict(target.model.norm.state_dict())
    return head.float()


