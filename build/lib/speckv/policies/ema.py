"""``ema``: step γ up or down from an exponential moving average of the accepted length (SGLang's adaptive mode).

γ goes up by one when the EMA of accepted tokens per step reaches 80 % of γ (drafts are mostly kept) and down by
one when it falls under 40 % (most drafted tokens are wasted), per sequence, within [1, gamma_max]; chains.
"""

from __future__ import annotations

import torch

from speckv.policies.base import Plan, StaticPolicy, StepContext

UP, DOWN = 0.8, 0.4


class EmaPolicy(StaticPolicy):
    name = "ema"

    def __init__(self, gamma: int, gamma_max: int, alpha: float) -> None:
        self.gamma0, self.gamma_max, self.alpha = max(gamma, 1), gamma_max, alpha

    def init_rows(self, n: int) -> dict[str, torch.Tensor]:
        return {"gamma": torch.full((n,), self.gamma0, dtype=torch.long), "ema": torch.full((n,), self.gamma0 * 0.6)}

    def plan(self, ctx: StepContext) -> Plan:
        gamma = ctx.state["gamma"].clamp(max=min(self.gamma_max, ctx.gamma_max))
        return Plan(nodes=gamma, depth=int(gamma.max()), lookup=False)

    def observe(self, ctx: StepContext, proposal, num_accepted: torch.Tensor) -> None:
        drafted = proposal.num_nodes.cpu() > 0
        state = ctx.state
        ema = torch.where(drafted, self.alpha * num_accepted + (1 - self.alpha) * state["ema"], state["ema"])
        gamma = state["gamma"]
        step = torch.where(ema >= UP * gamma, 1, torch.where(ema < DOWN * gamma, -1, 0))
        state["ema"] = ema
        state["gamma"] = (gamma + torch.where(drafted, step, 0)).clamp(1, self.gamma_max)
