"""SpecEngine: lossless speculative decoding, continuously batched, with a budget chosen per sequence and per step.

Requests join and leave the running batch at every step (iteration-level scheduling, as in vLLM, SGLang and TGI):
:meth:`SpecEngine.add_request` queues one, :meth:`SpecEngine.step` admits what fits (prefilled, then joined to the
ragged batch), runs one speculative step over every live row and returns what each request produced
(:class:`~speckv.sequence.Delta`: new tokens, new text, the finish reason once done), and :meth:`SpecEngine.abort`
drops one. :meth:`SpecEngine.generate` is a loop over those; :class:`speckv.loop.EngineLoop` runs them in a
background thread for Serve and the batch job.

The speculative step (:meth:`SpecEngine._speculative_step`, the whole algorithm on one screen) lets every row
propose its own tree of candidates (a chain is a tree of width one), verifies all rows' trees in one target
forward, and keeps each row's accepted path plus one recovered or bonus token. Rejected slots become holes in the
ragged KV cache (:mod:`speckv.kvcache`), so no row ever sees another row's tokens, or its own rejected ones: a
request's output does not depend on which others share its batch or when they joined.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Sequence as Seq
from contextlib import contextmanager
from dataclasses import dataclass, fields

import torch

from speckv.config import EngineConfig, GenerationRequest
from speckv.costs import OnlineCosts, StepTimes, load_or_calibrate
from speckv.drafters import Drafter, build_drafter
from speckv.drafters.draft_lm import pad_right
from speckv.drafters.tree import TreeBuilder
from speckv.history import History
from speckv.policies import build_policy
from speckv.policies.base import Policy, StepContext
from speckv.proposal import Proposal
from speckv.sequence import Delta, GenerationResult, Sequence
from speckv.verify import TreeVerdict, sample, to_probs, verify_tree, verify_tree_greedy

log = logging.getLogger(__name__)
ProgressFn = Callable[[int, int], None]  # (requests finished, tokens generated) since the last call


class RequestError(ValueError):
    """A request that cannot be generated (its row gets status=error; the others go on)."""


@dataclass
class _Batch:
    """The running batch: per-row tensors, batch first, kept in the order of ``rows``."""

    rows: list[Sequence]
    pending: torch.Tensor  # [B] last committed token, not yet in the target's cache
    temperature: torch.Tensor  # [B]
    top_k: torch.Tensor  # [B]
    top_p: torch.Tensor  # [B]
    cache: object  # RaggedCache of the target
    history: History
    state: dict[str, torch.Tensor]  # the policy's per-row state

    def select(self, keep: list[int]) -> None:
        idx = torch.tensor(keep, dtype=torch.long)
        self.rows = [self.rows[i] for i in keep]
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                setattr(self, f.name, value[idx.to(value.device)])
        self.state = {k: v[idx] for k, v in self.state.items()}
        self.history.select(idx)
        self.cache.select_rows(idx.to(self.pending.device))

    def extend(self, other: _Batch) -> None:
        self.rows += other.rows
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                setattr(self, f.name, torch.cat([value, getattr(other, f.name)]))
        self.state = {k: torch.cat([v, other.state[k]]) for k, v in self.state.items()}
        self.history.extend(other.history)
        self.cache.extend(other.cache)


class _Timer:
    """Wall ms by name, with the device synchronised at each boundary (CUDA runs asynchronously)."""

    def __init__(self, sync: Callable[[], None]) -> None:
        self.sync, self.ms = sync, {"decision": 0.0, "draft": 0.0, "verify": 0.0, "catch_up": 0.0}

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.sync()
            self.ms[name] += (time.perf_counter() - start) * 1e3


class SpecEngine:
    def __init__(
        self,
        config: EngineConfig,
        *,
        target: torch.nn.Module | None = None,
        tokenizer=None,
        drafter: Drafter | None = None,
        policy: Policy | None = None,
        device: torch.device | None = None,
        actor_id: str | None = None,
        costs=None,  # a CostModel to use instead of calibrating (tests, a machine measured elsewhere)
        record_steps: bool = True,  # build telemetry rows (one per request and step)
    ) -> None:
        """Load what ``config`` names; an already built target, tokenizer, drafter or policy may be injected."""
        from speckv import models

        self.config = config
        if config.threads:
            torch.set_num_threads(config.threads)
        if target is None:
            self.target_spec = models.resolve_spec(config.target, config.max_batch_size)
            target, device = models.load_causal_lm(self.target_spec)
        else:
            self.target_spec = models.spec_of(config.target, target)
        self.target = target
        self.device = device or next(target.parameters()).device
        self.tokenizer = tokenizer or models.load_tokenizer(config.target.source, config.target.gguf_file)
        self.vocab_size = target.config.vocab_size
        self.gamma_max = config.policy.max_gamma
        self.policy: Policy = policy or build_policy(config.policy)
        if drafter is None and (self.gamma_max > 0 or config.draft.kind == "lookup"):
            drafter = build_drafter(config.draft, target, self.target_spec, self.device)
            if config.draft.kind == "lm" and config.draft.source != "embedded":  # the embedded draft is ours
                models.check_same_tokenizer(self.tokenizer, models.load_tokenizer(config.draft.source))
        self.drafter = drafter
        self.max_context = config.max_context or getattr(target.config, "max_position_embeddings", 2048)
        self.eos_ids = self._eos_ids()
        self.actor_id = actor_id or f"pid-{os.getpid()}"
        self.record_steps = record_steps
        self.costs: OnlineCosts | None = None
        if self.policy.needs_costs:
            self.costs = OnlineCosts(costs or load_or_calibrate(self), max_tokens=self.gamma_max + 3)
        from speckv.report import machine_record, summary_lines

        for line in summary_lines(machine_record(self)):  # the dtype chosen and the verify-cost curve, at start
            log.info("%s: %s", self.actor_id, line)
        self.waiting: deque[Sequence] = deque()
        self.batch: _Batch | None = None
        self.batch_steps = 0  # batched steps run by this engine (telemetry's batch_step_id)
        self._aborted: set[str] = set()
        self._in_flight: set[str] = set()
        self._held = 0  # steps admission has waited for a row due to finish (config.admit_wait)
        # What is loaded by now (models, tokenizer, the libraries' own objects) lives as long as the engine: freeze it
        # out of the cyclic collector's sight, or its full passes, which land inside forwards, walk it every time (vLLM
        # freezes its start-up heap too). Measured, job input, batch 8, bf16, learned: verify p50 51.2 → 39.0 ms
        gc.collect()
        gc.freeze()

    # ------------------------------------------------------------------ the request API

    def prepare(self, request: GenerationRequest) -> Sequence:
        """Encode and check a request (raises RequestError); touches no engine state, so any thread may call it."""
        result = GenerationResult(id=request.id, task=request.task, prompt=_prompt_text(request),
                                  policy=self.config.policy.name, actor_id=self.actor_id)
        ids = encode_request(self.tokenizer, request)
        limit = self.max_context - 1
        if len(ids) > limit:
            raise RequestError(f"prompt has {len(ids)} tokens; the target's context allows at most {limit}")
        return Sequence(request, ids, self.tokenizer, self.eos_ids, self.max_context, result)

    def add_request(self, request: GenerationRequest | Sequence) -> Sequence:
        seq = request if isinstance(request, Sequence) else self.prepare(request)
        if seq.id in self._in_flight:
            raise RequestError(f"request id {seq.id!r} is already in flight; ids must be unique while running")
        self._in_flight.add(seq.id)
        self.waiting.append(seq)
        return seq

    def abort(self, request_id: str) -> None:
        """Drop a request, waiting or running; its last delta says ``finish_reason='abort'``."""
        self._aborted.add(request_id)

    def reset(self) -> None:
        """Drop every request and the batch (after an engine fault): the loaded models stay."""
        self.waiting.clear()
        self.batch, self._aborted, self._in_flight = None, set(), set()
        if self.drafter is not None:
            self.drafter.drop(torch.zeros(0, dtype=torch.long))

    @property
    def num_running(self) -> int:
        return len(self.batch.rows) if self.batch is not None else 0

    def has_unfinished(self) -> bool:
        return bool(self.waiting) or self.num_running > 0

    def step(self) -> list[Delta]:
        """Admit what fits, run one speculative step over every live row, and say what each request produced."""
        deltas = self._drop(self._admit())
        if self.num_running:
            deltas += self._drop(self._run_step())
        return deltas

    def generate(self, requests: Seq[GenerationRequest], progress: ProgressFn | None = None) -> list[GenerationResult]:
        """Generate every request; a bad request yields a ``status='error'`` result, never an exception."""
        results = []
        for request in requests:
            try:
                results.append(self.add_request(request).result)
            except RequestError as exc:
                results.append(GenerationResult(id=request.id, task=request.task, prompt=_prompt_text(request),
                                                status="error", error=str(exc), policy=self.config.policy.name,
                                                actor_id=self.actor_id))
                if progress:
                    progress(1, 0)
        while self.has_unfinished():
            deltas = self.step()
            if progress:
                progress(sum(d.finished for d in deltas), sum(len(d.token_ids) for d in deltas))
        return results

    # ------------------------------------------------------------------ the speculative step

    @torch.inference_mode()
    def _speculative_step(self, batch: _Batch, ctx: StepContext,
                          timer: _Timer) -> tuple[Proposal, TreeVerdict, torch.Tensor]:
        """Budget → propose → verify → commit, for every live row. p: target probs, q: draft probs."""
        n = len(batch.rows)
        # 1. budget: at most how many candidate nodes each row verifies, and how the head may draft (0 = plain)
        with timer("decision"):
            plan = self.policy.plan(ctx)
        depth_cap = self._depth_cap(ctx)  # [B] no path past max_new_tokens or the context
        plan.nodes = torch.where(depth_cap > 0, plan.nodes, 0)
        # 2. propose: each drafter adds to one tree per row; the policy values the nodes and cuts the tree
        tree = TreeBuilder(n, depth_cap=depth_cap, device=self.device,
                           sampling=None if ctx.greedy else (batch.temperature, batch.top_k, batch.top_p),
                           vocab=self.vocab_size)
        if self.drafter is not None:
            with timer("catch_up"):  # what admission and plain steps queued: not a draft forward's cost, nor a step's
                self.drafter.prepare(plan)
            with timer("draft"):
                self.drafter.grow(tree, plan, lambda t: self._timed_expand(ctx, t, timer), self._draws(batch))
        with timer("decision"):
            keep = self.policy.cut(ctx, tree, plan)
        proposal = tree.finish(keep)  # tokens/parents [B, N], q [B, N, V] when sampling
        # 3. verify: one target forward over each row's [pending, nodes], every node seeing its ancestors only
        with timer("verify"):
            logits, hidden = self._verify_forward(batch, proposal)  # [B, 1+N, V], [B, 1+N, H]
            if ctx.greedy:
                verdict = verify_tree_greedy(proposal.tokens, proposal.parents, proposal.num_nodes, logits.argmax(-1))
            else:
                p = to_probs(logits, batch.temperature, batch.top_k, batch.top_p)  # [B, 1+N, V]
                u = self._uniforms(batch, proposal.num_nodes + 1, proposal.width + 1)  # [B, 1+N], u[:, 0] final
                verdict = verify_tree(proposal.tokens, proposal.parents, proposal.num_nodes, proposal.q, p, u)
        # 4. commit: the root and the accepted path keep their slots (the rest become holes); the accepted
        #    tokens plus the recovered/bonus token are the row's new tokens
        path = torch.cat([torch.zeros(n, 1, dtype=torch.long, device=self.device), verdict.path.clamp(min=0)], dim=1)
        kept = torch.where(torch.arange(path.shape[1], device=self.device) <= verdict.num_accepted[:, None], path, -1)
        on_path = (kept[:, :, None] == torch.arange(proposal.width + 1, device=self.device)).any(dim=1)  # [B, 1+N]
        batch.cache.keep_last(on_path)
        batch.cache.trim()
        nodes = torch.cat([batch.pending[:, None], proposal.tokens], dim=1)  # [B, 1+N] token of each node
        new_tokens = torch.cat([nodes.gather(1, path[:, 1:]), verdict.next_token[:, None]], dim=1)  # [B, D+1]
        new_tokens.scatter_(1, verdict.num_accepted[:, None], verdict.next_token[:, None])
        if self.drafter is not None:
            feats = None if hidden is None else hidden.gather(1, path[..., None].expand(-1, -1, hidden.shape[-1]))
            self.drafter.commit(new_tokens, verdict.num_accepted + 1, feats)  # feature before each new token
        batch.pending = verdict.next_token
        with timer("decision"):
            self.policy.observe(ctx, proposal, verdict.num_accepted.cpu())
        batch.history.update(proposal, on_path)
        return proposal, verdict, new_tokens

    # ------------------------------------------------------------------ scheduling

    def _admit(self) -> list[Delta]:
        """Abort what was asked to, then prefill waiting requests while they fit (``max_batch_size`` rows,
        ``max_prefill_tokens`` prompt tokens; a longer prompt is admitted alone) and join them to the batch. While more
        wait than fit, a freed slot may wait ``admit_wait`` steps for a running row due to finish within them, so that
        their successors share one prefill forward (a lone one pays the forward's fixed cost alone)."""
        deltas = []
        if self._aborted:
            for seq in [s for s in self.waiting if s.id in self._aborted]:
                self.waiting.remove(seq)
                deltas.append(self._finish(seq, "abort"))
            for seq in self.batch.rows if self.batch is not None else []:
                if seq.id in self._aborted:
                    seq.finish_reason = "abort"
            self._aborted.clear()
        room, budget, take = self.config.max_batch_size - self.num_running, self.config.max_prefill_tokens, []
        if self.config.scheduling == "static" and self.num_running:
            room = 0  # a static batch runs to its last row before the next one starts (the v1 engine, for comparison)
        if room and self.num_running and len(self.waiting) > room and self._held < self.config.admit_wait:
            due = min(r.sampling.max_new_tokens - len(r.tokens) for r in self.batch.rows)  # steps to the next finish
            if due <= self.config.admit_wait - self._held:
                self._held += 1
                return deltas
        self._held = 0
        while self.waiting and len(take) < room:
            if take and sum(len(s.prompt_ids) for s in take) + len(self.waiting[0].prompt_ids) > budget:
                break
            take.append(self.waiting.popleft())
        if not take:
            return deltas
        with torch.inference_mode():
            joining = self._prefill(take)
        if self.batch is None or not self.batch.rows:
            self.batch = joining
        else:
            self.batch.extend(joining)
        for seq, first in zip(take, joining.pending.tolist()):
            seq.started = time.perf_counter()
            deltas.append(seq.append([first]))
        return deltas

    def _prefill(self, rows: list[Sequence]) -> _Batch:
        from speckv.kvcache import RaggedCache

        dev, params = self.device, [r.sampling for r in rows]
        batch = _Batch(
            rows=rows, pending=torch.zeros(len(rows), dtype=torch.long, device=dev),
            temperature=torch.tensor([s.temperature for s in params], device=dev),
            top_k=torch.tensor([s.top_k for s in params], device=dev),
            top_p=torch.tensor([s.top_p for s in params], device=dev),
            cache=RaggedCache(len(rows), dev), history=History.new(len(rows)), state=self.policy.init_rows(len(rows)))
        ids, valid = pad_right([r.prompt_ids for r in rows], dev)
        logits, hidden = self.target_forward(batch.cache, ids, valid, last_only=True)
        probs = to_probs(logits[:, 0], batch.temperature, batch.top_k, batch.top_p)
        batch.pending = sample(probs, self._uniforms(batch, torch.ones(len(rows), dtype=torch.long), 1)[:, 0])
        if self.drafter is not None:
            per_row = None if hidden is None else [hidden[b, : len(r.prompt_ids)] for b, r in enumerate(rows)]
            self.drafter.admit([r.prompt_ids for r in rows], batch.pending, per_row)
        return batch

    def _drop(self, deltas: list[Delta]) -> list[Delta]:
        """Finish the rows that are done (or aborted) and take them out of the batch; complete their deltas."""
        batch = self.batch
        if batch is None:
            return deltas
        done = {id(seq) for seq in batch.rows if seq.finish_reason is not None}
        if not done:
            return deltas
        by_seq = {d.request_id: d for d in deltas}
        for seq in batch.rows:
            if id(seq) in done:
                final = self._finish(seq, seq.finish_reason)
                if seq.id in by_seq and by_seq[seq.id].finish_reason is not None:
                    by_seq[seq.id].result = final.result
                else:
                    deltas.append(final)
        keep = [i for i, seq in enumerate(batch.rows) if id(seq) not in done]
        if self.drafter is not None:
            self.drafter.drop(torch.tensor(keep, dtype=torch.long))
        if keep:
            batch.select(keep)
        else:
            self.batch = None
        return deltas

    def _finish(self, seq: Sequence, reason: str) -> Delta:
        self._in_flight.discard(seq.id)
        res = seq.result
        seq.finish_reason = res.finish_reason = reason
        res.text = seq.detok.text
        res.num_prompt_tokens = len(seq.prompt_ids)
        res.wall_ms = (time.perf_counter() - (seq.started or seq.arrival)) * 1e3
        res.summary = seq.stats.summary()
        return Delta(seq.id, [], "", reason, res)

    # ------------------------------------------------------------------ one step, measured and recorded

    def _run_step(self) -> list[Delta]:
        batch, start = self.batch, time.perf_counter()
        ctx = self._context(batch)
        timer = _Timer(self.sync)
        proposal, verdict, new_tokens = self._speculative_step(batch, ctx, timer)
        new_tokens, num_new = new_tokens.cpu(), (verdict.num_accepted + 1).cpu()
        deltas = [seq.append(new_tokens[b, : int(num_new[b])].tolist()) for b, seq in enumerate(batch.rows)]
        drafted, accepted = proposal.num_nodes.cpu(), verdict.num_accepted.cpu()
        for b, seq in enumerate(batch.rows):
            seq.stats.add(int(drafted[b]), int(accepted[b]))
        wall_ms = (time.perf_counter() - start) * 1e3 - timer.ms["catch_up"]
        times = StepTimes(batch=len(batch.rows), tokens=proposal.width + 1, draft_widths=proposal.draft_widths,
                          draft_ms=timer.ms["draft"], verify_ms=timer.ms["verify"], decision_ms=timer.ms["decision"],
                          wall_ms=wall_ms, delivered=float(num_new.float().mean()), drafted=bool(drafted.any()))
        if self.costs is not None:
            self.costs.observe(times)
        if self.record_steps:
            self._record(batch, ctx, proposal, verdict, deltas, times)
        self.batch_steps += 1
        return deltas

    def _record(self, batch: _Batch, ctx: StepContext, proposal: Proposal, verdict: TreeVerdict,
                deltas: list[Delta], times: StepTimes) -> None:
        """One telemetry row per live request (telemetry.STEP_SCHEMA)."""
        p = proposal.to(torch.device("cpu"))
        lists = {name: getattr(p, name).tolist() for name in ("parents", "prob", "rank", "source", "match", "value",
                                                              "top1", "entropy", "depth")}
        accept, num_nodes, accepted = verdict.accept.cpu().tolist(), p.num_nodes.tolist(), verdict.num_accepted.tolist()
        spec = self.target_spec
        common = {
            "batch_step_id": self.batch_steps, "policy": self.config.policy.name,
            "drafter": getattr(self.drafter, "kind", "none"), "batch_size": len(batch.rows),
            "draft_ms": times.draft_ms, "verify_ms": times.verify_ms, "decision_ms": times.decision_ms / len(batch.rows),
            "num_decisions": 2 + times.draft_forwards, "draft_forwards": times.draft_forwards,
            "draft_widths": list(times.draft_widths),
            "max_tokens_verified": times.tokens, "target_dtype": spec.dtype, "quantization": spec.quantization,
            "compression": spec.compression, "device": self.device.type, "gamma_max": self.gamma_max,
            "actor_id": self.actor_id,
        }
        accept_rate, lookup_rate = ctx.accept_rate.tolist(), ctx.lookup_rate.tolist()
        for b, seq in enumerate(batch.rows):
            k = num_nodes[b]
            seq.result.steps.append({
                **common, "request_id": seq.id, "task": seq.request.task, "step": seq.stats.steps - 1,
                "context_len": int(ctx.context_len[b]), "num_draft_tokens": k, "num_accepted_tokens": accepted[b],
                "num_emitted_tokens": len(deltas[b].token_ids), "tree_depth": max(lists["depth"][b][:k], default=0),
                "node_parent": lists["parents"][b][:k], "node_prob": lists["prob"][b][:k],
                "node_rank": lists["rank"][b][:k], "node_source": lists["source"][b][:k],
                "node_match": lists["match"][b][:k], "node_value": lists["value"][b][:k],
                "draft_top1": lists["top1"][b][:k], "draft_entropy": lists["entropy"][b][:k],
                "draft_accept": accept[b][:k], "temperature": seq.sampling.temperature,
                "accept_rate": accept_rate[b], "lookup_rate": lookup_rate[b],
            })

    # ------------------------------------------------------------------ the target

    def target_forward(self, cache, ids: torch.Tensor, valid: torch.Tensor, attend: torch.Tensor | None = None,
                       positions: torch.Tensor | None = None, last_only: bool = False):
        """Target logits ([B, L, V], or [B, 1, V] at each row's last real token) and the last hidden states
        ([B, L, H], what the LM head reads) when the drafter needs them."""
        dtype = self.target.get_output_embeddings().weight.dtype
        dtype = dtype if dtype.is_floating_point else torch.float16
        out = self.target.get_decoder()(**cache.model_inputs(ids, valid, attend, positions, dtype=dtype))
        hidden = out.last_hidden_state
        if last_only:
            last = valid.long().sum(dim=1) - 1
            feats = hidden[torch.arange(ids.shape[0], device=hidden.device), last][:, None]
        else:
            feats = hidden
        logits = self.target.get_output_embeddings()(feats)[..., : self.vocab_size]
        needs = self.drafter is not None and self.drafter.needs_target_hidden
        return logits, (hidden if needs else None)

    def _verify_forward(self, batch: _Batch, proposal: Proposal):
        """One forward over every row's root (the pending token) and candidate nodes: a node sees the cache and its
        ancestors, at the position its depth gives."""
        n, width = len(batch.rows), proposal.width + 1
        ids = torch.cat([batch.pending[:, None], proposal.tokens], dim=1)  # [B, 1+N]
        valid = torch.arange(width, device=self.device)[None, :] <= proposal.num_nodes[:, None]
        past = torch.ones(n, width, batch.cache.valid.shape[1], dtype=torch.bool, device=self.device)
        attend = torch.cat([past, proposal.ancestors()], dim=2)  # [B, 1+N, S+1+N]
        depth = torch.cat([torch.zeros(n, 1, dtype=torch.long, device=self.device), proposal.depth], dim=1)
        return self.target_forward(batch.cache, ids, valid, attend, batch.cache.lengths[:, None] + depth)

    def verify_timer(self, batch: int, context: int) -> Callable[[int], float]:
        """For calibration: ``timer(tokens)`` = ms of one verify forward of ``batch`` rows × ``tokens`` over a
        synthetic ``context``-token cache (a chain's shape), rolled back after each call."""
        from speckv.kvcache import RaggedCache

        gen = torch.Generator().manual_seed(0)
        prompt = torch.randint(100, self.vocab_size, (batch, context), generator=gen).to(self.device)
        cache = RaggedCache(batch, self.device)
        with torch.inference_mode():
            self.target_forward(cache, prompt, torch.ones_like(prompt, dtype=torch.bool))

        @torch.inference_mode()
        def timer(tokens: int) -> float:
            ids = torch.randint(100, self.vocab_size, (batch, tokens), generator=gen).to(self.device)
            chain = Proposal.chain(ids[:, 1:])
            start = time.perf_counter()
            ones = torch.ones_like(ids, dtype=torch.bool)
            attend = torch.cat([torch.ones(batch, tokens, cache.valid.shape[1], dtype=torch.bool, device=self.device),
                                chain.ancestors()], dim=2)
            self.target_forward(cache, ids, ones, attend, cache.lengths[:, None] + torch.arange(tokens, device=self.device))
            self.sync()
            elapsed = (time.perf_counter() - start) * 1e3
            cache.keep_last(torch.zeros_like(ones))
            cache.trim()
            return elapsed

        return timer

    # ------------------------------------------------------------------ helpers

    def _context(self, batch: _Batch) -> StepContext:
        rows = batch.rows
        return StepContext(
            batch_size=len(rows),
            context_len=torch.tensor([len(r.prompt_ids) + len(r.tokens) for r in rows]),
            num_generated=torch.tensor([len(r.tokens) for r in rows]),
            max_new_tokens=torch.tensor([r.sampling.max_new_tokens for r in rows]),
            accept_rate=batch.history.accept_rate, lookup_rate=batch.history.lookup_rate,
            first_accept=batch.history.first, compression=self.target_spec.compression, costs=self.costs,
            gamma_max=self.gamma_max, greedy=all(r.sampling.greedy for r in rows), state=batch.state)

    def _depth_cap(self, ctx: StepContext) -> torch.Tensor:  # [B] deepest node a row may verify this step
        left = ctx.max_new_tokens - ctx.num_generated - 1  # the step's own token comes on top of the path
        room = self.max_context - 1 - ctx.context_len
        return torch.minimum(left, room).clamp(min=0)

    def _timed_expand(self, ctx: StepContext, tree: TreeBuilder, timer: _Timer) -> int:
        with timer("decision"):
            return self.policy.expand(ctx, tree)

    def _draws(self, batch: _Batch) -> Callable[[torch.Tensor], torch.Tensor]:
        """One uniform per asking row from its own generator (zeros for greedy rows): a sampled chain's drafts."""
        def draws(asking: torch.Tensor) -> torch.Tensor:
            return self._uniforms(batch, asking.long().cpu(), 1)[:, 0]

        return draws

    def _uniforms(self, batch: _Batch, counts: torch.Tensor, width: int) -> torch.Tensor:
        """[B, width] per-row draws, zeros for greedy rows. Row b draws exactly ``counts[b]`` numbers from its own
        generator, so its random stream never depends on the other rows: the last goes to column 0 (the final
        token's draw in verification), the others to columns 1, 2, ... (one per node)."""
        out = torch.zeros(len(batch.rows), width)
        for b, row in enumerate(batch.rows):
            k = int(counts[b])
            if row.generator is None or k == 0:
                continue
            draws = torch.rand(k, generator=row.generator)
            out[b, 1:k], out[b, 0] = draws[:-1], draws[-1]
        return out.to(self.device)

    def _eos_ids(self) -> set[int]:
        ids = set()
        for source in (self.tokenizer.eos_token_id, getattr(self.target.generation_config, "eos_token_id", None)):
            if isinstance(source, int):
                ids.add(source)
            elif source:
                ids.update(source)
        return ids

    def sync(self) -> None:
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


def _prompt_text(request: GenerationRequest) -> str:
    if request.prompt is not None:
        return request.prompt
    return json.dumps([m.model_dump() for m in request.messages])


__all__ = ["SpecEngine", "GenerationResult", "Delta", "RequestError", "encode_request"]
