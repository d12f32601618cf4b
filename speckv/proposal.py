"""What a drafter proposes: per row, a tree of candidate tokens rooted at the row's pending token.

A chain is a tree of width one; a prompt-lookup continuation is a branch whose nodes carry no draft distribution (a
point mass). Node 0 of every row is the *root*, the row's pending token (committed, not yet in the target's cache);
column j of the node tensors describes node j+1. Nodes are in topological order (a parent before its children)
and siblings in the order verification tries them (:func:`speckv.verify.verify_tree`).

Glossary (vLLM's, extended to trees): a step verifies ``num_nodes`` drafted tokens; the target accepts a path of
``num_accepted`` of them from the root and then adds one token of its own — the *recovered* token after a
rejection, or the *bonus* token when the path ends at a node with no matching child. So a step commits
``num_accepted + 1`` tokens, whatever the tree's shape.

Node signals (what the policy reads and telemetry logs), all [B, N]:

``prob``     draft probability of the node's token under its parent's draft distribution. For a node *sampled* from
             that distribution (a chain in sampled mode) it is the distribution's top-1 instead: whether a sampled
             token is verified must not depend on which token was drawn, or verification would not be lossless.
``top1``, ``entropy``  of the parent's draft distribution (nats; temperature 1).
``rank``     order among the head's children of one parent (0 = its top choice, or the sampled one).
``source``   ``HEAD`` or ``LOOKUP``; ``match`` the lookup's suffix-match length (0 for head nodes).
``value``    the policy's estimate that the node is on the accepted path (its path's product of acceptances).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

HEAD, LOOKUP = 0, 1


@dataclass
class Plan:
    """A policy's budget for one step, before anything is drafted."""

    nodes: torch.Tensor  # [B] long: at most this many candidate nodes per row (0 = plain decoding)
    depth: int  # head draft depth this step (0: no head forward at all)
    topk: int = 1  # children per expanded node (1 = a chain)
    lookup: bool = True  # prompt-lookup candidates may join (they cost no forward)

    @property
    def drafts(self) -> bool:
        """A draft model runs this step: some depth, and some row that may take a node."""
        return self.depth > 0 and bool((self.nodes > 0).any())


@dataclass
class Proposal:
    tokens: torch.Tensor  # [B, N] long, node j+1's token (padding past num_nodes: 0)
    parents: torch.Tensor  # [B, N] long, node j+1's parent node, 0..j (0 = the root)
    depth: torch.Tensor  # [B, N] long, node j+1's depth (root's children: 1)
    num_nodes: torch.Tensor  # [B] long, real nodes per row (0 = plain decoding this step)
    prob: torch.Tensor  # [B, N] float
    top1: torch.Tensor  # [B, N] float
    entropy: torch.Tensor  # [B, N] float
    rank: torch.Tensor  # [B, N] long
    source: torch.Tensor  # [B, N] long
    match: torch.Tensor  # [B, N] long
    value: torch.Tensor  # [B, N] float
    q: torch.Tensor | None = None  # [B, N, V] distribution each node was drawn from (one-hot: point mass); None: greedy
    draft_widths: tuple[int, ...] = ()  # nodes per row fed by each batched draft forward this step

    @property
    def draft_forwards(self) -> int:
        return len(self.draft_widths)

    @property
    def width(self) -> int:
        return self.tokens.shape[1]

    @classmethod
    def empty(cls, batch: int, device: torch.device) -> Proposal:
        """No candidates for any row: a plain decoding step."""
        z = torch.zeros(batch, 0, dtype=torch.long, device=device)
        f = torch.zeros(batch, 0, device=device)
        return cls(z, z, z, torch.zeros(batch, dtype=torch.long, device=device), f, f, f, z, z, z, f)

    @classmethod
    def chain(cls, tokens: torch.Tensor) -> Proposal:
        """Every row proposes ``tokens`` [B, K] as a chain (node j+1's parent is node j)."""
        batch, k = tokens.shape
        dev = tokens.device
        steps = torch.arange(k, device=dev).expand(batch, -1)
        z, f = torch.zeros_like(tokens), torch.zeros(batch, k, device=dev)
        return cls(tokens, steps, steps + 1, torch.full((batch,), k, device=dev), f, f, f, z, z, z, f)

    def ancestors(self) -> torch.Tensor:  # [B, 1+N, 1+N] bool: node i sees node j (j is i, or an ancestor of i)
        batch, n = self.tokens.shape
        anc = torch.eye(n + 1, dtype=torch.bool, device=self.tokens.device).expand(batch, -1, -1).clone()
        rows = torch.arange(batch, device=self.tokens.device)
        for j in range(n):  # topological order: the parent's row is complete before its child's
            anc[:, j + 1] |= anc[rows, self.parents[:, j]]
        return anc

    def to(self, device: torch.device) -> Proposal:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in moved.items():
            if isinstance(value, torch.Tensor):
                moved[name] = value.to(device)
        return Proposal(**moved)

