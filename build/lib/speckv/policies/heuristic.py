"""``heuristic``: Hugging Face's assisted-generation schedule.

γ grows by 2 after a step whose drafts were all accepted and shrinks by 1 otherwise, never below 1
(``num_assistant_tokens_schedule="heuristic"`` in transformers), per sequence; chains.
"""

from __future__ import annotations

import torch

from speckv.policies.base import Plan, StaticPolicy, StepContext


class HeuristicPolicy(StaticPolicy):
    name = "heuristic"

    def __init__(self, gamma: int, gamma_max: int) -> None:
        self.gamma0, self.gamma_max = max(gamma, 1), gamma_max

    def init_rows(self, n: int) -> dict[str, torch.Tensor]:
        return {"gamma": torch.full((n,), self.gamma0, dtype=torch.long)}

    def plan(self, ctx: StepContext) -> Plan:
        gamma = ctx.state["gamma"].clamp(max=min(self.gamma_max, ctx.gamma_max))
        return Plan(nodes=gamma, depth=int(gamma.max()), lookup=False)

    def observe(self, ctx: StepContext, proposal, num_accepted: torch.Tensor) -> None:
        drafted = proposal.num_nodes.cpu()
        all_accepted = (num_accepted == drafted) & (drafted > 0)
        ctx.state["gamma"] = (ctx.state["gamma"] + torch.where(all_accepted, 2, -1)).clamp(1, self.gamma_max)
