"""EAGLE-style drafter: a one-layer head over the target's own features.

The head predicts the target's next *feature* (``target.model(...).last_hidden_state``, the input of
``target.lm_head``) from the current feature and the embedding of the token that follows it:

    f̂_{t+1} = norm(layer(fc([f_t ; e(x_{t+1})])))         logits for x_{t+2} = lm_head(f̂_{t+1})

Committed positions feed the target's real features; positions drafted beyond them feed the head's own
prediction f̂. The target's ``embed_tokens`` and ``lm_head`` are reused (frozen, not copied). The head may be
restricted to the first ``draft_vocab`` token ids (BPE ids are roughly ordered by frequency, so this is a
slice of the LM head, not a copy); its logits then cover those ids only (the protocol's "the rest have probability
0"), and verification against the target's full distribution stays lossless.

Files: ``model.safetensors`` (fc + decoder layer + norm) and ``eagle.json`` (head config and training
metadata). No pickle.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import LlamaConfig, LlamaModel

from speckv.drafters import int8
from speckv.drafters.draft_lm import pad_right
from speckv.kvcache import CACHE_KWARG, RaggedCache
from speckv.models import ASSETS

WEIGHTS_FILE = "model.safetensors"
META_FILE = "eagle.json"
#: Fields of the target's config the head's decoder layer copies (attention shape, MLP width, RoPE).
_LAYER_FIELDS = (
    "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim",
    "hidden_act", "rms_norm_eps", "rope_theta", "rope_parameters", "rope_scaling", "max_position_embeddings",
    "attention_bias", "mlp_bias",
)


def default_eagle_path() -> Path:
    """The head shipped for the embedded target (trained by ``speckv distill --kind eagle``)."""
    return ASSETS / "eagle"


def head_config(target_config) -> dict:
    """The head's decoder config: the target's layer shape, one layer, and a 1-token vocabulary (no embedding copy)."""
    src = target_config.to_dict()
    cfg = {k: src[k] for k in _LAYER_FIELDS if src.get(k) is not None}
    cfg.update(num_hidden_layers=1, vocab_size=1, pad_token_id=None, bos_token_id=None, eos_token_id=None,
               tie_word_embeddings=False)
    return cfg


class EagleHead(nn.Module):
    """fc over [feature ; token embedding] → one Llama decoder layer → RMSNorm → predicted feature."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        hidden = config["hidden_size"]
        self.config = dict(config)
        self.fc = nn.Linear(2 * hidden, hidden, bias=True)
        # sdpa: takes the boolean 4-D masks of training-time test as well as the ragged 2-D masks at inference
        self.model = LlamaModel(LlamaConfig(**config, attn_implementation="sdpa"))

    def forward(
        self,
        features: torch.Tensor,  # [B, L, H] target (or predicted) features
        token_embeds: torch.Tensor,  # [B, L, H] embeddings of the token after each feature
        **model_kwargs,  # attention_mask / position_ids / cache for the decoder layer
    ) -> torch.Tensor:  # [B, L, H] predicted next features
        x = self.fc(torch.cat([features, token_embeds], dim=-1))
        return self.model(inputs_embeds=x, **model_kwargs).last_hidden_state


