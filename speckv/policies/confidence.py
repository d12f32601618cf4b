"""``confidence`` and ``entropy``: draft a chain and stop at the first token whose draft distribution looks unsure.

``confidence`` stops when the draft's top-1 probability falls under a threshold, as in DISCO and Hugging Face's
dynamic lookahead (``assistant_confidence_threshold``, default 0.4); ``entropy`` when the draft's entropy exceeds a
bound (AdaEDL's early-draft-stopping signal: its lower bound on acceptance, 1 − sqrt(c·H(q)), falls under λ exactly
when H(q) exceeds a threshold, which is the knob here, in nats). Either way the signal is known before the token is
drawn.
"""

from __future__ import annotations

import torch

from speckv.drafters.tree import TreeBuilder
from speckv.policies.base import Plan, StaticPolicy, StepContext, keep_top


class SignalStopPolicy(StaticPolicy):
    """A chain of up to γ_max tokens, cut before the first position whose signal says stop."""

    def __init__(self, name: str, threshold: float, gamma_max: int) -> None:
        self.name, self.threshold, self.gamma_max = name, threshold, gamma_max

    def unsure(self, tree: TreeBuilder) -> torch.Tensor:  # [B, n] bool per node
        n = tree.n
        return tree.top1[:, :n] < self.threshold if self.name == "confidence" else tree.entropy[:, :n] > self.threshold

    def plan(self, ctx: StepContext) -> Plan:
        gamma = min(self.gamma_max, ctx.gamma_max)
        return Plan(nodes=self.full(ctx, gamma), depth=gamma, lookup=False)

    def expand(self, ctx: StepContext, tree: TreeBuilder) -> int:
        tree.draft_values()
        start, end = tree.last
        return int((tree.real[:, start:end] & ~self.unsure(tree)[:, start:end]).any())

    def cut(self, ctx: StepContext, tree: TreeBuilder, plan: Plan) -> torch.Tensor:
        tree.draft_values()
        sure = torch.cumprod((~self.unsure(tree) & tree.real[:, : tree.n]).long(), dim=1).sum(dim=1)
        return keep_top(tree, torch.minimum(sure, plan.nodes))
