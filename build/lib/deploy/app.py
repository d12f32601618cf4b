"""Ray Serve app: the batch job's engine behind an OpenAI-compatible HTTP API, continuously batched.

    serve run deploy/serve_config.yaml          # or: serve run deploy.app:build_app  (embedded defaults)

Routes: ``POST /v1/completions``, ``POST /v1/chat/completions`` (both with ``stream: true`` as Server-Sent Events
ending in ``data: [DONE]``), ``GET /v1/models``, ``GET /health``; Serve calls :meth:`SpecKVServer.check_health`.

How a request flows: the handler validates the body (bad input → 4xx with an OpenAI-style error), turns it into a
:class:`~speckv.config.GenerationRequest` and hands it to the replica's one :class:`~speckv.loop.EngineLoop`, which
runs the engine in a background thread and admits it into the running batch at the next step (iteration-level
scheduling: no request waits for another to finish). Each SSE chunk carries the text one engine step committed, as
it is committed; a client that disconnects aborts its request and frees its slot at the next step.

Overload: beyond ``max_pending`` requests in flight in the loop the replica answers 429 with an OpenAI error body;
beyond Serve's ``max_ongoing_requests`` + ``max_queued_requests`` Serve answers 503 at once.

Configuration, validated by pydantic: the engine (target, draft, policy, batch size) and the served model name are
app arguments (:class:`AppArgs`); ``max_pending`` and the telemetry directory are the deployment's ``user_config``
(:class:`ServingConfig`) and can be changed live with ``serve deploy``.
"""

# No `from __future__ import annotations` here: FastAPI reads the route signatures in the replica, where the
# class arrives serialized and string annotations could not be resolved against this module.
import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve

from deploy import protocol
from deploy.protocol import ChatCompletionRequest, CompletionRequest, OpenAIError
from speckv.config import EngineConfig, GenerationRequest, SamplingParams
from speckv.io import explain
from speckv.sequence import Delta, GenerationResult

logger = logging.getLogger("speckv.serve")


class ServingConfig(BaseModel):
    """The deployment's ``user_config``, changeable without a restart."""

    model_config = ConfigDict(extra="forbid")

    max_pending: int = Field(128, ge=1, le=100_000, description="requests in flight in the engine loop (running + "
                             "waiting to join the batch); more get 429")
    telemetry_dir: str | None = Field(None, description="write outputs/ and telemetry/ Parquet parts here")
    telemetry_every: int = Field(32, ge=1, description="finished requests per telemetry part")


class AppArgs(BaseModel):
    """Application arguments (``args:`` in the Serve config YAML)."""

    model_config = ConfigDict(extra="forbid")

    model_name: str = Field("speckv", min_length=1, description="the model id clients send and /v1/models lists")
    engine: EngineConfig = Field(default_factory=EngineConfig, description="target, draft, policy, batch size")
    default_max_tokens: int = Field(256, ge=1, description="chat: new tokens when the request gives no max_tokens")
    completion_default_max_tokens: int = Field(16, ge=1, description="completions: OpenAI's default of 16")
    serving: ServingConfig = Field(default_factory=ServingConfig,
                                   description="initial user_config; a user_config in the YAML replaces it")
    num_cpus: float = Field(1.0, gt=0.0, description="CPUs reserved per replica (fractional is fine)")
    gpu: bool | None = Field(None, description="reserve one GPU per replica; None: when the cluster has GPUs. "
                                               "ray_actor_options in the YAML override this")


