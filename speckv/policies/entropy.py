"""``entropy``: stop drafting when the draft's entropy exceeds a bound (AdaEDL's early-draft-stopping signal).

AdaEDL bounds the acceptance probability from below by 1 − sqrt(c·H(q)); stopping when that bound falls under
λ is the same as stopping when the entropy H(q) exceeds a threshold, which is the knob exposed here (nats).
"""

from __future__ import annotations

import torch

from speckv.policies.base import StaticPolicy, StepContext


class EntropyPolicy(StaticPolicy):
    name = "entropy"

    def __init__(self, threshold: float, gamma_max: int) -> None:
        self.threshold, self.gamma_max = threshold, gamma_max

    def budget(self, ctx: StepContext) -> torch.Tensor:
        return torch.full((ctx.batch_size,), min(self.gamma_max, ctx.gamma_max), dtype=torch.long)

    def keep_drafting(self, ctx: StepContext, pos: int, top1: torch.Tensor, entropy: torch.Tensor) -> torch.Tensor:
        return entropy <= self.threshold
