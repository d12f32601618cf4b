"""``fixed``: draft exactly γ tokens every step (the classic speculative decoding setting)."""

from __future__ import annotations

import torch

from speckv.policies.base import StaticPolicy, StepContext


class FixedPolicy(StaticPolicy):
    name = "fixed"

    def __init__(self, gamma: int) -> None:
        self.gamma = gamma

    def budget(self, ctx: StepContext) -> torch.Tensor:
        return torch.full((ctx.batch_size,), min(self.gamma, ctx.gamma_max), dtype=torch.long)
