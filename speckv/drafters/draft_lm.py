"""The independent draft-LM drafter: any Hugging Face causal LM that shares the target's tokenizer.

State per row: the draft's own KV cache (a :class:`~speckv.kvcache.RaggedCache`) and a queue of committed tokens
it has not fed yet. A step's first :meth:`draft_logits` call feeds the queue (ragged), later calls feed the token
drafted just before. :meth:`commit` keeps the accepted drafted tokens it already fed and re-queues the rest.
"""

from __future__ import annotations

import torch

from speckv.kvcache import RaggedCache


def pad_right(rows: list[list[int]], device: torch.device, pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, L] right-padded ids and their [B, L] validity mask (L ≥ 1)."""
    width = max(1, max(len(r) for r in rows))
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, : len(r)] = torch.tensor(r, dtype=torch.long)
    lengths = torch.tensor([len(r) for r in rows])
    valid = torch.arange(width)[None, :] < lengths[:, None]
    return ids.to(device), valid.to(device)


class DraftLM:
    needs_target_hidden = False
    kind = "lm"

    def __init__(self, model: torch.nn.Module, device: torch.device, vocab_size: int) -> None:
        self.model, self.device, self.vocab_size = model, device, vocab_size
        self.cache: RaggedCache | None = None
        self.queue: list[list[int]] = []
        self.fed_drafts = 0  # drafted tokens fed this step (same for every row)
        self.queue_fed = False

    def _forward(self, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:  # [B, V] logits at last valid
        out = self.model(**self.cache.model_inputs(ids, valid))
        last = valid.long().sum(dim=1).clamp(min=1) - 1
        logits = out.logits[torch.arange(ids.shape[0], device=self.device), last]
        return logits[:, : self.vocab_size]

    @torch.inference_mode()
    def prefill(self, prompt_ids: list[list[int]], first_tokens: torch.Tensor, hidden=None) -> None:
        self.cache = RaggedCache(len(prompt_ids), self.device)
        ids, valid = pad_right(prompt_ids, self.device)
        self.model(**self.cache.model_inputs(ids, valid), logits_to_keep=1)
        self.queue = [[int(t)] for t in first_tokens.tolist()]
        self.fed_drafts, self.queue_fed = 0, False

    @torch.inference_mode()
    def draft_logits(self, last_tokens: torch.Tensor | None) -> torch.Tensor:
        if last_tokens is None:
            ids, valid = pad_right(self.queue, self.device)
            self.queue_fed = True
            return self._forward(ids, valid)
        self.fed_drafts += 1
        ids = last_tokens[:, None].to(self.device)
        return self._forward(ids, torch.ones_like(ids, dtype=torch.bool))

    def commit(self, new_tokens: torch.Tensor, num_new: torch.Tensor, hidden=None) -> None:
        num_accepted = (num_new - 1).to(self.device)
        fed = self.fed_drafts
        kept = num_accepted.clamp(max=fed)  # accepted drafts whose KV entries are already right
        if fed:
            self.cache.keep_last(fed, kept)
        old = self.queue if not self.queue_fed else [[] for _ in self.queue]
        new = new_tokens.tolist()
        self.queue = [q + new[b][int(kept[b]) : int(num_new[b])] for b, q in enumerate(old)]
        self.fed_drafts, self.queue_fed = 0, False
        self.cache.trim()

    def select_rows(self, rows: torch.Tensor) -> None:
        self.cache.select_rows(rows.to(self.device))
        self.queue = [self.queue[i] for i in rows.tolist()]
