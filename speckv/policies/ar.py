"""``ar``: no speculation — plain autoregressive decoding through the same engine (the baseline)."""

from __future__ import annotations

import torch

from speckv.policies.base import StaticPolicy, StepContext


class ArPolicy(StaticPolicy):
    name = "ar"

    def budget(self, ctx: StepContext) -> torch.Tensor:
        return torch.zeros(ctx.batch_size, dtype=torch.long)
