"""SpecEngine: lossless batched speculative decoding with a per-sequence, per-step γ.

``SpecEngine.generate(requests)`` decodes a list of requests in static batches of ``max_batch_size`` (finished rows
leave the batch as they finish). Each step (:meth:`SpecEngine._speculative_step`, the whole algorithm in one
function) lets every live sequence draft its own number of tokens, verifies all of them in one target forward,
and keeps each row's own accepted prefix plus one recovered/bonus token. Rejected slots become holes in the
ragged KV caches (:mod:`speckv.kvcache`), so no row ever sees another row's or its own rejected tokens.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from speckv.config import EngineConfig, GenerationRequest
from speckv.costs import CostModel
from speckv.drafters import Drafter, build_drafter
from speckv.drafters.draft_lm import pad_right
from speckv.policies import build_policy
from speckv.policies.base import GammaPolicy, StepContext
from speckv.telemetry import summarize
from speckv.verify import sample, to_probs, verify, verify_greedy

ProgressFn = Callable[[int, int], None]  # (requests finished, tokens generated) since the last call

#: A row's acceptance history (``StepContext.accept_rate``, the telemetry's ``accept_rate``): accepted ÷ *judged*
#: draft positions, as two sums discounted by ACCEPT_DECAY per drafting step, from ACCEPT_PRIOR (accepted, judged).
#: A position is judged when the target ruled on it: every drafted one up to and including the first rejection. So the
#: rate estimates P(accept | prefix accepted) whatever γ the policy drafted — accepted ÷ drafted would not: the same
#: draft logged 0.15 under γ=8 and 0.34 under γ=3 (bf16), and a selector trained on one would misread the other.
ACCEPT_DECAY, ACCEPT_PRIOR = 0.8, (1.0, 2.0)


class RequestError(ValueError):
    """A request that cannot be generated (its row gets status=error; the others go on)."""


@dataclass
class GenerationResult:
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
    steps: list[dict] = field(default_factory=list)  # telemetry rows (telemetry.STEP_SCHEMA)
    summary: dict = field(default_factory=dict)  # telemetry.SUMMARY_FIELDS
    actor_id: str = ""

    def output_row(self) -> dict:
        """One row of ``telemetry.OUTPUT_SCHEMA``."""
        return {
            "id": self.id,
            "task": self.task,
            "prompt": self.prompt,
            "text": self.text,
            "token_ids": self.token_ids,
            "num_prompt_tokens": self.num_prompt_tokens,
            "num_generated_tokens": len(self.token_ids),
            "finish_reason": self.finish_reason,
            "status": self.status,
            "error": self.error,
            "policy": self.policy,
            "wall_ms": self.wall_ms,
            **self.summary,
            "actor_id": self.actor_id,
        }


@dataclass
class _Row:
    """Host-side state of one sequence in a batch."""

    result: GenerationResult
    request: GenerationRequest
    prompt_ids: list[int]
    generator: torch.Generator | None
    done: bool = False


@dataclass
class _Batch:
    rows: list[_Row]
    pending: torch.Tensor  # [B] last committed token, not yet in the target's cache
    temperature: torch.Tensor  # [B]
    top_k: torch.Tensor  # [B]
    top_p: torch.Tensor  # [B]
    ctx: StepContext
    cache: object  # RaggedCache of the target
    start: float
    greedy: bool = False  # every row greedy: draft and verify on token ids (no [B, K, V] distributions)

    def select(self, keep: list[int]) -> None:
        idx = torch.tensor(keep, dtype=torch.long)
        dev = self.pending.device
        self.rows = [self.rows[i] for i in keep]
        self.pending = self.pending[idx.to(dev)]
        self.temperature, self.top_k, self.top_p = (t[idx.to(t.device)] for t in (self.temperature, self.top_k, self.top_p))
        c = self.ctx
        for name in ("context_len", "num_generated", "max_new_tokens", "last_num_draft", "last_num_accepted",
                     "accept_sums"):
            setattr(c, name, getattr(c, name)[idx])
        c.state = {k: v[idx] for k, v in c.state.items()}
        c.batch_size = len(keep)
        self.cache.select_rows(idx.to(dev))


class SpecEngine:
    def __init__(
        self,
        config: EngineConfig,
        *,
        target: torch.nn.Module | None = None,
        tokenizer=None,
        drafter: Drafter | None = None,
        policy: GammaPolicy | None = None,
        device: torch.device | None = None,
        actor_id: str | None = None,
    ) -> None:
        """Load what ``config`` names; an already built target, tokenizer, drafter or policy may be injected."""
        from speckv import models

        self.config = config
        if config.threads:
            torch.set_num_threads(config.threads)
        if target is None:
            target, device = models.load_causal_lm(config.target)
        self.target = target
        self.device = device or next(target.parameters()).device
        self.tokenizer = tokenizer or models.load_tokenizer(config.target.source, config.target.gguf_file)
        self.vocab_size = target.config.vocab_size
        self.gamma_max = config.policy.max_gamma
        self.policy: GammaPolicy = policy or build_policy(config.policy)
        if drafter is None and self.gamma_max > 0:
            drafter = build_drafter(config.draft, target, config.target, self.device)
            if config.draft.kind == "lm" and config.draft.source != "embedded":  # the embedded draft is ours
                models.check_same_tokenizer(self.tokenizer, models.load_tokenizer(config.draft.source))
        self.drafter = drafter
        self.max_context = config.max_context or getattr(target.config, "max_position_embeddings", 2048)
        self.eos_ids = self._eos_ids()
        self.actor_id = actor_id or f"pid-{os.getpid()}"
        self.costs: CostModel | None = None
        self.batch_steps = 0  # batched steps run by this engine (telemetry's batch_step_id)
        if self.policy.needs_costs:
            from speckv.calibrate import load_or_calibrate

            self.costs = load_or_calibrate(self)

    # ------------------------------------------------------------------ public API

    def generate(self, requests: Sequence[GenerationRequest], progress: ProgressFn | None = None) -> list[GenerationResult]:
        """Generate every request; a bad request yields a ``status='error'`` result, never an exception."""
        rows: list[_Row] = []
        results: list[GenerationResult] = []
        for request in requests:
            result = GenerationResult(id=request.id, task=request.task, prompt=self._prompt_text(request),
                                      policy=self.config.policy.name, actor_id=self.actor_id)
            results.append(result)
            try:
                rows.append(self._new_row(request, result))
            except RequestError as exc:
                result.status, result.error, result.finish_reason = "error", str(exc), "error"
                if progress:
                    progress(1, 0)
        rows.sort(key=lambda r: len(r.prompt_ids))  # similar lengths together: less padding
        size = self.config.max_batch_size
        for i in range(0, len(rows), size):
            self._generate_batch(rows[i : i + size], progress)
        return results

    # ------------------------------------------------------------------ the speculative step

    @torch.inference_mode()
    def _speculative_step(self, batch: _Batch) -> tuple[torch.Tensor, torch.Tensor, list[list[bool]], dict]:
        """Draft → verify → accept for every live row. Returns (new_tokens [B, K+1], num_new [B], accept flags,
        per-step stats). Row b commits ``new_tokens[b, :num_new[b]]``: its accepted drafts, then the recovered or
        bonus token."""
        ctx, dev, n_rows = batch.ctx, self.device, len(batch.rows)
        stats = {"decision_ms": 0.0, "draft_ms": 0.0, "batch_step_id": self.batch_steps}
        self.batch_steps += 1
        # 1. how many tokens may each row draft? (the policy's budget, within the context and max_new_tokens)
        t0 = time.perf_counter()
        budget = self.policy.budget(ctx) if self.drafter is not None else torch.zeros(n_rows, dtype=torch.long)
        stats["decision_ms"] += (time.perf_counter() - t0) * 1e3
        remaining = ctx.max_new_tokens - ctx.num_generated
        budget = torch.minimum(budget, (remaining - 1).clamp(min=0))
        budget = torch.minimum(budget, (self.max_context - 1 - ctx.context_len).clamp(min=0))
        # 2. draft: row b proposes up to budget[b] tokens; the policy may stop it early from the draft's signals
        width = int(budget.max())
        draft_tokens = torch.zeros(n_rows, width, dtype=torch.long, device=dev)
        # q: draft probs of the proposals (an all-greedy batch verifies on token ids and needs none)
        q = None if batch.greedy else torch.zeros(n_rows, width, self.vocab_size, device=dev)
        num_draft = torch.zeros(n_rows, dtype=torch.long)
        drafting = budget > 0
        ctx.top1_history, ctx.entropy_history = [], []
        t_draft = time.perf_counter()
        last = None
        u_draft = self._uniforms(batch, budget, width)
        forwards = 0
        for pos in range(width):
            logits = self.drafter.draft_logits(last)  # [B, V'], V' ≤ V: ids past V' have draft probability 0
            forwards += 1
            top1, entropy = _signals(logits)
            t0 = time.perf_counter()
            decision = self.policy.keep_drafting(ctx, pos, top1, entropy)
            stats["decision_ms"] += (time.perf_counter() - t0) * 1e3
            propose, more = decision if isinstance(decision, tuple) else (decision, decision)
            drafting &= (pos < budget) & propose
            ctx.top1_history.append(top1)
            ctx.entropy_history.append(entropy)
            if not bool(drafting.any()):
                break
            if batch.greedy:
                last = logits.argmax(dim=-1)
            else:
                q[:, pos, : logits.shape[1]] = to_probs(logits, batch.temperature, batch.top_k, batch.top_p)
                last = sample(q[:, pos], u_draft[:, pos])
            draft_tokens[:, pos] = last
            num_draft += drafting.long()
            drafting &= more  # rows whose next token is not worth a look stop without another draft forward
            if not bool(drafting.any()):
                break
        self._sync()
        stats["draft_ms"] = (time.perf_counter() - t_draft) * 1e3 - stats["decision_ms"]
        # 3. verify every row's drafts in one target forward: input [pending, d_0 … d_{k-1}], ragged
        k = int(num_draft.max())
        t_verify = time.perf_counter()
        inputs = torch.cat([batch.pending[:, None], draft_tokens[:, :k]], dim=1)  # [B, k+1]
        valid = torch.arange(k + 1)[None, :] <= num_draft[:, None]
        logits, hidden = self._target_forward(batch.cache, inputs, valid.to(dev))  # [B, k+1, V], [B, k+1, H]
        if batch.greedy:
            num_accepted, next_token, accept = verify_greedy(draft_tokens[:, :k], num_draft.to(dev), logits.argmax(-1))
        else:
            p = to_probs(logits, batch.temperature, batch.top_k, batch.top_p)  # p: target probs
            u_verify = self._uniforms(batch, num_draft + 1, k + 1, last_at_end=True)
            num_accepted, next_token, accept = verify(draft_tokens[:, :k], num_draft.to(dev), q[:, :k], p, u_verify)
        self._sync()
        stats["verify_ms"] = (time.perf_counter() - t_verify) * 1e3
        stats["max_tokens_verified"], stats["draft_forwards"] = k + 1, forwards
        # 4. commit: the target keeps [pending + accepted]; new tokens = accepted drafts + recovered/bonus token
        batch.cache.keep_last(k + 1, num_accepted + 1)
        batch.cache.trim()
        new_tokens = torch.cat([draft_tokens[:, :k], torch.zeros_like(next_token)[:, None]], dim=1)
        new_tokens[torch.arange(n_rows, device=dev), num_accepted] = next_token
        if self.drafter is not None:
            self.drafter.commit(new_tokens, num_accepted + 1, hidden)
        batch.pending = next_token
        num_accepted = num_accepted.cpu()
        ctx.last_step = {"batch": n_rows, "forwards": forwards, "draft_ms": stats["draft_ms"],
                         "verify_ms": stats["verify_ms"], "tokens": k + 1}  # the loop adds the step's wall_ms
        t0 = time.perf_counter()
        self.policy.observe(ctx, num_draft, num_accepted)
        stats["decision_ms"] += (time.perf_counter() - t0) * 1e3
        flags = [accept[b, : int(num_draft[b])].tolist() for b in range(n_rows)]
        stats["accept_rate"] = ctx.accept_rate  # as the policy saw it, before this step
        self._update_history(ctx, num_draft, num_accepted)
        stats["num_draft"], stats["num_accepted"] = num_draft, num_accepted
        return new_tokens.cpu(), num_accepted + 1, flags, stats

    # ------------------------------------------------------------------ batch driver

    def _generate_batch(self, rows: list[_Row], progress: ProgressFn | None) -> None:
        from speckv.kvcache import RaggedCache

        start = time.perf_counter()
        dev = self.device
        params = [r.request.sampling for r in rows]
        batch = _Batch(
            rows=rows,
            pending=torch.zeros(len(rows), dtype=torch.long, device=dev),
            temperature=torch.tensor([s.temperature for s in params], device=dev),
            top_k=torch.tensor([s.top_k for s in params], device=dev),
            top_p=torch.tensor([s.top_p for s in params], device=dev),
            ctx=self._new_context(rows),
            cache=RaggedCache(len(rows), dev),
            start=start,
            greedy=all(s.greedy for s in params),
        )
        self.policy.init_state(batch.ctx)
        with torch.inference_mode():
            ids, valid = pad_right([r.prompt_ids for r in rows], dev)
            logits, hidden = self._target_forward(batch.cache, ids, valid, last_only=True)
            first = sample(to_probs(logits[:, 0], batch.temperature, batch.top_k, batch.top_p),
                           self._uniforms(batch, torch.ones(len(rows), dtype=torch.long), 1)[:, 0])
            batch.pending = first
            if self.drafter is not None:
                per_row_hidden = [hidden[b, : len(r.prompt_ids)] for b, r in enumerate(rows)] if hidden is not None else None
                self.drafter.prefill([r.prompt_ids for r in rows], first, per_row_hidden)
        self._emit(batch, first.cpu()[:, None], torch.ones(len(rows), dtype=torch.long), None, None, progress)
        while batch.rows:
            t0 = time.perf_counter()
            new_tokens, num_new, flags, stats = self._speculative_step(batch)
            self._emit(batch, new_tokens, num_new, flags, stats, progress)
            batch.ctx.last_step["wall_ms"] = (time.perf_counter() - t0) * 1e3  # the whole step, bookkeeping included

    def _emit(self, batch: _Batch, new_tokens, num_new, flags, stats, progress: ProgressFn | None) -> None:
        """Append each row's committed tokens, cut at EOS / stop strings / max_new_tokens, log telemetry, and drop
        finished rows from the batch."""
        ctx = batch.ctx
        finished_now, tokens_now = 0, 0
        for b, row in enumerate(batch.rows):
            res, sp = row.result, row.request.sampling
            before = len(res.token_ids)
            for tok in new_tokens[b, : int(num_new[b])].tolist():
                res.token_ids.append(tok)
                if tok in self.eos_ids and not sp.ignore_eos:
                    row.done, res.finish_reason = True, "stop"
                    break
                if len(res.token_ids) >= sp.max_new_tokens or len(row.prompt_ids) + len(res.token_ids) >= self.max_context:
                    row.done, res.finish_reason = True, "length"
                    break
            if sp.stop and self._cut_at_stop(row):
                row.done, res.finish_reason = True, "stop"
            emitted = len(res.token_ids) - before
            tokens_now += emitted
            if stats is not None:
                res.steps.append(self._step_row(batch, b, row, flags[b], stats, emitted))
            if row.done:
                finished_now += 1
                self._finish(row, batch.start)
        ctx.context_len = ctx.context_len + num_new
        ctx.num_generated = ctx.num_generated + num_new
        if progress:
            progress(finished_now, tokens_now)
        keep = [i for i, r in enumerate(batch.rows) if not r.done]
        if len(keep) < len(batch.rows):
            if keep and self.drafter is not None:
                self.drafter.select_rows(torch.tensor(keep, dtype=torch.long))
            if keep:
                batch.select(keep)
            else:
                batch.rows = []

    def _step_row(self, batch: _Batch, b: int, row: _Row, flags: list[bool], stats: dict, emitted: int) -> dict:
        spec, ctx = self.config.target, batch.ctx
        n_draft = int(stats["num_draft"][b])
        return {
            "request_id": row.result.id,
            "task": row.result.task,
            "step": len(row.result.steps),
            "batch_step_id": stats["batch_step_id"],
            "policy": self.config.policy.name,
            "drafter": getattr(self.drafter, "kind", "none"),
            "batch_size": len(batch.rows),
            "context_len": int(ctx.context_len[b]),
            "num_draft_tokens": n_draft,
            "num_accepted_tokens": int(stats["num_accepted"][b]),
            "num_emitted_tokens": emitted,
            "draft_top1": [float(t[b]) for t in ctx.top1_history[:n_draft]],
            "draft_entropy": [float(t[b]) for t in ctx.entropy_history[:n_draft]],
            "draft_accept": flags,
            "draft_ms": stats["draft_ms"],
            "verify_ms": stats["verify_ms"],
            "decision_ms": stats["decision_ms"] / len(batch.rows),
            "num_decisions": 1 + stats["draft_forwards"],
            "max_tokens_verified": stats["max_tokens_verified"],
            "temperature": row.request.sampling.temperature,
            "target_dtype": spec.dtype,
            "quantization": spec.quantization,
            "compression": spec.compression,
            "device": self.device.type,
            "gamma_max": self.gamma_max,
            "accept_rate": float(stats["accept_rate"][b]),
            "actor_id": self.actor_id,
        }

    def _finish(self, row: _Row, start: float) -> None:
        res = row.result
        if not row.request.sampling.stop:
            res.text = self.tokenizer.decode(res.token_ids, skip_special_tokens=True)
        res.num_prompt_tokens = len(row.prompt_ids)
        res.wall_ms = (time.perf_counter() - start) * 1e3
        res.summary = summarize(res.steps, self.gamma_max)

    def _cut_at_stop(self, row: _Row) -> bool:
        """Cut text (and tokens) at the earliest stop string; True when one was found."""
        res = row.result
        text = self.tokenizer.decode(res.token_ids, skip_special_tokens=True)
        hits = [text.find(s) for s in row.request.sampling.stop if s in text]
        if not hits:
            res.text = text
            return False
        cut = min(hits)
        res.text = text[:cut]
        # keep the shortest token prefix whose text reaches the stop string
        for n in range(1, len(res.token_ids) + 1):
            if len(self.tokenizer.decode(res.token_ids[:n], skip_special_tokens=True)) > cut:
                del res.token_ids[n:]
                break
        return True

    # ------------------------------------------------------------------ helpers

    def _target_forward(self, cache, ids: torch.Tensor, valid: torch.Tensor, last_only: bool = False):
        """Target logits ([B, L, V], or [B, 1, V] at each row's last real token) and the last hidden states
        ([B, L, H], what the LM head reads) when the drafter needs them."""
        out = self.target.get_decoder()(**cache.model_inputs(ids, valid))
        hidden = out.last_hidden_state
        if last_only:
            last = valid.long().sum(dim=1) - 1
            feats = hidden[torch.arange(ids.shape[0], device=hidden.device), last][:, None]
        else:
            feats = hidden
        logits = self.target.get_output_embeddings()(feats)[..., : self.vocab_size]
        needs = self.drafter is not None and self.drafter.needs_target_hidden
        return logits, (hidden if needs else None)

    def _new_row(self, request: GenerationRequest, result: GenerationResult) -> _Row:
        ids = self._encode(request)
        limit = self.max_context - 1
        if len(ids) > limit:
            raise RequestError(f"prompt has {len(ids)} tokens; the target's context allows at most {limit}")
        seed = request.sampling.seed
        generator = None
        if not request.sampling.greedy:
            generator = torch.Generator().manual_seed(seed if seed is not None else random.getrandbits(63))
        return _Row(result=result, request=request, prompt_ids=ids, generator=generator)

    def _encode(self, request: GenerationRequest) -> list[int]:
        return encode_request(self.tokenizer, request)

    @staticmethod
    def _prompt_text(request: GenerationRequest) -> str:
        if request.prompt is not None:
            return request.prompt
        import json

        return json.dumps([m.model_dump() for m in request.messages])

    def _new_context(self, rows: list[_Row]) -> StepContext:
        n = len(rows)
        return StepContext(
            batch_size=n,
            context_len=torch.tensor([len(r.prompt_ids) for r in rows]),
            num_generated=torch.zeros(n, dtype=torch.long),
            max_new_tokens=torch.tensor([r.request.sampling.max_new_tokens for r in rows]),
            last_num_draft=torch.zeros(n, dtype=torch.long),
            last_num_accepted=torch.zeros(n, dtype=torch.long),
            accept_sums=torch.tensor([ACCEPT_PRIOR] * n),
            compression=self.config.target.compression,
            costs=self.costs,
            gamma_max=self.gamma_max,
        )

    @staticmethod
    def _update_history(ctx: StepContext, num_draft: torch.Tensor, num_accepted: torch.Tensor) -> None:
        judged = torch.minimum(num_draft, num_accepted + 1)  # up to and including the first rejection
        step = torch.stack([num_accepted, judged], dim=1).float()
        ctx.accept_sums = torch.where((num_draft > 0)[:, None], ACCEPT_DECAY * ctx.accept_sums + step, ctx.accept_sums)
        ctx.last_num_draft, ctx.last_num_accepted = num_draft, num_accepted

    def _uniforms(self, batch: _Batch, counts: torch.Tensor, width: int, last_at_end: bool = False) -> torch.Tensor:
        """[B, width] per-row draws, zeros for greedy rows. Row b draws exactly ``counts[b]`` numbers from its own
        generator, so its random stream never depends on what the other rows of the batch do. With
        ``last_at_end`` the row's last draw goes to the last column (the verify step's final-token draw)."""
        out = torch.zeros(len(batch.rows), width)
        for b, row in enumerate(batch.rows):
            n = int(counts[b])
            if row.generator is None or n == 0:
                continue
            draws = torch.rand(n, generator=row.generator)
            if last_at_end:
                out[b, : n - 1], out[b, -1] = draws[:-1], draws[-1]
            else:
                out[b, :n] = draws
        return out.to(self.device)

    def _eos_ids(self) -> set[int]:
        ids = set()
        for source in (self.tokenizer.eos_token_id, getattr(self.target.generation_config, "eos_token_id", None)):
            if isinstance(source, int):
                ids.add(source)
            elif source:
                ids.update(source)
        return ids

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def encode_request(tokenizer, request: GenerationRequest) -> list[int]:
    """Prompt token ids: the chat template for prompts and messages, the raw text for ``raw_prompt`` requests."""
    if request.raw_prompt and request.prompt is not None:
        return tokenizer(request.prompt, add_special_tokens=False)["input_ids"]
    messages = [m.model_dump() for m in request.messages] if request.messages else [
        {"role": "user", "content": request.prompt}]
    if getattr(tokenizer, "chat_template", None) is None:
        return tokenizer("\n".join(m["content"] for m in messages))["input_ids"]
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if hasattr(encoded, "keys"):  # newer transformers return a BatchEncoding
        encoded = encoded["input_ids"]
    return list(encoded)


def _signals(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Draft top-1 probability and entropy (nats) per row, from the raw draft logits (temperature 1). [B] each."""
    probs = torch.softmax(logits.float(), dim=-1)
    entropy = -torch.xlogy(probs, probs).sum(dim=-1)  # 0·log 0 = 0: a restricted draft head has -inf logits
    return probs.max(dim=-1).values.cpu(), entropy.cpu()


__all__ = ["SpecEngine", "GenerationResult", "RequestError", "encode_request"]
