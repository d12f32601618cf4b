"""Int8 weight-only linear layers for the drafter on CPU.

A draft forward at batch 1 reads its weights once per token and does little else with them, so on CPU its time
is the bytes it reads: the EAGLE head's decoder layer and its 16k-row slice of the LM head are 26 MB in bf16.
Stored as int8 with one scale per output row they are half that, and torch's int8 weight-only kernel
(``torch._weight_int8pack_mm``, the one torchao's int8 weight-only mode uses on CPU) multiplies with them
directly. Only the draft changes: verification against the target is untouched, so the output is too.

That kernel is a matrix-*vector* kernel at heart: measured here (AMD EPYC, AVX512 with native bf16, 2 threads) it
is 2–10× faster than bf16 at 1 row, about even at 8 (0.7–1.3×), and 2.6–3.9× *slower* from 64 rows on, where the
float kernel's blocking pays. The head's big forwards (a prompt joining, the backlog fed after plain steps) have
hundreds of rows, its drafting forwards a few. So a layer keeps its float weight beside the int8 copy (shared, not
copied) and multiplies with int8 only up to ``max_rows`` rows: the crossover, measured per machine
(:func:`speckv.drafters.eagle.choose_int8_rows`).
"""

from __future__ import annotations

import torch
from torch import nn


def available(device: torch.device) -> bool:
    return device.type == "cpu" and hasattr(torch, "_weight_int8pack_mm")


#: no row limit: int8 for every forward
ALL_ROWS = 1 << 62


class Int8Linear(nn.Module):
    """``y = x @ (q * scale[:, None]).T + bias`` with ``q`` int8 [N, K]; symmetric per-row scales. Inputs of more
    than ``max_rows`` rows multiply with the float ``weight`` instead (kept by reference)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype,
                 max_rows: int = ALL_ROWS) -> None:
        super().__init__()
        self.max_rows = max_rows
        self.dense = weight.detach() if max_rows < ALL_ROWS else None  # a plain attribute: no second state-dict entry
        w = weight.detach().float()
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        self.register_buffer("qweight", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8).contiguous())
        self.register_buffer("scale", scale.to(dtype))  # the kernel takes scales in the activations' dtype
        self.register_buffer("bias", None if bias is None else bias.detach().to(dtype))
        self.out_features = self.qweight.shape[0]

    @classmethod
    def of(cls, linear: nn.Linear, max_rows: int = ALL_ROWS) -> Int8Linear:
        return cls(linear.weight, linear.bias, linear.weight.dtype, max_rows)

    def dequantized(self) -> torch.Tensor:  # [N, K] the weight this layer multiplies by
        return self.qweight.to(self.scale.dtype) * self.scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if rows > self.max_rows:
            return nn.functional.linear(x.to(self.dense.dtype), self.dense, self.bias)
        y = torch._weight_int8pack_mm(x.reshape(-1, x.shape[-1]).to(self.scale.dtype), self.qweight, self.scale)
        y = y.reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias


def quantize_linears(module: nn.Module, max_rows: int = ALL_ROWS) -> None:
    """Replace every ``nn.Linear`` inside ``module`` by an :class:`Int8Linear`, in place."""
    targets = [(parent, name, child) for parent in module.modules() for name, child in parent.named_children()
               if isinstance(child, nn.Linear)]
    for parent, name, child in targets:
        setattr(parent, name, Int8Linear.of(child, max_rows))
