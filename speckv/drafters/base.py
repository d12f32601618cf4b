"""The drafter protocol: one small interface that every proposer implements, so one loop serves all.

A drafter keeps its own per-sequence state (a KV cache, queued tokens or target features) for a batch of
sequences. The engine drives it with four calls:

``prefill``      once per batch, after the target's prefill
``draft_logits`` once per drafted position; the first call of a step feeds whatever the drafter has not
                 seen yet (the tokens committed by the last verify step), later calls feed the token just
                 drafted. Returns logits for the next position.
``commit``       after each verify step: which tokens the target committed, with the target's features for
                 them. The drafter rolls back whatever it drafted past the accepted prefix.
``select_rows``  drop finished sequences from the batch.

Glossary (as in vLLM): a step drafts ``num_draft`` tokens; the target accepts a prefix of ``num_accepted``
of them and then adds one token of its own — the *recovered* token after a rejection, or the *bonus*
token when every draft was accepted. So a step commits ``num_accepted + 1`` tokens.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Drafter(Protocol):
    #: True when the drafter reads the target's last hidden states (EAGLE-style heads).
    needs_target_hidden: bool
    #: Vocabulary size the drafter proposes from (the target's, or its first ids only).
    vocab_size: int

    def prefill(
        self,
        prompt_ids: list[list[int]],  # B lists, the prompts (ragged)
        first_tokens: torch.Tensor,  # [B] the token the target produced from the prompt
        hidden: list[torch.Tensor] | None,  # B tensors [len_b, H]: target features at prompt positions
    ) -> None: ...

    def draft_logits(
        self,
        last_tokens: torch.Tensor | None,  # [B] token drafted by the previous call; None on a step's first call
    ) -> torch.Tensor:  # [B, V'] logits for the next draft position over token ids 0..V'-1, V' ≤ vocab_size
        """Ids from V' on have draft probability 0 (a head over the most frequent ids returns only those)."""
        ...

    def commit(
        self,
        new_tokens: torch.Tensor,  # [B, L] committed tokens, right-padded
        num_new: torch.Tensor,  # [B] how many of each row are real (num_accepted + 1)
        hidden: torch.Tensor | None,  # [B, L, H] target feature at the position *before* each new token
    ) -> None: ...

    def select_rows(self, rows: torch.Tensor) -> None:  # rows: [B'] indices to keep, in order
        ...
