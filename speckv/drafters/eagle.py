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
from speckv.drafters.tree import TreeBuilder
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
    """Implements :class:`speckv.drafters.base.Drafter` with an :class:`EagleHead` and a :class:`RaggedCache`.

    The head reads the target's real features of every committed position. Admission feeds a row's prompt at once,
    in a cache of the joining rows alone that then joins the head's batch cache, as the target's own prefill does (fed
    later with the batch's backlog, a prompt was padded to the widest row's backlog and its padding widened the head's
    cache: at batch 8 on the job's prompts 2.9 padded slots per real one, in a cache 1,011 slots wide on average).
    A commit queues its new tokens, and nothing more is fed until a step drafts. Then :meth:`prepare` feeds the
    backlog (the commits of plain steps), all but each row's root pair, and :meth:`grow` feeds the rest in its first
    forward, which yields the predicted feature at each row's root — the shape calibration times, so that a draft
    forward's measured cost does not carry the backlog. A batch that decodes plainly (at batch 8 on a CPU where a
    second verified token costs 1.7× the first, its gate drafted in 4 of 1,704 steps of the batch job) then never
    feeds the outputs of rows that finish before it drafts again; a queue past ``QUEUE_MAX`` slots is fed by the
    commit that took it there. The tree then grows depth by depth (EAGLE-2): each
    forward feeds the frontier — the best new nodes — with their parents' predicted features, every node attending
    to the committed prefix and its own ancestors only; the head's drafted slots are dropped at commit."""

    needs_target_hidden = True
    kind = "eagle"

    def __init__(self, head: EagleHead, target_model: nn.Module, device: torch.device,
                 draft_vocab: int | None = None, metadata: dict | None = None, int8_rows: int = 0) -> None:
        self.head = head.to(device).eval().requires_grad_(False)
        self.embed = target_model.get_input_embeddings()
        self.lm_head = target_model.get_output_embeddings()
        full = int(self.lm_head.weight.shape[0])
        self.draft_vocab = draft_vocab if draft_vocab and draft_vocab < full else None
        self.vocab_size = self.draft_vocab or full
        self.device = device
        self.metadata = metadata or {}
        self.dtype = next(self.head.parameters()).dtype
        # on CPU the head's layer and its LM-head slice can read int8 weights in forwards of up to int8_rows rows
        # (see speckv.drafters.int8); the target's own LM head stays as it is, the head reads a quantized copy of its
        # first rows
        usable = int8.available(device) and self.lm_head.weight.dtype.is_floating_point
        self.int8_rows = int8_rows if usable else 0
        self._int8_logits: int8.Int8Linear | None = None
        if self.int8_rows:
            self.head = copy.deepcopy(self.head)  # quantized in place: never alter the caller's module
            int8.quantize_linears(self.head, self.int8_rows)
            self._int8_logits = int8.Int8Linear(self.lm_head.weight[: self.draft_vocab], None, self.dtype,
                                                self.int8_rows)
        self.cache = RaggedCache(0, device)
        # committed positions not yet fed, as whole-batch chunks (tokens [B, w], features [B, w, H], valid [B, w]):
        # feature f_t with the token x_{t+1} after it; the last one of each row is its root's
        self.queue: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._behind = False  # the queue holds more than the last step's commit (prepare has a backlog to feed)
        self._drafted: list[torch.Tensor] = []  # node ids [B, K] of the slots drafted this step, in slot order

    # ---- loading / saving -------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, target_model: nn.Module, device: torch.device,
             int8_weights: bool | None = None) -> EagleDrafter:
        """``int8_weights``: True, int8 in every draft forward; False, never; None: in forwards of as many rows as it
        is faster for on this machine (measured once, cached)."""
        path = Path(path)
        meta = json.loads((path / META_FILE).read_text())
        head = EagleHead(meta["head_config"])
        head.load_state_dict(load_file(path / WEIGHTS_FILE), strict=True)
        # the head computes in the target's dtype: its features and embeddings arrive in that dtype
        dtype = target_model.get_output_embeddings().weight.dtype
        if not dtype.is_floating_point or dtype.itemsize < 2:  # quantized LM head: keep bf16
            dtype = torch.bfloat16
        head.to(dtype)

        def build(int8_rows: int) -> EagleDrafter:
            return cls(head, target_model, device, draft_vocab=meta.get("draft_vocab"), metadata=meta,
                       int8_rows=int8_rows)

        if int8_weights is None:
            rows = choose_int8_rows(build, meta, dtype) if int8.available(device) else 0
        else:
            rows = int8.ALL_ROWS if int8_weights else 0
        return build(rows)

    @staticmethod
    def save(head: EagleHead, path: str | Path, metadata: dict, dtype: torch.dtype = torch.bfloat16) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to(dtype).contiguous() for k, v in head.state_dict().items()}
        save_file(state, path / WEIGHTS_FILE)
        (path / META_FILE).write_text(json.dumps({"head_config": head.config, **metadata}, indent=2) + "\n")

    # ---- the Drafter protocol ---------------------------------------------------------------------------
    @torch.no_grad()
    def admit(self, prompt_ids, first_tokens, hidden) -> None:
        if hidden is None:
            raise ValueError("EagleDrafter needs the target's hidden states (needs_target_hidden=True)")
        assert len(prompt_ids) == len(hidden) == first_tokens.shape[0]
        # pair feature f_t with token x_{t+1}: the prompt shifted by one, then the target's first token
        toks, valid = pad_right([list(ids[1:]) + [first] for ids, first in zip(prompt_ids, first_tokens.tolist())],
                                self.device)
        feats = torch.zeros(*toks.shape, hidden[0].shape[-1], dtype=self.dtype, device=self.device)
        for b, (ids, feat) in enumerate(zip(prompt_ids, hidden)):
            assert feat.shape[0] == len(ids), "one feature per prompt position"
            feats[b, : len(ids)] = feat
        # the prompts are fed now, in a cache of the joining rows alone (as the target prefills them), all but each
        # row's root pair, which waits in the queue for the next step that drafts
        joining = RaggedCache(len(prompt_ids), self.device)
        root = self._feed_but_roots(joining, toks, feats, valid)
        joining.trim()
        old = self.cache.batch_size
        if old == 0:  # a fresh batch: not the width the last one left behind
            self.cache = RaggedCache(0, self.device)
        self.cache.extend(joining)
        queued = self._merged_queue() if self.queue else tuple(t.new_zeros((old, 0, *t.shape[2:])) for t in root)
        width = max(queued[0].shape[1], 1)
        self.queue = [tuple(torch.cat([_pad_slots(a, width), _pad_slots(b, width)]) for a, b in zip(queued, root))]

    @torch.no_grad()
    def prepare(self, plan) -> None:
        """Before a step that drafts: feed the backlog, all but each row's root pair (which :meth:`grow` feeds)."""
        if self._behind and plan.drafts:
            self._catch_up()

    @torch.no_grad()
    def grow(self, tree: TreeBuilder, plan, expand, draws) -> None:
        if not plan.drafts:
            return
        self.prepare(plan)  # a no-op when the engine has called it
        pred = self._feed_queue()  # [B, H] the predicted feature at each row's root
        tree.count_forward()
        root_position = self.cache.lengths - 1
        self._start = self.cache.valid.shape[1]
        parents = torch.where(plan.nodes.to(self.device) > 0, 0, -1)[:, None]  # [B, F] nodes to expand
        parent_pred = pred[:, None]  # [B, F, H] their predicted features
        for depth in range(plan.depth):
            tree.add_children(parents, self._logits(parent_pred), plan.topk, draws)
            wanted = 0 if depth + 1 == plan.depth else expand(tree)  # how many new nodes the policy would expand
            if not wanted:
                break
            front = tree.frontier(min(wanted, plan.topk))  # [B, K] the best new nodes
            if not bool((front >= 0).any()):
                break
            # each frontier node's input: its parent's predicted feature and its own token's embedding
            of_parent = (parents[:, :, None] == tree.parents.gather(1, (front - 1).clamp(min=0))[:, None, :])
            feats = parent_pred.gather(1, of_parent.int().argmax(dim=1)[..., None].expand(-1, -1, pred.shape[-1]))
            parent_pred = self._forward_nodes(tree, front, feats, root_position)
            tree.count_forward(front.shape[1])
            parents = front

    @torch.no_grad()
    def commit(self, new_tokens, num_new, hidden) -> None:
        if hidden is None:
            raise ValueError("EagleDrafter needs the target's hidden states in commit")
        if self._drafted:  # drafted slots carry predicted features: the target's real ones replace them
            width = self.cache.valid.shape[1] - self._start
            self.cache.keep_last(torch.zeros(self.cache.batch_size, width, dtype=torch.bool, device=self.device))
            self.cache.trim()
            self._drafted = []
        width = new_tokens.shape[1]
        valid = torch.arange(width, device=self.device)[None, :] < num_new.to(self.device)[:, None]
        self._behind = self._behind or bool(self.queue)  # a step went by without feeding the head
        self.queue.append((new_tokens.to(self.device), hidden[:, :width].to(self.device, self.dtype), valid))
        if sum(chunk[0].shape[1] for chunk in self.queue) > QUEUE_MAX:
            self._catch_up()

    def drop(self, keep: torch.Tensor) -> None:
        keep = keep.to(self.device)
        self.cache.select_rows(keep)
        if self.queue:
            self.queue = [tuple(t[keep] for t in self._merged_queue())]

    def describe(self) -> list:
        return [self.kind, sum(p.numel() for p in self.head.parameters()), self.vocab_size, self.int8_rows]

    @property
    def int8_weights(self) -> bool:
        return self.int8_rows > 0

    def forward_timer(self, batch: int, context: int):
        """One drafted token per row over a ``context``-slot cache of its own (the live batch is not touched)."""
        hidden = self.lm_head.weight.shape[1]
        gen = torch.Generator().manual_seed(0)
        cache = RaggedCache(batch, self.device)
        toks = torch.randint(100, self.vocab_size, (batch, context + 1), generator=gen).to(self.device)
        feats = torch.randn(batch, context + 1, hidden, generator=gen).to(self.device, self.dtype)
        ones = torch.ones(batch, context, dtype=torch.bool, device=self.device)
        self._forward(cache, feats[:, :-1], toks[:, :-1], ones)
        drop = torch.zeros(batch, 1, dtype=torch.bool, device=self.device)

        @torch.no_grad()
        def run() -> None:
            self._logits(self._forward(cache, feats[:, -1:], toks[:, -1:], ones[:, :1]))
            cache.keep_last(drop)
            cache.trim()

        return run

    # ---- internals --------------------------------------------------------------------------------------
    def _feed_queue(self) -> torch.Tensor:  # [B, H] prediction at each row's last queued position
        toks, feats, valid = self._merged_queue()
        if not bool(valid.any(dim=1).all()):
            raise RuntimeError("a row has no committed token to feed the head: commit at least one token per row")
        out = self._forward(self.cache, feats, toks, valid)
        self.queue, self._behind = [], False
        return out[torch.arange(valid.shape[0], device=self.device), _last_slot(valid)]

    def _merged_queue(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The queue as one chunk, so that an admission or a drop re-indexes three tensors, not three a queued step."""
        if len(self.queue) > 1:
            self.queue = [tuple(torch.cat(parts, dim=1) for parts in zip(*self.queue))]
        return self.queue[0]

    def _catch_up(self) -> None:
        """Feed the queue but each row's root pair, which the next drafting step feeds with every row's alike."""
        self.queue, self._behind = [self._feed_but_roots(self.cache, *self._merged_queue())], False

    def _feed_but_roots(self, cache: RaggedCache, toks, feats, valid) -> tuple[torch.Tensor, ...]:
        """Feed ``cache`` every pair of ``toks`` [B, W] / ``feats`` [B, W, H] / ``valid`` [B, W] but each row's last
        (its root's); returns those last pairs ([B, 1], [B, 1, H], [B, 1]; a row with none: an invalid slot)."""
        rows, last = torch.arange(valid.shape[0], device=self.device), _last_slot(valid)
        before = valid.clone()
        before[rows, last] = False
        if bool(before.any()):
            self._forward(cache, feats, toks, before)
        return toks[rows, last][:, None], feats[rows, last][:, None], valid[rows, last][:, None]

    def _forward_nodes(self, tree: TreeBuilder, front: torch.Tensor, feats: torch.Tensor,
                       root_position: torch.Tensor) -> torch.Tensor:  # [B, K, H]
        """Feed frontier nodes ``front`` [B, K] (-1: none): each sees the committed slots, the drafted slots of its
        ancestors and itself, at the position its depth gives."""
        batch, k = front.shape
        slots = self.cache.valid.shape[1]
        attend = torch.ones(batch, k, slots + k, dtype=torch.bool, device=self.device)
        if self._drafted:
            drafted = torch.cat(self._drafted, dim=1)  # [B, D] node id of each drafted slot (-1: a hole)
            anc = tree.ancestors(front)  # [B, K, 1+n]
            seen = anc.gather(2, drafted.clamp(min=0)[:, None, :].expand(-1, k, -1)) & (drafted >= 0)[:, None, :]
            attend[:, :, self._start :slots] = seen
        attend[:, :, slots:] = torch.eye(k, dtype=torch.bool, device=self.device)
        toks = tree.tokens.gather(1, (front - 1).clamp(min=0))
        positions = root_position[:, None] + tree.depth.gather(1, (front - 1).clamp(min=0))
        out = self._forward(self.cache, feats, toks, front >= 0, attend, positions)
        self._drafted.append(front)
        return out

    def _forward(self, cache: RaggedCache, feats, toks, valid, attend=None, positions=None) -> torch.Tensor:
        inputs = cache.model_inputs(toks, valid, attend, positions, dtype=self.dtype)
        return self.head(
            feats, self.embed(toks.clamp(min=0)).to(self.dtype), attention_mask=inputs["attention_mask"],
            position_ids=inputs["position_ids"], cache_position=inputs["cache_position"], use_cache=True,
            **{CACHE_KWARG: inputs[CACHE_KWARG]},
        )

    def _logits(self, pred: torch.Tensor) -> torch.Tensor:  # [..., H] -> [..., draft_vocab or V] float32
        if self._int8_logits is not None:
            return self._int8_logits(pred).float()
        weight = self.lm_head.weight[: self.draft_vocab]  # a view: the first ids of the target's own head
        return nn.functional.linear(pred.to(weight.dtype), weight).float()


def _last_slot(valid: torch.Tensor) -> torch.Tensor:  # [B, W] bool -> [B] each row's last valid slot (W-1: none)
    return valid.shape[1] - 1 - valid.flip(1).int().argmax(dim=1)


def _pad_slots(t: torch.Tensor, width: int) -> torch.Tensor:  # [B, w, ...] -> [B, width, ...], zeros (invalid) after
    return torch.cat([t, t.new_zeros((t.shape[0], width - t.shape[1], *t.shape[2:]))], dim=1)


#: the queue's width (slots) past which a commit feeds it to the head without waiting for a drafting step: a bound
#: on its memory (B × QUEUE_MAX features), above the prompts and outputs of the batch job
QUEUE_MAX = 512
#: the row counts :func:`choose_int8_rows` times
ROW_GRID = (1, 2, 4, 8, 16, 32, 64)


def choose_int8_rows(build, meta: dict, dtype: torch.dtype) -> int:
    """Up to how many rows a draft forward is faster with int8 weights here (0: never): one drafted token per row,
    timed at 1, 2, 4, … 64 rows with int8 and float weights; the answer is the largest count of an unbroken run
    from 1 where int8 wins. Torch's int8 weight-only kernel wins at few rows on some CPUs, not on others, and loses
    at many (module doc of :mod:`speckv.drafters.int8`); once per machine, cached."""
    from speckv.costs import median_ms
    from speckv.hardware import cached_choice

    def measure() -> tuple[str, dict]:
        figures = {}
        for name, rows in (("int8", int8.ALL_ROWS), ("float", 0)):
            drafter = build(rows)
            figures[name] = {b: median_ms(drafter.forward_timer(b, 128), 9, lambda: None) for b in ROW_GRID}
        best = 0
        for b in ROW_GRID:
            if figures["int8"][b] >= figures["float"][b]:
                break
            best = b
        return str(best), figures

    key = {"head": meta.get("head_config"), "draft_vocab": meta.get("draft_vocab"), "dtype": str(dtype)}
    return int(cached_choice("draft-int8-rows", key, measure)[0])