class ServeMetrics:
    """Prometheus metrics through Ray's metrics API (exported as ``ray_speckv_*`` by each node's metrics agent).

    Latency as vLLM names it (time to first token, time per output token), load (running and waiting requests),
    and the spec-decoding figures with the conventions of :mod:`speckv.telemetry` (acceptance length counts the bonus
    token). Descriptions must be ASCII (Ray's metric registry encodes them so)."""

    def __init__(self, model: str) -> None:
        from ray.util.metrics import Counter, Gauge, Histogram

        keys = ("model",)
        self.tags = {"model": model}
        latency = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]
        self.requests = Counter("speckv_requests", "requests finished, by finish reason", tag_keys=("model", "reason"))
        self.prompt_tokens = Counter("speckv_prompt_tokens", "prompt tokens processed", tag_keys=keys)
        self.generated_tokens = Counter("speckv_generated_tokens", "tokens generated", tag_keys=keys)
        self.draft_tokens = Counter("speckv_draft_tokens", "candidate tokens verified (sum of gamma)", tag_keys=keys)
        self.accepted_tokens = Counter("speckv_accepted_tokens", "candidate tokens the target accepted", tag_keys=keys)
        self.acceptance_rate = Gauge("speckv_acceptance_rate", "accepted / drafted of the last finished request",
                                     tag_keys=keys)
        self.acceptance_length = Histogram("speckv_acceptance_length", "tokens emitted per verify step (bonus incl.), "
                                           "per request", boundaries=[1.25 + n / 4 for n in range(24)], tag_keys=keys)
        self.ttft = Histogram("speckv_time_to_first_token_seconds", "arrival to first token", boundaries=latency,
                              tag_keys=keys)
        self.tpot = Histogram("speckv_time_per_output_token_seconds", "after the first token, per output token",
                              boundaries=[0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64],
                              tag_keys=keys)
        self.running = Gauge("speckv_num_requests_running", "requests in the engine's running batch", tag_keys=keys)
        self.waiting = Gauge("speckv_num_requests_waiting", "requests waiting to join the batch", tag_keys=keys)

    def finished(self, result: GenerationResult, arrival: float, first: float | None) -> None:
        tags, now = self.tags, time.perf_counter()
        self.requests.inc(1, {**tags, "reason": result.finish_reason})
        if result.status != "ok":
            return
        self.prompt_tokens.inc(max(result.num_prompt_tokens, 1), tags)
        if result.token_ids:
            self.generated_tokens.inc(len(result.token_ids), tags)
        if first is not None:
            self.ttft.observe(first - arrival, tags)
            if len(result.token_ids) > 1:
                self.tpot.observe((now - first) / (len(result.token_ids) - 1), tags)
        s = result.summary
        if s.get("num_draft_tokens"):  # Counter.inc rejects 0
            self.draft_tokens.inc(s["num_draft_tokens"], tags)
            self.acceptance_rate.set(s["draft_acceptance_rate"], tags)
        if s.get("num_accepted_tokens"):
            self.accepted_tokens.inc(s["num_accepted_tokens"], tags)
        if s.get("mean_acceptance_length"):
            self.acceptance_length.observe(s["mean_acceptance_length"], tags)

    def load(self, running: int, waiting: int) -> None:
        self.running.set(running, self.tags)
        self.waiting.set(waiting, self.tags)


# Helpers are defined before the deployment class: @serve.deployment serializes the class when it is
# decorated, so names it uses that are defined later in this module would be missing in the replica.

def _sse(chunks: AsyncIterator[dict]) -> StreamingResponse:
    async def events() -> AsyncIterator[str]:
        async for chunk in chunks:
            yield f"data: {json.dumps(chunk)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


async def _merged(streams: list[AsyncIterator[Delta]]) -> AsyncIterator[tuple[int, Delta]]:
    """(index, delta) from several streams as they come (a completions request with a list of prompts)."""
    if len(streams) == 1:
        async for delta in streams[0]:
            yield 0, delta
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, stream: AsyncIterator[Delta]) -> None:
        async for delta in stream:
            await queue.put((i, delta))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        for _ in range(len(streams)):
            while True:
                i, delta = await queue.get()
                yield i, delta
                if delta.finished:
                    break
    finally:
        for t in tasks:
            t.cancel()


def _replica_id() -> str:
    """Serve's replica id, or 'local' when the class is built outside Serve (a test calling it directly)."""
    from ray.serve.exceptions import RayServeException

    try:
        return serve.get_replica_context().replica_id.unique_id
    except RayServeException:
        return "local"


api = FastAPI(title="speckv", description="OpenAI-compatible speculative decoding server")