class EagleDrafter:
    """Implements :class:`speckv.drafters.base.Drafter` with an :class:`EagleHead` and a :class:`RaggedCache`."""

    needs_target_hidden = True
    kind = "eagle"

    def __init__(self, head: EagleHead, target_model: nn.Module, device: torch.device,
                 draft_vocab: int | None = None, metadata: dict | None = None, int8_weights: bool = False) -> None:
        self.head = head.to(device).eval().requires_grad_(False)
        self.embed = target_model.get_input_embeddings()
        self.lm_head = target_model.get_output_embeddings()
        full = int(self.lm_head.weight.shape[0])
        self.draft_vocab = draft_vocab if draft_vocab and draft_vocab < full else None
        self.vocab_size = self.draft_vocab or full
        self.device = device
        self.metadata = metadata or {}
        self.dtype = next(self.head.parameters()).dtype
        # on CPU the head's layer and its LM-head slice can read int8 weights (see speckv.drafters.int8); the
        # target's own LM head stays as it is, the head reads a quantized copy of its first rows
        self.int8_weights = int8_weights and int8.available(device) and self.lm_head.weight.dtype.is_floating_point
        self._int8_logits: int8.Int8Linear | None = None
        if self.int8_weights:
            self.head = copy.deepcopy(self.head)  # quantized in place: never alter the caller's module
            int8.quantize_linears(self.head)
            self._int8_logits = int8.Int8Linear(self.lm_head.weight[: self.draft_vocab], None, self.dtype)
        self._reset(0)

    # ---- loading / saving -------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, target_model: nn.Module, device: torch.device,
             int8_weights: bool = False) -> EagleDrafter:
        path = Path(path)
        meta = json.loads((path / META_FILE).read_text())
        head = EagleHead(meta["head_config"])
        head.load_state_dict(load_file(path / WEIGHTS_FILE), strict=True)
        # the head computes in the target's dtype: its features and embeddings arrive in that dtype
        dtype = target_model.get_output_embeddings().weight.dtype
        if not dtype.is_floating_point or dtype.itemsize < 2:  # quantized LM head: keep bf16
            dtype = torch.bfloat16
        head.to(dtype)
        return cls(head, target_model, device, draft_vocab=meta.get("draft_vocab"), metadata=meta,
                   int8_weights=int8_weights)

    @staticmethod
    def save(head: EagleHead, path: str | Path, metadata: dict, dtype: torch.dtype = torch.bfloat16) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to(dtype).contiguous() for k, v in head.state_dict().items()}
        save_file(state, path / WEIGHTS_FILE)
        (path / META_FILE).write_text(json.dumps({"head_config": head.config, **metadata}, indent=2) + "\n")

    # ---- the Drafter protocol ---------------------------------------------------------------------------
    def _reset(self, batch: int) -> None:
        self.cache = RaggedCache(batch, self.device)
        # committed positions not yet fed to the head, as whole-batch chunks (tokens [B, w], features [B, w, H],
        # valid [B, w]): feature f_t with the token x_{t+1} after it. A commit appends one chunk, whatever B is
        # (a plain step costs the drafter a list append); invalid slots become holes in the head's cache.
        self.queue: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.last_pred: torch.Tensor | None = None  # [B, H] the head's latest predicted feature
        self.draft_slots = 0  # cache slots fed with predicted features since the last commit

    @torch.no_grad()
    def prefill(self, prompt_ids, first_tokens, hidden) -> None:
        if hidden is None:
            raise ValueError("EagleDrafter needs the target's hidden states (needs_target_hidden=True)")
        assert len(prompt_ids) == len(hidden) == first_tokens.shape[0]
        self._reset(len(prompt_ids))
        # pair feature f_t with token x_{t+1}: the prompt shifted by one, then the target's first token
        toks, valid = pad_right([list(ids[1:]) + [first] for ids, first in zip(prompt_ids, first_tokens.tolist())],
                                self.device)
        feats = torch.zeros(*toks.shape, hidden[0].shape[-1], dtype=self.dtype, device=self.device)
        for b, (ids, feat) in enumerate(zip(prompt_ids, hidden)):
            assert feat.shape[0] == len(ids), "one feature per prompt position"
            feats[b, : len(ids)] = feat
        self.queue = [(toks, feats, valid)]

    @torch.no_grad()
    def draft_logits(self, last_tokens: torch.Tensor | None) -> torch.Tensor:
        if last_tokens is None:
            pred = self._feed_queue()
        else:
            feats = self.last_pred[:, None, :]  # [B, 1, H]: drafted positions feed the head's own prediction
            toks = last_tokens.to(self.device)[:, None]
            pred = self._forward(feats, toks, torch.ones_like(toks, dtype=torch.bool))[:, -1]
            self.draft_slots += 1
        self.last_pred = pred
        return self._logits(pred)

    @torch.no_grad()
    def commit(self, new_tokens, num_new, hidden) -> None:
        if hidden is None:
            raise ValueError("EagleDrafter needs the target's hidden states in commit")
        if self.draft_slots:  # drafted slots carry predicted features: replace them with the target's real ones
            self.cache.keep_last(self.draft_slots, torch.zeros_like(self.cache.lengths))
            self.cache.trim()
        self.draft_slots = 0
        self.last_pred = None
        width = new_tokens.shape[1]
        valid = torch.arange(width, device=self.device)[None, :] < num_new.to(self.device)[:, None]
        self.queue.append((new_tokens.to(self.device), hidden[:, :width].to(self.device, self.dtype), valid))

    def select_rows(self, rows: torch.Tensor) -> None:
        rows = rows.to(self.device)
        self.cache.select_rows(rows)
        self.queue = [tuple(t[rows] for t in chunk) for chunk in self.queue]
        if self.last_pred is not None:
            self.last_pred = self.last_pred[rows]

    # ---- internals --------------------------------------------------------------------------------------
    def _feed_queue(self) -> torch.Tensor:  # [B, H] prediction at each row's last queued position
        if not self.queue:
            raise RuntimeError("draft_logits(None) with an empty queue: commit at least one token per row first")
        toks, feats, valid = (torch.cat(parts, dim=1) for parts in zip(*self.queue)) if len(self.queue) > 1 \
            else self.queue[0]
        if not bool(valid.any(dim=1).all()):
            raise RuntimeError("draft_logits(None): a row has no committed token to feed the head")
        out = self._forward(feats, toks, valid)
        last = valid.shape[1] - 1 - valid.flip(1).int().argmax(dim=1)  # each row's last valid slot
        self.queue = []
        return out[torch.arange(valid.shape[0], device=self.device), last]

    def _forward(self, feats: torch.Tensor, toks: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        inputs = self.cache.model_inputs(toks, valid)
        return self.head(
            feats,
            self.embed(toks).to(self.dtype),
            attention_mask=inputs["attention_mask"],
            position_ids=inputs["position_ids"],
            use_cache=True,
            **{CACHE_KWARG: inputs[CACHE_KWARG]},
        )

    def _logits(self, pred: torch.Tensor) -> torch.Tensor:  # [B, H] -> [B, draft_vocab or V] float32
        if self._int8_logits is not None:
            return self._int8_logits(pred).float()
        weight = self.lm_head.weight[: self.draft_vocab]  # a view: the first ids of the target's own head
        return nn.functional.linear(pred.to(weight.dtype), weight).float()
