"""The budget-policy protocol: per sequence, per step, how much speculation to verify.

A step's budget is a tree (a chain is a tree of width one). The policy answers, batched over the live rows:

``plan``     before drafting: at most how many candidate nodes may row b verify (0 = plain decoding), how deep the
             head may draft and how wide it branches (``topk`` children per expanded node; 1 = a chain), and
             whether free prompt-lookup candidates may join;
``expand``   after each depth the head has drafted: value the new nodes, and say over how many of the best of them
             one more draft forward is worth it (0: none; the drafter takes at most the plan's ``topk``);
``cut``      once every drafter is done: which nodes each row verifies (ancestor-closed);

and then ``observe``s the verdict. It sees only what is known at decision time: the draft's signals of the nodes
drafted so far, the acceptance history of earlier steps, the target's compression level and the measured costs —
never the target's verdict on this step. For a chain drawn by sampling, a node is kept or dropped on what was known
before its token was drawn (its distribution's top-1 and entropy, the nodes before it), which keeps speculative
sampling lossless (see :mod:`speckv.drafters.tree`).

Per-row state lives in ``ctx.state`` (tensors with the batch first, made by ``init_rows``): rows join and leave
the running batch, and the engine concatenates and selects these rows without knowing what a policy keeps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch

from speckv.costs import Costs
from speckv.drafters.tree import TreeBuilder
from speckv.proposal import Plan, Proposal


@dataclass
class StepContext:
    batch_size: int  # live sequences in this step
    context_len: torch.Tensor  # [B] tokens in each sequence (prompt + generated)
    num_generated: torch.Tensor  # [B] tokens generated so far
    max_new_tokens: torch.Tensor  # [B] each request's limit
    accept_rate: torch.Tensor  # [B] head's top choices accepted ÷ judged, discounted (speckv.engine.History)
    lookup_rate: torch.Tensor  # [B] lookup nodes accepted ÷ judged, discounted
    first_accept: torch.Tensor  # [B] running share of drafting steps whose first top choice was accepted
    compression: str  # target compression level: fp32 | bf16 | fp16 | int8 | nf4
    costs: Costs | None  # measured draft/verify costs, when the policy asked for them
    gamma_max: int  # the most candidate nodes a row may verify in one step
    greedy: bool  # every row decodes greedily
    state: dict[str, torch.Tensor] = field(default_factory=dict)  # the policy's per-row state, [B, ...] each


@runtime_checkable
class Policy(Protocol):
    name: str
    #: True when the policy needs measured costs (the engine then calibrates them once, cached on disk)
    needs_costs: bool

    def init_rows(self, n: int) -> dict[str, torch.Tensor]: ...

    def plan(self, ctx: StepContext) -> Plan: ...

    def expand(self, ctx: StepContext, tree: TreeBuilder) -> int:
        """Value the columns the head just added (``tree.value``); how many of the best of them to expand in one
        more draft forward (0: stop drafting)."""
        ...

    def cut(self, ctx: StepContext, tree: TreeBuilder, plan: Plan) -> torch.Tensor:  # [B, tree.n] bool kept
        ...

    def observe(self, ctx: StepContext, proposal: Proposal, num_accepted: torch.Tensor) -> None: ...


def keep_top(tree: TreeBuilder, count: torch.Tensor) -> torch.Tensor:  # [B, n] bool
    """Each row's ``count[b]`` most valuable nodes. A node's value never exceeds its parent's (a product of
    probabilities), and ties go to the earlier column, so the kept set always holds its nodes' ancestors."""
    n = tree.n
    score = torch.where(tree.real[:, :n], tree.value[:, :n], -1.0)
    order = torch.argsort(-score, dim=1, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(n, device=order.device).expand_as(order))
    return (rank < count.to(rank.device)[:, None]) & tree.real[:, :n]


class StaticPolicy:
    """Shared parts of the policies that do not learn: no state, no costs, nodes valued by draft probability,
    the plan's node budget kept."""

    name = "static"
    needs_costs = False

    def init_rows(self, n: int) -> dict[str, torch.Tensor]:
        return {}

    def expand(self, ctx: StepContext, tree: TreeBuilder) -> int:
        tree.draft_values()
        start, end = tree.last
        return end - start  # all it may: the drafter stops at the plan's depth and width

    def cut(self, ctx: StepContext, tree: TreeBuilder, plan: Plan) -> torch.Tensor:
        tree.draft_values()
        return keep_top(tree, plan.nodes)

    def observe(self, ctx: StepContext, proposal: Proposal, num_accepted: torch.Tensor) -> None:
        return None

    @staticmethod
    def full(ctx: StepContext, value: int) -> torch.Tensor:
        return torch.full((ctx.batch_size,), value, dtype=torch.long)
