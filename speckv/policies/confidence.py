"""``confidence``: stop drafting when the draft's top-1 probability falls under a threshold.

The token whose draft distribution is too flat is not proposed (its probability is known before it is
sampled), as in DISCO and Hugging Face's dynamic lookahead (``assistant_confidence_threshold``, default 0.4).
"""

from __future__ import annotations

import torch

from speckv.policies.base import StaticPolicy, StepContext


class ConfidencePolicy(StaticPolicy):
    name = "confidence"

    def __init__(self, threshold: float, gamma_max: int) -> None:
        self.threshold, self.gamma_max = threshold, gamma_max

    def budget(self, ctx: StepContext) -> torch.Tensor:
        return torch.full((ctx.batch_size,), min(self.gamma_max, ctx.gamma_max), dtype=torch.long)

    def keep_drafting(self, ctx: StepContext, pos: int, top1: torch.Tensor, entropy: torch.Tensor) -> torch.Tensor:
        return top1 >= self.threshold
