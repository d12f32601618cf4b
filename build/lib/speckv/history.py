"""Each row's acceptance history, the signals a policy reads about earlier steps.

``accept_rate``  the head's *top choices* accepted ÷ judged, as two sums discounted by ``DECAY`` per step that judged
                 any, from ``PRIOR`` (accepted, judged). A node is judged when the target ruled on it — its parent
                 is on the accepted path — so for a chain: every drafted position up to and including the first
                 rejection. The rate estimates P(accept | parent accepted) whatever the budget was: accepted ÷
                 drafted would not (the same draft logged 0.15 under γ=8 and 0.34 under γ=3, bf16), and counting
                 only top choices keeps it the same whatever the tree's width.
``lookup_rate``  the same for prompt-lookup nodes.
``first_accept`` a running share (EMA) of the steps that judged a first top choice in which it was accepted: what
                 one more drafted column is worth to the batch gate.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from speckv.proposal import HEAD, LOOKUP, Proposal

DECAY, PRIOR, FIRST_EMA, FIRST_PRIOR = 0.8, (1.0, 2.0), 0.2, 0.5


@dataclass
class History:
    sums: torch.Tensor  # [B, 2, 2]: (head top choices, lookup) × (accepted, judged), discounted
    first: torch.Tensor  # [B]

    @classmethod
    def new(cls, n: int) -> History:
        return cls(torch.tensor(PRIOR).repeat(n, 2, 1), torch.full((n,), FIRST_PRIOR))

    @property
    def accept_rate(self) -> torch.Tensor:  # [B]
        return self.sums[:, 0, 0] / self.sums[:, 0, 1]

    @property
    def lookup_rate(self) -> torch.Tensor:  # [B]
        return self.sums[:, 1, 0] / self.sums[:, 1, 1]

    def select(self, rows: torch.Tensor) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name)[rows])

    def extend(self, other: History) -> None:
        for f in fields(self):
            setattr(self, f.name, torch.cat([getattr(self, f.name), getattr(other, f.name)]))

    def update(self, proposal: Proposal, on_path: torch.Tensor) -> None:
        """``on_path`` [B, 1+N] bool: the root and the accepted path's nodes."""
        p = proposal.to(torch.device("cpu"))
        on_path = on_path.cpu()
        real = torch.arange(p.width)[None, :] < p.num_nodes[:, None]
        judged = real & on_path.gather(1, p.parents)
        accepted = judged & on_path[:, 1:]
        top = judged & (p.source == HEAD) & (p.rank == 0)
        kinds = (top, judged & (p.source == LOOKUP))
        step = torch.stack([torch.stack([(m & accepted).sum(1), m.sum(1)], dim=1) for m in kinds], dim=1).float()
        ruled = step[:, :, 1:] > 0  # [B, 2, 1]: a source whose nodes were judged this step
        self.sums = torch.where(ruled, DECAY * self.sums + step, self.sums)
        first = top & (p.depth == 1)
        had = first.any(dim=1)
        hit = (first & accepted).any(dim=1).float()
        self.first = torch.where(had, (1 - FIRST_EMA) * self.first + FIRST_EMA * hit, self.first)
