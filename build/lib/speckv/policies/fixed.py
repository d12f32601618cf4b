"""``fixed``: verify the same budget every step — a chain of γ tokens (the classic setting), or a fixed tree
(``topk`` children per expanded node, ``depth`` levels, the ``nodes`` most probable kept, as EAGLE-2 and SGLang's
``--speculative-eagle-topk`` / ``--speculative-num-draft-tokens`` do)."""

from __future__ import annotations

from speckv.policies.base import Plan, StaticPolicy, StepContext


class FixedPolicy(StaticPolicy):
    name = "fixed"

    def __init__(self, nodes: int, depth: int | None = None, topk: int = 1) -> None:
        self.nodes, self.depth, self.topk = nodes, depth or nodes, topk

    def plan(self, ctx: StepContext) -> Plan:
        nodes = min(self.nodes, ctx.gamma_max)
        return Plan(nodes=self.full(ctx, nodes), depth=min(self.depth, nodes), topk=self.topk)
