"""The one place candidate trees are built: drafters add nodes, the policy scores and cuts, the engine verifies.

Columns are shared by the batch: every call that adds nodes appends the same columns to every row, and ``real``
says which of them a row actually holds (a row that stopped drafting, or a lookup token that merged into an
existing node, leaves its column empty). :meth:`TreeBuilder.finish` packs each row's kept nodes into a
:class:`~speckv.proposal.Proposal`, breadth first, so parents come before children and siblings keep the order
they were added in (the head's ranking first, then lookup).

How children are chosen (EAGLE-2's expansion): the head's ``topk`` most probable tokens under each expanded node,
or, when a request samples and the tree is a chain (``topk`` = 1), one token drawn from the request's processed
draft distribution — the classic speculative-sampling proposal, verified against that distribution. Every other
node is a *point mass* (chosen deterministically), which multi-candidate verification treats exactly (see
:func:`speckv.verify.verify_tree`), so any rule may pick, rank and cut them.
"""

from __future__ import annotations

import math

import torch

from speckv.proposal import HEAD, LOOKUP, Proposal
from speckv.verify import sample, to_probs

#: a static policy's stand-in for a lookup node's acceptance (its score is this to the power of its depth)
LOOKUP_PRIOR = 0.6


class TreeBuilder:
    def __init__(
        self,
        batch: int,
        depth_cap: torch.Tensor,  # [B] deepest node a row may hold (tokens left, context left)
        device: torch.device,
        sampling: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,  # temperature, top_k, top_p [B]
        vocab: int = 0,  # the target's vocabulary (sampled mode: q is over it)
    ) -> None:
        self.batch, self.device, self.n, self.capacity = batch, device, 0, 0
        self.depth_cap = depth_cap.to(device)
        self.sampling, self.vocab = sampling, vocab
        self.widths: list[int] = []  # nodes per row fed by each draft forward so far
        self.scored = 0  # columns the policy has valued so far (it scores new columns as they come)
        self.last = (0, 0)  # column range added by the latest call
        self._rows = torch.arange(batch, device=device)
        self._anc = torch.ones(batch, 1, 1, dtype=torch.bool, device=device)  # [B, 1+cap, 1+cap] ancestor-or-self
        self.tokens = self.parents = self.depth = self.rank = self.source = self.match = None
        self.prob = self.top1 = self.entropy = self.pmin = self.logq = self.value = self.accept = self.real = None
        self.q = None
        self._reserve(16)

    _LONG = ("tokens", "parents", "depth", "rank", "source", "match")
    _FLOAT = ("prob", "top1", "entropy", "pmin", "logq", "value", "accept")

    def _reserve(self, extra: int) -> None:
        """Room for ``extra`` more columns (storage doubles as trees grow)."""
        if self.n + extra <= self.capacity:
            return
        cap = max(2 * self.capacity, self.n + extra)
        grow = cap - self.capacity
        for name, dtype in [(k, torch.long) for k in self._LONG] + [(k, torch.float32) for k in self._FLOAT] + \
                [("real", torch.bool)]:
            old = getattr(self, name)
            pad = torch.zeros(self.batch, grow, dtype=dtype, device=self.device)
            setattr(self, name, pad if old is None else torch.cat([old, pad], dim=1))
        if self.q is not None:
            self.q = torch.cat([self.q, torch.zeros(self.batch, grow, self.vocab, device=self.device)], dim=1)
        anc = torch.eye(cap + 1, dtype=torch.bool, device=self.device).repeat(self.batch, 1, 1)
        anc[:, : self.capacity + 1, : self.capacity + 1] = self._anc
        self._anc, self.capacity = anc, cap

    # ---- adding nodes ------------------------------------------------------------------------------------
    def add_children(
        self,
        parents: torch.Tensor,  # [B, F] node ids to expand (-1: none for this row)
        logits: torch.Tensor,  # [B, F, V'] draft logits at those nodes, V' ≤ the target's vocabulary
        topk: int,
        draws=None,  # [B] bool rows drawing a token -> [B] their uniforms (a sampled chain; see drafters.base.Draws)
    ) -> tuple[int, int]:
        """The children of each expanded node: ``topk`` per node (column block [start, end) of F·topk columns)."""
        batch, f, vocab = logits.shape
        self._reserve(f * topk)
        probs = torch.softmax(logits.float(), dim=-1)  # raw draft distribution (temperature 1): the signals
        top1, entropy = probs.max(dim=-1).values, -torch.xlogy(probs, probs).sum(dim=-1)  # 0·log 0 = 0
        has = parents >= 0
        parent_depth = torch.where(has, self._node(self.depth, parents), 0)
        ok = has & (parent_depth < self.depth_cap[:, None])
        if self.sampling is not None and topk == 1:  # sampled chain: x ~ q, the request's processed draft distribution
            q = torch.zeros(batch, f, self.vocab, device=self.device)
            temperature, top_k, top_p = self.sampling
            q[..., :vocab] = to_probs(logits, temperature, top_k, top_p)
            uniforms = draws(ok.any(dim=1))  # one draw per row that samples (a chain expands one node per row)
            tokens = sample(q.reshape(batch * f, -1), uniforms.repeat_interleave(f)).reshape(batch, f, 1)
            chosen = top1[..., None]  # what the policy may read of a sampled token: its distribution's top-1
        else:
            chosen, tokens = probs.topk(topk, dim=-1)  # [B, F, k] EAGLE-2: the most probable children
            q = None
        start, end = self.n, self.n + f * topk
        cols = slice(start, end)
        self.tokens[:, cols] = tokens.reshape(batch, -1)
        self.parents[:, cols] = parents.clamp(min=0).repeat_interleave(topk, dim=1)
        self.depth[:, cols] = (parent_depth + 1).repeat_interleave(topk, dim=1)
        self.rank[:, cols] = torch.arange(topk, device=self.device).repeat(f)
        self.prob[:, cols] = chosen.reshape(batch, -1)
        self.top1[:, cols] = top1.repeat_interleave(topk, dim=1)
        self.entropy[:, cols] = entropy.repeat_interleave(topk, dim=1)
        self.pmin[:, cols] = torch.where(parents > 0, torch.minimum(self._node(self.pmin, parents),
                                                                    self._node(self.prob, parents)), 1.0
                                         ).repeat_interleave(topk, dim=1)
        parent_logq = torch.where(has, self._node(self.logq, parents), 0.0)
        self.logq[:, cols] = (parent_logq[..., None] + chosen.clamp(min=1e-30).log()).reshape(batch, -1)
        self.real[:, cols] = ok.repeat_interleave(topk, dim=1)
        if q is not None:  # only sampled nodes keep a distribution; every other node is a point mass
            if self.q is None:
                self.q = torch.zeros(batch, self.capacity, self.vocab, device=self.device)
            self.q[:, cols] = q
        # a node sees itself and whatever its parent sees (the parents are all in earlier blocks)
        self._anc[:, start + 1 : end + 1] |= self._anc[self._rows[:, None], self.parents[:, cols]]
        self.n, self.last = end, (start, end)
        return start, end

    def add_chain(self, tokens: torch.Tensor, length: torch.Tensor, match: torch.Tensor) -> None:
        """A lookup continuation per row (``tokens`` [B, M], ``length`` [B] real ones, ``match`` [B] suffix-match
        length), hung from the root: where its tokens follow nodes already in the tree it merges into them and only
        the rest becomes new point-mass nodes (siblings stay distinct)."""
        self._reserve(tokens.shape[1])
        if self.n == 0:  # nothing to merge into (the head did not draft): the same nodes, in one go
            self._add_fresh_chain(tokens, length, match)
        else:
            self._merge_chain(tokens, length, match)

    def _merge_chain(self, tokens: torch.Tensor, length: torch.Tensor, match: torch.Tensor) -> None:
        batch, m = tokens.shape
        start = self.n
        node = torch.zeros(batch, dtype=torch.long, device=self.device)  # where the continuation has got to
        fresh = torch.zeros(batch, dtype=torch.bool, device=self.device)  # it left the existing tree
        for i in range(m):
            col = start + i
            tok = tokens[:, i].to(self.device)
            live = (i < length.to(self.device)) & (i < self.depth_cap)
            # an existing child of `node` with this token (a zero column first, so that the argmax has a column)
            children = self.real[:, :col] & (self.parents[:, :col] == node[:, None]) & (self.tokens[:, :col] == tok[:, None])
            children = torch.cat([torch.zeros(batch, 1, dtype=torch.bool, device=self.device), children], dim=1)
            existing = children.any(dim=1) & ~fresh
            new = live & ~existing
            self.tokens[:, col], self.parents[:, col] = tok, node
            self.depth[:, col] = i + 1
            self.source[:, col], self.match[:, col] = LOOKUP, match.to(self.device)
            self.prob[:, col] = 1.0  # no distribution: neither a signal nor a lower bound for what hangs below
            at = node[:, None]
            self.pmin[:, col] = torch.where(node > 0, torch.minimum(self._node(self.pmin, at), self._node(self.prob, at))
                                            [:, 0], 1.0)
            self.logq[:, col] = (i + 1) * math.log(LOOKUP_PRIOR)
            self.real[:, col] = new
            self.n = col + 1
            self._anc[:, col + 1] |= self._anc[self._rows, node]
            node = torch.where(live & existing, children.float().argmax(dim=1), torch.where(new, col + 1, node))
            fresh |= new
        self.last = (start, self.n)

    def _add_fresh_chain(self, tokens: torch.Tensor, length: torch.Tensor, match: torch.Tensor) -> None:
        """:meth:`add_chain` into an empty tree: column i holds token i, its parent the column before it (the root
        for the first); columns past a row's length or depth cap hang, unreal, from its last real node."""
        m = tokens.shape[1]
        i = torch.arange(m, device=self.device)
        real = (i[None, :] < length.to(self.device)[:, None]) & (i[None, :] < self.depth_cap[:, None])  # a prefix
        last = real.sum(dim=1, keepdim=True)  # [B, 1] real nodes: the ids 1..last
        parent = torch.minimum(i[None, :], last)  # node id i is column i-1; past the real ones, the last real node
        self.tokens[:, :m], self.parents[:, :m] = tokens.to(self.device), parent
        self.depth[:, :m] = i + 1
        self.source[:, :m], self.match[:, :m] = LOOKUP, match.to(self.device)[:, None]
        self.prob[:, :m], self.pmin[:, :m] = 1.0, 1.0  # lookup ancestors only: no draft probability below 1
        self.logq[:, :m] = (i + 1).double() * math.log(LOOKUP_PRIOR)
        self.real[:, :m] = real
        # ancestor-or-self: the root, and the chain's nodes up to each one's parent, and itself
        upto = (i[None, :] < parent[:, :, None]) | torch.eye(m, dtype=torch.bool, device=self.device)  # [B, m, m]
        self._anc[:, 1 : m + 1, 0] = True
        self._anc[:, 1 : m + 1, 1 : m + 1] = upto
        self.n, self.last = m, (0, m)

    def count_forward(self, nodes: int = 1) -> None:
        """A drafter ran one forward of ``nodes`` nodes a row."""
        self.widths.append(nodes)

    @property
    def forwards(self) -> int:
        return len(self.widths)

    # ---- reading -----------------------------------------------------------------------------------------
    def frontier(self, k: int) -> torch.Tensor:  # [B, k] node ids of the latest nodes worth expanding (-1: none)
        start, end = self.last
        score = torch.where(self.real[:, start:end], self.value[:, start:end], -1.0)
        k = min(k, end - start)
        best, idx = score.topk(k, dim=1)
        return torch.where(best >= 0, idx + start + 1, -1)

    def set_accept(self, start: int, end: int, accept: torch.Tensor) -> None:
        """The policy's acceptance estimates for columns [start, end) ([B, end-start]); a node's value is its
        parent's value times its own acceptance (the root's value is 1)."""
        self.accept[:, start:end] = accept
        value = torch.cat([torch.ones(self.batch, 1, device=self.device), self.value[:, :end]], dim=1)  # by node id
        if bool((self.parents[:, start:end] > start).any()):  # a chain inside the block: parent by parent
            for col in range(start, end):
                value[:, col + 1] = value.gather(1, self.parents[:, col : col + 1])[:, 0] * accept[:, col - start]
        else:
            value[:, start + 1 : end + 1] = value.gather(1, self.parents[:, start:end]) * accept
        self.value[:, start:end] = value[:, start + 1 : end + 1]
        self.scored = max(self.scored, end)

    def draft_values(self) -> None:
        """Value the columns no one has scored yet by their cumulative draft probability (EAGLE-2's score)."""
        self.value[:, self.scored : self.n] = self.logq[:, self.scored : self.n].exp()
        self.scored = self.n

    def ancestors(self, nodes: torch.Tensor) -> torch.Tensor:  # [B, F] node ids -> [B, F, 1+n] ancestor-or-self
        return self._anc[self._rows[:, None], nodes.clamp(min=0), : self.n + 1]

    # ---- the result --------------------------------------------------------------------------------------
    def finish(self, keep: torch.Tensor) -> Proposal:
        """Pack the kept nodes (``keep`` [B, n] bool, ancestor-closed) breadth first into a Proposal."""
        n = self.n
        keep = keep[:, :n] & self.real[:, :n]
        num = keep.sum(dim=1)
        width = int(num.max()) if n else 0
        order_key = torch.where(keep, self.depth[:, :n] * (n + 1) + torch.arange(n, device=self.device), 1 << 40)
        cols = order_key.argsort(dim=1)[:, :width]  # [B, M] kept columns, breadth first, padding after
        new_id = torch.zeros(self.batch, n + 1, dtype=torch.long, device=self.device)
        new_id.scatter_(1, cols + 1, torch.arange(1, width + 1, device=self.device).expand(self.batch, -1))
        real = torch.arange(width, device=self.device)[None, :] < num[:, None]

        def pick(t: torch.Tensor) -> torch.Tensor:
            return torch.where(real, t[:, :n].gather(1, cols), torch.zeros((), dtype=t.dtype, device=self.device))

        q = None
        if self.sampling is not None:  # point masses, but for the nodes drawn from a distribution
            q = torch.nn.functional.one_hot(pick(self.tokens), self.vocab).float()
            if self.q is not None:
                drawn = self.q[:, :n].gather(1, cols[..., None].expand(-1, -1, self.vocab))
                q = torch.where(drawn.sum(dim=-1, keepdim=True) > 0, drawn, q)
        return Proposal(
            tokens=pick(self.tokens), parents=torch.where(real, new_id.gather(1, pick(self.parents)), 0),
            depth=pick(self.depth), num_nodes=num, prob=pick(self.prob), top1=pick(self.top1),
            entropy=pick(self.entropy), rank=pick(self.rank), source=pick(self.source), match=pick(self.match),
            value=pick(self.value), q=q, draft_widths=tuple(self.widths))

    # ---- internals ---------------------------------------------------------------------------------------
    def _node(self, t: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
        """``t`` at node ids [B, F] (node j+1 is column j; callers mask the root / -1 themselves)."""
        return t.gather(1, (nodes - 1).clamp(min=0))



__all__ = ["TreeBuilder", "HEAD", "LOOKUP", "LOOKUP_PRIOR"]
