"""A batched KV cache whose rows may hold different numbers of tokens, with holes.

Speculative decoding in a batch is ragged: each row drafts its own γ and keeps its own accepted prefix. Rather
than shuffling key/value tensors after every step, rejected slots stay in the cache as *holes*: they are masked
out of attention for ever, and position ids are counted over valid slots only, so every row sees exactly the
sequence it would see alone. Trailing holes are cropped after each step, and the cache is compacted (valid slots
gathered, left-aligned to the right edge) when holes outgrow the valid tokens.
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

    def model_inputs(self, input_ids: torch.Tensor, input_valid: torch.Tensor) -> dict:
        """Keyword arguments for an HF forward that appends ``input_ids`` ([B, L]) to the cache.

        ``input_valid`` ([B, L] bool) marks real tokens; padding slots become holes straight away.
        """
        assert input_ids.shape == input_valid.shape and input_ids.shape[0] == self.valid.shape[0]
        past = self.valid.shape[1]
        # position of a new token = tokens already held + real tokens before it in this input
        positions = self.lengths[:, None] + torch.cumsum(input_valid.long(), dim=1) - 1
        self.valid = torch.cat([self.valid, input_valid], dim=1)
        return {
            "input_ids": input_ids,
            "attention_mask": self.valid.long(),
            "position_ids": positions.clamp(min=0),
            "cache_position": torch.arange(past, past + input_ids.shape[1], device=self.device),
            CACHE_KWARG: self.kv,
            "use_cache": True,
        }

    def keep_last(self, width: int, num_kept: torch.Tensor) -> None:
        """Of the last ``width`` slots, keep the first ``num_kept[b]`` of row b; the rest become holes."""
        keep = torch.arange(width, device=self.device)[None, :] < num_kept[:, None]
        self.valid[:, -width:] &= keep

    def trim(self) -> None:
        """Crop trailing all-hole columns; compact when holes outnumber tokens."""
        cols = self.valid.any(dim=0).nonzero()
        end = int(cols[-1]) + 1 if len(cols) else 0
        if end < self.valid.shape[1]:
            self._index_slots(None, end)
        longest = int(self.lengths.max()) if self.valid.numel() else 0
        if self.valid.shape[1] > 2 * longest + 16:
            self.compact()

    def compact(self) -> None:
        """Gather each row's valid slots to the right edge (left padding), dropping the holes between them."""
        batch, slots = self.valid.shape
        width = int(self.lengths.max())
        # stable order: holes first, then valid slots in their original order; keep the last `width`
        key = self.valid.long() * slots + torch.arange(slots, device=self.device)[None, :]
        order = torch.argsort(key, dim=1)[:, slots - width :]
        self._index_slots(order, width)

    def select_rows(self, rows: torch.Tensor) -> None:
        self.valid = self.valid[rows]
        for layer in self.kv.layers:
            if layer.is_initialized:
                layer.keys = layer.keys[rows]
                layer.values = layer.values[rows]

    def _index_slots(self, order: torch.Tensor | None, width: int) -> None:
        if order is None:  # crop to the first `width` slots
            self.valid = self.valid[:, :width]
        else:
            self.valid = self.valid.gather(1, order)
        for layer in self.kv.layers:
            if not layer.is_initialized:
                continue
            if order is None:
                layer.keys = layer.keys[:, :, :width]
                layer.values = layer.values[:, :, :width]
            else:
                b, h, _, d = layer.keys.shape
                idx = order[:, None, :, None].expand(b, h, width, d)
                layer.keys = layer.keys.gather(2, idx)
                layer.values = layer.values.gather(2, idx)
