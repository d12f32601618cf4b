"""The γ-policy protocol: per sequence, per step, decide how many tokens to draft.

A policy answers two questions, batched over the live sequences of a step:

``budget``         before drafting: at most how many tokens may row b draft this step (0 = plain decoding)?
``keep_drafting``  once the draft's distribution for position ``pos`` is known (its top-1 probability and entropy),
                   should row b propose that token, or stop here? A policy may also answer a pair
                   ``(propose, more)``: propose this token, and whether it is worth drafting past it at all
                   (``more=False`` saves the draft forward that would only show the next position's signals).

and then ``observe``s the outcome (drafted and accepted counts). It sees only what is known at decision time:
the draft's signals up to the current position, the acceptance history of earlier steps, the position in the
draft, the target's compression level, and the measured costs — never the target's verdict on this step.

Per-sequence state lives in ``ctx.state`` (tensors with the batch as first dimension), so the engine can drop
finished rows without knowing what a policy keeps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch

from speckv.costs import CostModel


@dataclass
class StepContext:
    batch_size: int  # live sequences in this step
    context_len: torch.Tensor  # [B] tokens in each sequence (prompt + generated)
    num_generated: torch.Tensor  # [B] tokens generated so far
    max_new_tokens: torch.Tensor  # [B] each request's limit
    last_num_draft: torch.Tensor  # [B] γ used in the previous step (0 before the first)
    last_num_accepted: torch.Tensor  # [B] accepted in the previous step
    # [B, 2] discounted sums (accepted, judged) of draft positions over earlier steps: see speckv.engine.ACCEPT_DECAY
    accept_sums: torch.Tensor
    compression: str  # target compression level: fp32 | bf16 | fp16 | int8 | nf4
    costs: CostModel | None  # measured draft/verify costs, when the policy asked for them
    gamma_max: int  # hard bound on γ for this engine
    # per-position draft signals of the current step, filled as drafting proceeds: [B, pos]
    top1_history: list[torch.Tensor] = field(default_factory=list)
    entropy_history: list[torch.Tensor] = field(default_factory=list)
    state: dict[str, torch.Tensor] = field(default_factory=dict)
    # the previous batched step as measured: draft forwards run, draft ms, verify ms, tokens per row verified, and
    # wall_ms, the whole step including bookkeeping
    last_step: dict[str, float] = field(default_factory=dict)

    @property
    def accept_rate(self) -> torch.Tensor:  # [B] the row's acceptance history: accepted ÷ judged, discounted
        return self.accept_sums[:, 0] / self.accept_sums[:, 1]


@runtime_checkable
class GammaPolicy(Protocol):
    name: str
    #: True when the policy needs measured costs (the engine then calibrates them once, cached on disk)
    needs_costs: bool

    def init_state(self, ctx: StepContext) -> None: ...

    def budget(self, ctx: StepContext) -> torch.Tensor:  # [B] int64 in [0, gamma_max]
        ...

    def keep_drafting(
        self, ctx: StepContext, pos: int, top1: torch.Tensor, entropy: torch.Tensor
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """[B] bool: propose the token at draft position ``pos`` (0-based) whose draft top-1 prob/entropy are given;
        or ([B] propose, [B] more) as described above."""
        ...

    def observe(self, ctx: StepContext, num_draft: torch.Tensor, num_accepted: torch.Tensor) -> None: ...


class StaticPolicy:
    """Shared no-op parts: no state, no costs, propose every budgeted token."""

    name = "static"
    needs_costs = False

    def init_state(self, ctx: StepContext) -> None:
        return None

    def keep_drafting(self, ctx: StepContext, pos: int, top1: torch.Tensor, entropy: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(top1, dtype=torch.bool)

    def observe(self, ctx: StepContext, num_draft: torch.Tensor, num_accepted: torch.Tensor) -> None:
        return None
