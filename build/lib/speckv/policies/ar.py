"""``ar``: no speculation — plain autoregressive decoding through the same engine (the baseline)."""

from __future__ import annotations

from speckv.policies.base import Plan, StaticPolicy, StepContext


class ArPolicy(StaticPolicy):
    name = "ar"

    def plan(self, ctx: StepContext) -> Plan:
        return Plan(nodes=self.full(ctx, 0), depth=0, lookup=False)
