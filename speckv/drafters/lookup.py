"""Prompt lookup: free candidates from the row's own prompt and output (Hugging Face's ``prompt_lookup_num_tokens``,
vLLM's n-gram proposer, llama.cpp's lookup decoding).

Input-grounded work — summarise this, extract these fields, answer from this passage, edit this code — copies long
spans of its input. When the row's last n tokens occurred before, the tokens that followed them then are a good
guess for what follows now, and proposing them costs no forward at all: only verify width, which the policy weighs.

Each row keeps a hashed n-gram index, ``(n, last n tokens) -> where they ended``, for n in [min_n, max_n], over its
prompt and output. Appending a token inserts the max_n − min_n + 1 n-grams that end just before it, O(max_n) per
token (O(max_n²) counting the tuple hashing); a query tries the longest suffix first and stops at the first hit,
O(max_n) lookups, and proposes up to ``tokens`` tokens that followed its most recent occurrence. The current suffix
is never found as its own continuation (an n-gram is indexed only once a token follows it).

A lookup proposal is a chain of point masses (no draft distribution): verification treats it exactly as such, so
sampled output stays the target's (:func:`speckv.verify.verify_tree`).
"""

from __future__ import annotations

import torch


class NgramIndex:
    def __init__(self, min_n: int, max_n: int) -> None:
        self.min_n, self.max_n = min_n, max_n
        self.tokens: list[int] = []
        self.ends: dict[tuple[int, ...], int] = {}  # n-gram -> index of the token that followed its latest occurrence

    def extend(self, tokens: list[int]) -> None:
        for tok in tokens:
            i = len(self.tokens)  # the new token's index: every n-gram ending just before it is now followed
            for n in range(self.min_n, min(self.max_n, i) + 1):
                self.ends[tuple(self.tokens[i - n : i])] = i
            self.tokens.append(tok)

    def propose(self, count: int) -> tuple[list[int], int]:
        """(up to ``count`` tokens, the suffix length that matched); ([], 0) when nothing matches."""
        t = self.tokens
        for n in range(min(self.max_n, len(t)), self.min_n - 1, -1):
            start = self.ends.get(tuple(t[len(t) - n :]))
            if start is not None:
                return t[start : start + count], n
        return [], 0


class LookupDrafter:
    needs_target_hidden = False
    kind = "lookup"

    def __init__(self, min_n: int = 2, max_n: int = 4, tokens: int = 8) -> None:
        self.min_n, self.max_n, self.count = min_n, max_n, tokens
        self.rows: list[NgramIndex] = []

    def admit(self, prompt_ids, first_tokens, hidden=None) -> None:
        for ids, first in zip(prompt_ids, first_tokens.tolist()):
            index = NgramIndex(self.min_n, self.max_n)
            index.extend(list(ids) + [int(first)])
            self.rows.append(index)

    def prepare(self, plan) -> None:
        return None  # nothing queued to catch up on

    def grow(self, tree, plan, expand, draws) -> None:
        if not plan.lookup:
            return
        found = [row.propose(self.count) if cap > 0 else ([], 0) for row, cap in zip(self.rows, plan.nodes.tolist())]
        if not any(tokens for tokens, _ in found):
            return  # a row with no match costs nothing, a batch with none not even a column
        width = max(len(tokens) for tokens, _ in found)
        tokens = torch.zeros(len(found), width, dtype=torch.long)
        for b, (toks, _) in enumerate(found):
            tokens[b, : len(toks)] = torch.tensor(toks, dtype=torch.long)
        tree.add_chain(tokens, torch.tensor([len(t) for t, _ in found]), torch.tensor([n for _, n in found]))

    def commit(self, new_tokens, num_new, hidden=None) -> None:
        for row, toks, n in zip(self.rows, new_tokens.tolist(), num_new.tolist()):
            row.extend(toks[:n])

    def drop(self, keep: torch.Tensor) -> None:
        self.rows = [self.rows[i] for i in keep.tolist()]

    def describe(self) -> list:
        return [self.kind, self.min_n, self.max_n, self.count]

    def forward_timer(self, batch: int, context: int):
        return None
