"""``heuristic``: Hugging Face's assisted-generation schedule.

γ grows by 2 after a step whose drafts were all accepted and shrinks by 1 otherwise, never below 1
(``num_assistant_tokens_schedule="heuristic"`` in transformers), per sequence.
"""

from __future__ import annotations

import torch

from speckv.policies.base import StaticPolicy, StepContext


class HeuristicPolicy(StaticPolicy):
    name = "heuristic"

    def __init__(self, gamma: int, gamma_max: int) -> None:
        self.gamma0, self.gamma_max = max(gamma, 1), gamma_max

    def init_state(self, ctx: StepContext) -> None:
        ctx.state["gamma"] = torch.full((ctx.batch_size,), self.gamma0, dtype=torch.long)

    def budget(self, ctx: StepContext) -> torch.Tensor:
        return ctx.state["gamma"].clamp(max=min(self.gamma_max, ctx.gamma_max))

    def observe(self, ctx: StepContext, num_draft: torch.Tensor, num_accepted: torch.Tensor) -> None:
        all_accepted = (num_accepted == num_draft) & (num_draft > 0)
        gamma = ctx.state["gamma"] + torch.where(all_accepted, 2, -1)
        ctx.state["gamma"] = gamma.clamp(1, self.gamma_max)
