"""A batched KV cache whose rows may hold different numbers of tokens, with holes.

Speculative decoding in a batch is ragged: each row proposes its own candidates and keeps its own accepted path.
Rather than shuffling key/value tensors after every step, rejected slots stay in the cache as *holes*: they are
masked out of attention for ever, and position ids are counted over valid slots only, so every row sees exactly
the sequence it would see alone. Trailing holes are cropped after each step, and the cache is compacted (valid
slots gathered, left-aligned to the right edge) when holes outgrow the valid tokens.

Two more things follow from holes. A tree of candidates is appended as it is, one slot per node, with a mask that
lets each node see the cache and its own ancestors only (:meth:`RaggedCache.model_inputs` with ``attend``); the
accepted path's slots stay and the rest become holes. And a row that joins a running batch (continuous batching)
is a padding problem: its cache is padded on the left with holes to the batch's width (:meth:`RaggedCache.extend`).
"""

from __future__ import annotations

import inspect

import torch
from transformers import DynamicCache
from transformers.models.llama.modeling_llama import LlamaModel

# transformers renamed `past_key_values` to `cache` (deprecated from 5.2x, removed in 5.40)
CACHE_KWARG = "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"


class RaggedCache:
    def __init__(self, batch_size: int, device: torch.device) -> None:
        self.kv = DynamicCache()
        self.valid = torch.zeros(batch_size, 0, dtype=torch.bool, device=device)  # [B, S] slot holds a token
        self.device = device

    @property
    def lengths(self) -> torch.Tensor:  # [B] tokens held per row (= next position id)
        return self.valid.sum(dim=1)

    @property
    def batch_size(self) -> int:
        return self.valid.shape[0]

    def model_inputs(
        self,
        input_ids: torch.Tensor,  # [B, L]
        input_valid: torch.Tensor,  # [B, L] bool: real tokens; padding slots become holes straight away
        attend: torch.Tensor | None = None,  # [B, L, S+L] bool: what each input token may see (None: causal)
        positions: torch.Tensor | None = None,  # [B, L] position ids (None: counted over valid slots)
        dtype: torch.dtype = torch.float32,  # the model's compute dtype, for an explicit mask
    ) -> dict:
        """Keyword arguments for an HF forward that appends ``input_ids`` to the cache.

        Without ``attend`` the input is a ragged causal sequence per row (HF builds the mask from the 2-D
        validity). With it, a tree: ``attend[b, i, j]`` lets input token i of row b see slot j (cache slots first,
        then the L new ones), and holes are masked on top; ``positions`` then give each node its depth.
        """
        assert input_ids.shape == input_valid.shape and input_ids.shape[0] == self.batch_size
        past = self.valid.shape[1]
        if positions is None:  # position of a new token = tokens already held + real tokens before it in this input
            positions = self.lengths[:, None] + torch.cumsum(input_valid.long(), dim=1) - 1
        self.valid = torch.cat([self.valid, input_valid], dim=1)
        if attend is None:
            mask = self.valid.long()
        else:
            assert attend.shape == (*input_ids.shape, past + input_ids.shape[1])
            allowed = attend & self.valid[:, None, :]
            # additive float mask [B, 1, L, S+L]; transformers passes a 4-D mask through as it is
            mask = torch.zeros(allowed.shape, dtype=dtype, device=self.device)
            mask.masked_fill_(~allowed, torch.finfo(dtype).min)
            mask = mask[:, None]
        return {
            "input_ids": input_ids,
            "attention_mask": mask,
            "position_ids": positions.clamp(min=0),
            "cache_position": torch.arange(past, past + input_ids.shape[1], device=self.device),
            CACHE_KWARG: self.kv,
            "use_cache": True,
        }

    def keep_last(self, keep: torch.Tensor) -> None:
        """``keep`` [B, W] bool over the last W slots: those marked stay, the rest become holes."""
        self.valid[:, -keep.shape[1] :] &= keep

    def trim(self) -> None:
        """Crop all-hole columns at either end; compact when holes outnumber tokens.

        The leading ones are what rows that left the batch held: the others joined after them, left-padded to the
        batch's width. Every forward attends over the whole width (a batch-8 step with 120 valid slots a row costs
        1.25× at 480 columns what it costs at 120: ``bench/cache_width.py``, bf16, AMD EPYC AVX512), so the slice is
        worth taking every step."""
        cols = self.valid.any(dim=0).nonzero()
        start, end = (int(cols[0]), int(cols[-1]) + 1) if len(cols) else (0, 0)
        if start > 0 or end < self.valid.shape[1]:
            self._index_slots(None, end, start)
        longest = int(self.lengths.max()) if self.valid.numel() else 0
        if self.valid.shape[1] > 2 * longest + 16:
            self.compact()

    def compact(self) -> None:
        """Gather each row's valid slots to the right edge (left padding), dropping the holes between them."""
        batch, slots = self.valid.shape
        width = int(self.lengths.max()) if batch else 0
        # stable order: holes first, then valid slots in their original order; keep the last `width`
        key = self.valid.long() * slots + torch.arange(slots, device=self.device)[None, :]
        order = torch.argsort(key, dim=1)[:, slots - width :]
        self._index_slots(order, width)

    def select_rows(self, rows: torch.Tensor) -> None:  # rows: [B'] indices to keep, in order
        self.valid = self.valid[rows]
        for layer in self._layers():
            layer.keys, layer.values = layer.keys[rows], layer.values[rows]

    def add_rows(self, n: int, front: bool = False) -> None:
        """Add ``n`` rows that hold nothing yet (all holes at the batch's width), after the others or before them."""
        def grow(t: torch.Tensor) -> torch.Tensor:
            empty = t.new_zeros(n, *t.shape[1:])
            return torch.cat([empty, t] if front else [t, empty])

        self.valid = grow(self.valid)
        for layer in self._layers():
            layer.keys, layer.values = grow(layer.keys), grow(layer.values)

    def extend(self, other: RaggedCache) -> None:
        """Append ``other``'s rows (a batch joining this one): the narrower side is padded on the left with holes."""
        if not other._holds_any():  # nothing was ever fed to the joining rows
            self.add_rows(other.batch_size)
            return
        if not self._holds_any():  # nor to these: the joining rows' cache, with these rows as holes in front
            n = self.batch_size
            self.kv, self.valid = other.kv, other.valid
            self.add_rows(n, front=True)
            return
        width = max(self.valid.shape[1], other.valid.shape[1])
        mine, theirs = list(self._layers()), list(other._layers())
        assert len(mine) == len(theirs), "both caches must have run the same model"
        for a, b in zip(mine, theirs):
            a.keys = torch.cat([_left_pad(a.keys, width, 2), _left_pad(b.keys, width, 2)], dim=0)
            a.values = torch.cat([_left_pad(a.values, width, 2), _left_pad(b.values, width, 2)], dim=0)
        self.valid = torch.cat([_left_pad(self.valid, width, 1), _left_pad(other.valid, width, 1)], dim=0)

    def _layers(self):
        return (layer for layer in self.kv.layers if layer.is_initialized)

    def _holds_any(self) -> bool:
        return any(True for _ in self._layers())

    def _index_slots(self, order: torch.Tensor | None, width: int, start: int = 0) -> None:
        if order is None:  # crop to slots [start, width)
            self.valid = self.valid[:, start:width]
        else:
            self.valid = self.valid.gather(1, order)
        for layer in self._layers():
            if order is None:
                layer.keys, layer.values = layer.keys[:, :, start:width], layer.values[:, :, start:width]
            else:
                b, h, _, d = layer.keys.shape
                idx = order[:, None, :, None].expand(b, h, width, d)
                layer.keys, layer.values = layer.keys.gather(2, idx), layer.values.gather(2, idx)


def _left_pad(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """Zeros (or False) prepended along ``dim`` up to ``width``: holes at the front of a row's slots."""
    missing = width - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)
