"""Training the independent draft LM: a subset of the target's layers, some copied and frozen, some trained — in
full, or as low-rank updates of the target's own weights — the target's (tied) embedding / LM head frozen. Loss:
KL(target ‖ draft). Only the trained tensors (or the updates' factors) ship; ``speckv.drafters.draft_lm.draft_lm_dir``
assembles a full Hugging Face checkpoint from them on first use."""

from __future__ import annotations

import torch

from speckv.distill.eagle import kl_to_target
from speckv.drafters.draft_lm import draft_lm_config


def parse_layers(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


class LowRankDelta(torch.nn.Module):
    """A trained low-rank update of a frozen weight, W = W0 + B·A, as a parametrization (W0 stays as it is).

    B starts at zero, so training starts from the target's own layer; only A and B are shipped."""

    def __init__(self, out_features: int, in_features: int, rank: int) -> None:
        super().__init__()
        self.A = torch.nn.Parameter(torch.randn(rank, in_features) / in_features**0.5)
        self.B = torch.nn.Parameter(torch.zeros(out_features, rank))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.B @ self.A


def build_draft_lm(target, frozen: list[int], trained: list[int], lora_rank: int = 0):
    """LlamaForCausalLM: target layers ``frozen`` (copied, not trained) then ``trained`` (initialised from them);
    with ``lora_rank`` > 0 a trained layer keeps the target's weights frozen and learns a rank-``lora_rank`` update
    of each of its linear maps (and its norms in full), so that many layers can be trained and still shipped small."""
    from torch.nn.utils import parametrize
    from transformers import AutoModelForCausalLM

    config = draft_lm_config(target.config, len(frozen) + len(trained))
    draft = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    for k, src in enumerate(frozen + trained):
        draft.model.layers[k].load_state_dict(target.model.layers[src].state_dict())
    draft.model.norm.load_state_dict(target.model.norm.state_dict())
    # shared with the target, frozen, and set after any dtype cast (a cast would convert the target's own tensor)
    draft.model.embed_tokens.weight = target.get_input_embeddings().weight
    draft.lm_head.weight = draft.model.embed_tokens.weight
    draft.requires_grad_(False)
    for k in range(len(frozen), len(frozen) + len(trained)):
        layer = draft.model.layers[k]
        if not lora_rank:
            layer.requires_grad_(True)
            continue
        for module in list(layer.modules()):
            if isinstance(module, torch.nn.Linear):
                delta = LowRankDelta(module.out_features, module.in_features, lora_rank)
                parametrize.register_parametrization(module, "weight", delta)
            elif "norm" in type(module).__name__.lower():
                module.requires_grad_(True)
    draft.model.norm.requires_grad_(True)
    return draft


def trained_state(draft) -> dict[str, torch.Tensor]:
    """What ships: every tensor :func:`build_draft_lm` left trainable, a low-rank update as its factors
    ``<module>.lora_A`` / ``<module>.lora_B``."""
    return {name.replace(".parametrizations.weight.0.", ".lora_"): p.detach()
            for name, p in draft.named_parameters() if p.requires_grad}


def lm_loss(draft, target, toks, feats, prompt, lens):
    hidden = draft.model(input_ids=toks).last_hidden_state  # [B, L, H]
    i = torch.arange(toks.shape[1])[None, :]
    # position i predicts token i+1: train where that is an answer token (the target's own first one included)
    keep = (i + 1 >= prompt[:, None]) & (i + 1 <= lens[:, None] - 1)
    weight = target.get_output_embeddings().weight
    kl = kl_to_target(hidden[keep], feats[keep], weight)
    return kl, {"kl": float(kl)}


