"""``learned``: verify the candidates worth their time, by a learned acceptance model and the measured costs.

Read top-down:

* :mod:`.model` — how likely the target is to accept a candidate node given its parent (an MLP over the node's
  draft signals, its place in the tree, the row's history, the target's compression level);
* :mod:`.rule` — which candidates a step verifies: a node's value is the chance it lies on the accepted path (the
  product of acceptances along it), and columns of nodes join while the expected tokens per second still rise;
* :mod:`.gate` — whether the head drafts at all this step (in a batch, the widest row sets the step's time).

Why not regress the budget directly, as the SpecKV write-up does? Expected tokens per step only grow with the
budget; what matters is tokens per *second*, and the costs differ by machine, batch size and compression. So the
MLP learns the part that transfers (acceptance), and the rule does the arithmetic with what the engine measured.
Without weights (before ``speckv train-policy`` has produced any) a head node's acceptance is its draft
probability and a lookup node's its row's lookup history; the rule is the same.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from speckv.drafters.tree import TreeBuilder
from speckv.policies.base import Plan, StepContext, keep_top
from speckv.policies.learned.gate import Gate
from speckv.policies.learned.model import DEFAULT_PATH, AcceptanceModel, features
from speckv.policies.learned.rule import choose_width, margins, worth_expanding
from speckv.proposal import LOOKUP


class LearnedPolicy:
    name = "learned"
    needs_costs = True
    #: leave plain decoding only for an expected gain of at least MARGIN·√batch (the gate, and a step's first
    #: column; at batch 1 later columns need only raise the rate, in a batch each pays the margin too: see .rule):
    #: plain decoding is the safe side, and the wider the batch the more a drafted step's cost is an estimate.
    #: Measured, bf16: a flat 0.2 kept batch 4 plain (0.97× fixed γ=4); a flat 0.05 drafted at batch 16, losing
    #: 5–6 % to plain decoding
    MARGIN = 0.05

    def __init__(self, model: AcceptanceModel | None, gamma_max: int, depth: int, topk: int = 1) -> None:
        self.model, self.gamma_max, self.depth, self.topk = model, gamma_max, depth, topk
        self.gate = Gate()
        self.margin = self.later = self.MARGIN

    @classmethod
    def load(cls, path: str | Path | None, gamma_max: int, depth: int, topk: int = 1) -> LearnedPolicy:
        path = Path(path) if path else DEFAULT_PATH
        if not path.is_file():
            if path != DEFAULT_PATH:
                raise FileNotFoundError(f"learned policy weights not found: {path}")
            return cls(None, gamma_max, depth, topk)  # the documented fallback (module docstring)
        return cls(AcceptanceModel.load(path), gamma_max, depth, topk)

    def init_rows(self, n: int) -> dict[str, torch.Tensor]:
        return {}

    def plan(self, ctx: StepContext) -> Plan:
        n, cap = ctx.batch_size, min(self.gamma_max, ctx.gamma_max)
        assert ctx.costs is not None, "the learned policy decides on measured costs (needs_costs)"
        self.margin, self.later = margins(self.MARGIN, n)  # these hold for this step's later decisions too
        columns = self.gate.decide(ctx.costs, n, ctx.first_accept.cpu().numpy(), self.margin, min(self.depth, cap))
        nodes = torch.full((n,), 1 if columns == 1 else cap, dtype=torch.long)
        depth = {0: 0, 1: 1}.get(columns, self.depth)  # plain: no head forward, only free lookup candidates
        return Plan(nodes=nodes, depth=min(depth, cap), topk=self.topk if columns == -1 else 1)

    def expand(self, ctx: StepContext, tree: TreeBuilder) -> int:
        """How many of the newest nodes one more draft forward expands: the j-th best per row joins while its
        children's worth (``rule.worth_expanding``) pays for the forward's j-th node a row and the column it adds."""
        self._score(ctx, tree)
        costs, n = ctx.costs, ctx.batch_size
        step = costs.step(n)
        width, expected, took = self._width(ctx, tree, torch.full((n,), self.gamma_max))
        start, end = tree.last
        if end == start:
            return 0
        new = torch.where(tree.real[:, start:end], tree.value[:, start:end] * tree.accept[:, start:end], 0.0)
        gains = new.sort(dim=1, descending=True).values.sum(dim=0).tolist()  # [end - start] j-th best, over rows
        front = 0
        for j, gain in enumerate(gains[: self.topk]):
            if width + j + 1 >= len(step):
                break
            node_ms = costs.draft(n, j + 1) - (costs.draft(n, j) if j else 0.0)
            column_ms = step[width + j + 1] - step[width + j]
            if not worth_expanding(gain, expected, took, node_ms, column_ms,
                                   self.margin if width + j == 0 else self.later):
                break
            front, expected, took = front + 1, expected + gain, took + node_ms + column_ms
        return front

    def cut(self, ctx: StepContext, tree: TreeBuilder, plan: Plan) -> torch.Tensor:
        if tree.forwards == 0 and not self._could_pay(ctx, tree, plan.nodes):
            return torch.zeros(tree.batch, tree.n, dtype=torch.bool, device=tree.device)
        self._score(ctx, tree)
        width, _, _ = self._width(ctx, tree, plan.nodes)
        return keep_top(tree, torch.minimum(plan.nodes, torch.tensor(width)))

    def observe(self, ctx: StepContext, proposal, num_accepted: torch.Tensor) -> None:
        return None  # the gate keeps its own count; histories live with the rows

    # ---- internals ---------------------------------------------------------------------------------------
    def _width(self, ctx: StepContext, tree: TreeBuilder, caps: torch.Tensor) -> tuple[int, float, float]:
        """The rule's width over the nodes so far: (columns, expected tokens, step ms). numpy throughout: this runs
        after every draft depth."""
        n, costs = tree.n, ctx.costs
        value = np.where(tree.real[:, :n].cpu().numpy(), tree.value[:, :n].cpu().numpy(), 0.0)
        ranked = -np.sort(-value, axis=1)
        ranked[np.arange(n)[None, :] >= caps.numpy()[:, None]] = 0.0
        spent = np.array([sum(costs.draft(ctx.batch_size, w) for w in tree.widths)])
        width, expected, took = choose_width(ranked.sum(axis=0)[None], np.array([ctx.batch_size]),
                                             costs.step(ctx.batch_size), spent, self.margin, self.later)
        return int(width[0]), float(expected[0]), float(took[0])

    def _could_pay(self, ctx: StepContext, tree: TreeBuilder, caps: torch.Tensor) -> bool:
        """Whether any column of free (lookup) candidates could pay even if every one were surely accepted: a
        node's value is at most 1, so G_k is at most the rows with more than k nodes. Most plain steps of a batch
        where verify is dear end here, without scoring a node."""
        count = torch.minimum(tree.real[:, : tree.n].sum(dim=1).cpu(), caps)  # [B]
        bound = (count[:, None] > torch.arange(tree.n)[None, :]).sum(dim=0).double().numpy()[None]  # [1, n]
        width, _, _ = choose_width(bound, np.array([ctx.batch_size]), ctx.costs.step(ctx.batch_size), np.zeros(1),
                                   self.margin, self.later)
        return bool(width[0] > 0)

    def _score(self, ctx: StepContext, tree: TreeBuilder) -> None:
        """Acceptance and value of the columns not scored yet."""
        start, end = tree.scored, tree.n
        if end == start:
            return
        cols = slice(start, end)
        lookup = tree.source[:, cols] == LOOKUP
        if self.model is None:
            accept = torch.where(lookup, ctx.lookup_rate[:, None].to(lookup.device), tree.prob[:, cols])
        else:
            b, w = lookup.shape
            # one copy to numpy for all node signals and one for the row's: this runs after every draft depth
            node = torch.stack([t[:, cols].float() for t in (tree.prob, tree.top1, tree.entropy, tree.rank, tree.depth,
                                                              tree.pmin, tree.source, tree.match)], dim=-1)
            node = node.reshape(b * w, -1).cpu().numpy()
            row = torch.stack([ctx.accept_rate.float(), ctx.lookup_rate.float(), ctx.context_len.float()], dim=-1)
            row = np.repeat(row.cpu().numpy(), w, axis=0)
            x = features(*node.T, *row.T, self.model.level(ctx.compression))
            accept = torch.from_numpy(self.model.prob(x).reshape(b, w)).float().to(tree.device)
        tree.set_accept(start, end, accept)
