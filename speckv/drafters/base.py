"""The drafter protocol: one small interface every proposer implements, so one engine loop serves all.

A drafter keeps its own per-row state (a KV cache, queued tokens and target features, an n-gram index) for the
running batch, whose rows join and leave every step. The engine drives it with five calls:

``admit``   rows join the batch (after the target's prefill: their prompts, first tokens and the target's features)
``prepare`` before ``grow``: where the plan drafts, catch up on what was queued before the last step (a head that
            queues admitted prompts feeds them here); timed apart from the draft forwards, like the admission it
            stands for
``grow``    add this step's candidates to the rows' trees (:class:`~speckv.drafters.tree.TreeBuilder`), within the
            policy's plan; a drafter that drafts depth by depth asks ``expand(tree)`` whether one more forward is
            worth it, and over how many of the newest nodes (the policy answers; at most the plan's ``topk``)
``commit``  after verification: the tokens each row committed, with the target's features for them; the drafter
            rolls back whatever it drafted past them
``drop``    rows leave the batch (finished, aborted)

(Transformers' ``CandidateGenerator`` has two methods; the three more here are what continuous batching needs.)

Glossary (vLLM's): a step verifies a tree of candidates; the target accepts a path of ``num_accepted`` of them and
then adds one token of its own — the *recovered* token after a rejection, or the *bonus* token when the path ends
with no matching child. So a step commits ``num_accepted + 1`` tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch

from speckv.drafters.tree import TreeBuilder
from speckv.proposal import Plan

Expand = Callable[[TreeBuilder], int]  # the policy, asked after each depth: how many new nodes to expand (0: stop)
Draws = Callable[[torch.Tensor], torch.Tensor]  # [B] bool rows that sample a token -> [B] their uniforms


@runtime_checkable
class Drafter(Protocol):
    kind: str
    #: True when the drafter reads the target's last hidden states (EAGLE-style heads)
    needs_target_hidden: bool

    def admit(
        self,
        prompt_ids: list[list[int]],  # B' prompts (ragged) joining at the end of the batch
        first_tokens: torch.Tensor,  # [B'] the token the target produced from each prompt
        hidden: list[torch.Tensor] | None,  # B' tensors [len, H]: target features at the prompt positions
    ) -> None: ...

    def prepare(self, plan: Plan) -> None: ...

    def grow(self, tree: TreeBuilder, plan: Plan, expand: Expand, draws: Draws) -> None: ...

    def commit(
        self,
        new_tokens: torch.Tensor,  # [B, L] committed tokens, right-padded
        num_new: torch.Tensor,  # [B] how many of each row are real (num_accepted + 1)
        hidden: torch.Tensor | None,  # [B, L, H] target feature at the position *before* each new token
    ) -> None: ...

    def drop(self, keep: torch.Tensor) -> None:  # keep: [B'] indices of the rows that stay, in order
        ...

    def describe(self) -> list:
        """What the drafter's costs depend on (the cost cache's key)."""
        ...

    def forward_timer(self, batch: int, context: int) -> Callable[[], None] | None:
        """One draft forward (one token per row) on a synthetic batch, for calibration; None: drafting is free."""
        ...


class Drafters:
    """Several drafters as one: each grows the same trees in turn (the head first, then lookup branches)."""

    def __init__(self, parts: list[Drafter]) -> None:
        self.parts = parts
        self.kind = "+".join(p.kind for p in parts)
        self.needs_target_hidden = any(p.needs_target_hidden for p in parts)

    def admit(self, prompt_ids, first_tokens, hidden) -> None:
        for p in self.parts:
            p.admit(prompt_ids, first_tokens, hidden if p.needs_target_hidden else None)

    def prepare(self, plan: Plan) -> None:
        for p in self.parts:
            p.prepare(plan)

    def grow(self, tree: TreeBuilder, plan: Plan, expand: Expand, draws: Draws) -> None:
        for p in self.parts:
            p.grow(tree, plan, expand, draws)

    def commit(self, new_tokens, num_new, hidden) -> None:
        for p in self.parts:
            p.commit(new_tokens, num_new, hidden if p.needs_target_hidden else None)

    def drop(self, keep: torch.Tensor) -> None:
        for p in self.parts:
            p.drop(keep)

    def describe(self) -> list:
        return [p.describe() for p in self.parts]

    def forward_timer(self, batch: int, context: int):
        timers = [t for p in self.parts if (t := p.forward_timer(batch, context)) is not None]
        return timers[0] if timers else None

    @property
    def int8_rows(self) -> int:
        return max(getattr(p, "int8_rows", 0) for p in self.parts)