@api.exception_handler(OpenAIError)
async def _openai_error(_: Request, exc: OpenAIError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


@api.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    """Broken JSON and out-of-range fields: 400 with OpenAI's error shape (FastAPI's default is a 422)."""
    errors = exc.errors()
    param = ".".join(str(p) for p in errors[0]["loc"] if p != "body") if errors else None
    return JSONResponse(OpenAIError(400, explain(exc) or "invalid request", param=param or None).body(), status_code=400)


@serve.deployment(
    max_ongoing_requests=256,
    max_queued_requests=256,
    health_check_period_s=10,
    health_check_timeout_s=30,
    graceful_shutdown_timeout_s=30,
)
@serve.ingress(api)
class SpecKVServer:
    """One replica = one :class:`~speckv.loop.EngineLoop` over one :class:`~speckv.engine.SpecEngine`."""

    def __init__(self, args: dict | AppArgs) -> None:
        from speckv.engine import SpecEngine
        from speckv.loop import EngineLoop

        self.args = AppArgs.model_validate(args)
        self.model = self.args.model_name
        self.serving = self.args.serving
        engine = SpecEngine(self.args.engine, actor_id=f"serve-{_replica_id()}",
                            record_steps=self.serving.telemetry_dir is not None)
        self.loop = EngineLoop(engine, max_pending=self.serving.max_pending)
        self.engine, self.policy = engine, self.args.engine.policy.name
        self.metrics = ServeMetrics(self.model)
        self._finished: list[GenerationResult] = []  # waiting for the next telemetry part
        self._parts = 0

    # ------------------------------------------------------------------ Serve hooks

    def reconfigure(self, user_config: dict) -> None:
        """Called by Serve with the deployment's ``user_config`` (at start and on every ``serve deploy``)."""
        self.serving = ServingConfig.model_validate(user_config or {})
        self.loop.max_pending = self.serving.max_pending
        self.engine.record_steps = self.serving.telemetry_dir is not None

    def check_health(self) -> None:
        """Serve restarts the replica when this raises: after an engine fault, not because it is busy."""
        if self.loop.fault is not None:
            raise RuntimeError(f"engine fault: {self.loop.fault}")

    # ------------------------------------------------------------------ the engine loop

    async def _stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        """The request's deltas; bad input and overload become OpenAI errors before the first one."""
        from speckv.engine import RequestError
        from speckv.loop import Overloaded

        arrival, first = time.perf_counter(), None
        try:
            stream = self.loop.stream(request)
            delta = await stream.__anext__()  # admission errors surface here, before any byte is sent
        except RequestError as exc:
            code = "context_length_exceeded" if "context" in str(exc) else None
            raise OpenAIError(400, str(exc), param="prompt", code=code) from exc
        except Overloaded as exc:
            raise OpenAIError(429, f"server overloaded: {exc}; retry later", type_="rate_limit_error") from exc
        except RuntimeError as exc:  # the engine loop has a fault
            raise OpenAIError(503, str(exc), type_="server_error") from exc
        try:
            while True:
                if first is None and delta.token_ids:
                    first = time.perf_counter()
                self.metrics.load(self.loop.running, self.loop.waiting)
                if delta.finished:  # recorded before the last yield: a consumer may stop reading right after it
                    self._done(delta.result, arrival, first)
                    yield delta
                    return
                yield delta
                delta = await stream.__anext__()
        finally:
            await stream.aclose()

    def _done(self, result: GenerationResult, arrival: float, first: float | None) -> None:
        self.metrics.finished(result, arrival, first)
        if self.serving.telemetry_dir:
            self._finished.append(result)
            if len(self._finished) >= self.serving.telemetry_every:
                self.flush_telemetry()

    def flush_telemetry(self) -> None:
        if not self._finished or not self.serving.telemetry_dir:
            return
        from speckv.io import write_parts
        from speckv.report import machine_record

        self._parts += 1
        write_parts(self._finished, self.serving.telemetry_dir, name=f"{self.engine.actor_id}-{self._parts:06d}",
                    machine=machine_record(self.engine))
        self._finished = []

    async def _complete(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        async def one(request: GenerationRequest) -> GenerationResult:
            async for delta in self._stream(request):
                if delta.finished:
                    return delta.result
            raise OpenAIError(500, "the request ended without a result", type_="server_error")

        results = await asyncio.gather(*(one(r) for r in requests))
        for r in results:
            if r.status != "ok":
                raise OpenAIError(500, r.error or "generation failed", type_="server_error")
        return list(results)

    # ------------------------------------------------------------------ routes

    @api.get("/v1/models")
    async def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.model, "object": "model", "created": 0, "owned_by": "speckv",
                                            "max_model_len": self.engine.max_context}]}

    @api.get("/health")
    async def health(self) -> dict:
        if self.loop.fault is not None:
            raise OpenAIError(503, f"engine fault: {self.loop.fault}", type_="server_error")
        return {"status": "ok", "running": self.loop.running, "waiting": self.loop.waiting}

    @api.post("/v1/completions")
    async def completions(self, body: CompletionRequest) -> Any:
        self._check_model(body.model)
        request_id = f"cmpl-{uuid.uuid4().hex}"
        sampling = self._sampling(body, body.max_tokens or self.args.completion_default_max_tokens)
        requests = [GenerationRequest(id=f"{request_id}-{i}", prompt=p, raw_prompt=True, sampling=sampling)
                    for i, p in enumerate(body.prompts)]
        if not body.stream:
            return protocol.completion_body(request_id, self.model, await self._complete(requests), self.policy)
        streams = [self._stream(r) for r in requests]
        firsts = [await s.__anext__() for s in streams]  # errors answer as HTTP errors, not mid-stream
        return _sse(self._completion_chunks(request_id, body, streams, firsts))

    @api.post("/v1/chat/completions")
    async def chat_completions(self, body: ChatCompletionRequest) -> Any:
        self._check_model(body.model)
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        sampling = self._sampling(body, body.max_completion_tokens or body.max_tokens or self.args.default_max_tokens)
        try:
            request = GenerationRequest(id=request_id, sampling=sampling,
                                        messages=[{"role": m.role, "content": m.text} for m in body.messages])
        except ValidationError as exc:
            raise OpenAIError(400, explain(exc), param="messages") from exc
        if not body.stream:
            (result,) = await self._complete([request])
            return protocol.chat_body(request_id, self.model, result, self.policy)
        stream = self._stream(request)
        first = await stream.__anext__()
        return _sse(self._chat_chunks(request_id, body, stream, first))

    # ------------------------------------------------------------------ helpers

    def _check_model(self, model: str) -> None:
        if model != self.model:
            raise OpenAIError(404, f"The model '{model}' does not exist; this server serves '{self.model}'",
                              param="model", code="model_not_found")

    @staticmethod
    def _sampling(body: protocol._SamplingFields, max_tokens: int) -> SamplingParams:
        try:
            return SamplingParams(max_new_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p,
                                  top_k=max(body.top_k, 0), seed=body.seed, stop=body.stop)
        except ValidationError as exc:  # bounds the engine adds to OpenAI's (e.g. max_tokens <= 8192)
            raise OpenAIError(400, explain(exc)) from exc

    async def _completion_chunks(self, request_id: str, body: CompletionRequest, streams, firsts) -> AsyncIterator[dict]:
        created, results = int(time.time()), [None] * len(streams)

        async def rest(first: Delta, stream):
            yield first
            if not first.finished:
                async for delta in stream:
                    yield delta

        async for i, delta in _merged([rest(f, s) for f, s in zip(firsts, streams)]):
            if delta.text or delta.finished:
                yield protocol.completion_chunk(request_id, self.model, created, i, delta.text, delta.finish_reason)
            if delta.finished:
                results[i] = delta.result
        yield protocol.final_chunk("text_completion", request_id, self.model, created, body, results, self.policy)

    async def _chat_chunks(self, request_id: str, body: ChatCompletionRequest, stream, first: Delta) -> AsyncIterator[dict]:
        created = int(time.time())
        yield protocol.chat_chunk(request_id, self.model, created, {"role": "assistant", "content": ""}, None)
        delta = first
        while True:
            if delta.text:
                yield protocol.chat_chunk(request_id, self.model, created, {"content": delta.text}, None)
            if delta.finished:
                yield protocol.chat_chunk(request_id, self.model, created, {}, delta.finish_reason)
                yield protocol.final_chunk("chat.completion.chunk", request_id, self.model, created, body,
                                           [delta.result], self.policy)
                return
            delta = await stream.__anext__()


def _cluster_has_gpus() -> bool:
    import ray

    return ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0


def build_app(args: dict[str, Any] | None = None) -> serve.Application:
    """Serve's application builder (``import_path: deploy.app:build_app``); ``args`` are validated as AppArgs."""
    parsed = AppArgs.model_validate(args or {})
    gpu = _cluster_has_gpus() if parsed.gpu is None else parsed.gpu
    options: dict[str, Any] = {
        "user_config": parsed.serving.model_dump(),
        "ray_actor_options": {"num_cpus": parsed.num_cpus, **({"num_gpus": 1} if gpu else {})},
        "max_ongoing_requests": max(256, 2 * parsed.serving.max_pending),  # the loop's own bound answers first
    }
    return SpecKVServer.options(**options).bind(parsed.model_dump(mode="json"))
