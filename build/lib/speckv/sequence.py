"""One request inside the engine: its tokens, its text as it streams, its stop conditions and its figures.

Text is decoded incrementally (vLLM's and TGI's prefix/read offsets): each step decodes only the few tokens since the
last complete character, so streaming costs O(new tokens) per step, and a piece that ends inside a multi-byte
character (U+FFFD) waits for the next token. Stop strings are searched only where a new one could end (the new
text and the longest stop string's length before it), and text that could still turn out to be the start of a stop
string is held back from the stream until it cannot.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from speckv.config import GenerationRequest
from speckv.telemetry import RequestStats


@dataclass
class GenerationResult:
    """A finished request: ``output_row()`` is its row of ``telemetry.OUTPUT_SCHEMA``."""

    id: str
    task: str | None
    prompt: str
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    num_prompt_tokens: int = 0
    finish_reason: str = "error"
    status: str = "ok"
    error: str | None = None
    policy: str = ""
    wall_ms: float = 0.0
    steps: list[dict] = field(default_factory=list)  # telemetry rows (telemetry.STEP_SCHEMA), when recorded
    summary: dict = field(default_factory=dict)  # telemetry.SUMMARY_FIELDS
    actor_id: str = ""

    def output_row(self) -> dict:
        return {
            "id": self.id, "task": self.task, "prompt": self.prompt, "text": self.text, "token_ids": self.token_ids,
            "num_prompt_tokens": self.num_prompt_tokens, "num_generated_tokens": len(self.token_ids),
            "finish_reason": self.finish_reason, "status": self.status, "error": self.error, "policy": self.policy,
            "wall_ms": self.wall_ms, **self.summary, "actor_id": self.actor_id,
        }


@dataclass
class Delta:
    """What one engine step produced for one request."""

    request_id: str
    token_ids: list[int]  # tokens committed this step (after EOS / stop / length cuts)
    text: str  # text that became final this step
    finish_reason: str | None = None  # stop | length | abort | error, once finished
    result: GenerationResult | None = None  # the whole request, once finished

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


class Detokenizer:
    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.ids, self.text = tokenizer, [], ""
        self.prefix, self.read = 0, 0  # ids[prefix:read] decoded last time; ids[read:] not yet

    def push(self, ids: list[int]) -> str:
        self.ids.extend(ids)
        decode = self.tokenizer.decode
        before = decode(self.ids[self.prefix : self.read], skip_special_tokens=True)
        after = decode(self.ids[self.prefix :], skip_special_tokens=True)
        if len(after) <= len(before) or after.endswith("\ufffd"):  # nothing new yet, or half a character
            return ""
        new = after[len(before) :]
        self.prefix, self.read = self.read, len(self.ids)
        self.text += new
        return new


class Sequence:
    def __init__(self, request: GenerationRequest, prompt_ids: list[int], tokenizer, eos_ids: set[int],
                 max_context: int, result: GenerationResult) -> None:
        self.request, self.prompt_ids, self.result = request, prompt_ids, result
        self.sampling = request.sampling
        self.eos_ids, self.max_context = eos_ids, max_context
        self.detok = Detokenizer(tokenizer)
        self.stops = self.sampling.stop
        self.hold = max((len(s) for s in self.stops), default=1) - 1  # chars that may still start a stop string
        self.sent = 0  # characters of detok.text already streamed
        self.stats = RequestStats()
        self.arrival = time.perf_counter()
        self.started = self.first_token = 0.0
        self.aborted = False
        self.finish_reason: str | None = None
        seed = self.sampling.seed
        self.generator = None
        if not self.sampling.greedy:
            self.generator = torch.Generator().manual_seed(seed if seed is not None else int(torch.randint(2**62, ())))

    @property
    def id(self) -> str:
        return self.request.id

    @property
    def tokens(self) -> list[int]:
        return self.result.token_ids

    def append(self, new: list[int]) -> Delta:
        """Commit ``new`` tokens (cut at EOS, max_new_tokens, the context, a stop string) and say what streams."""
        kept = []
        for tok in new:
            kept.append(tok)
            self.tokens.append(tok)
            if tok in self.eos_ids and not self.sampling.ignore_eos:
                self.finish_reason = "stop"
                break
            if len(self.tokens) >= self.sampling.max_new_tokens or \
                    len(self.prompt_ids) + len(self.tokens) >= self.max_context:
                self.finish_reason = "length"
                break
        if kept and not self.first_token:
            self.first_token = time.perf_counter()
        searched = max(len(self.detok.text) - self.hold, 0)
        self.detok.push(kept)
        if self.stops and self._cut_at_stop(searched):
            self.finish_reason = "stop"
            kept = kept[: max(len(kept) - (len(self.detok.ids) - len(self.tokens)), 0)]
        elif self.finish_reason:  # the whole text once, so that a character still pending at the end is there too
            self.detok.text = self.detok.tokenizer.decode(self.tokens, skip_special_tokens=True)
        end = len(self.detok.text) if self.finish_reason else max(len(self.detok.text) - self.hold, self.sent)
        text, self.sent = self.detok.text[self.sent : end], end
        return Delta(self.id, kept, text, self.finish_reason)

    def _cut_at_stop(self, searched: int) -> bool:
        text = self.detok.text
        hits = [i for s in self.stops if (i := text.find(s, searched)) >= 0]
        if not hits:
            return False
        cut = min(hits)
        self.detok.text = text[:cut]
        # the shortest token prefix whose text reaches the stop string (decoded lengths grow with the prefix)
        decode = self.detok.tokenizer.decode
        lo, hi = 0, len(self.tokens)
        while lo < hi:
            mid = (lo + hi) // 2
            if len(decode(self.tokens[:mid], skip_special_tokens=True)) > cut:
                hi = mid
            else:
                lo = mid + 1
        del self.tokens[lo:]
        return True
