"""Ray Serve app: the batch job's engine behind an OpenAI-compatible HTTP API, with dynamic batching.

    serve run deploy/serve_config.yaml          # or: serve run deploy.app:build_app  (embedded defaults)

Routes: ``POST /v1/completions``, ``POST /v1/chat/completions`` (both with ``stream: true`` as Server-Sent Events
ending in ``data: [DONE]``), ``GET /v1/models``, ``GET /health``; Serve calls :meth:`SpecKVServer.check_health`.

How a request flows: the handler validates the body (bad input → 4xx with an OpenAI-style error), turns it into a
:class:`~speckv.config.GenerationRequest`, and awaits :meth:`SpecKVServer.generate_batch`. ``@serve.batch`` gathers
concurrent requests (up to ``max_batch_size``, waiting at most ``batch_wait_timeout_s`` for the batch to fill) into
one ``SpecEngine.generate`` call, the same call the batch job makes, where every sequence keeps its own γ. The
engine runs in a worker thread so the replica's event loop keeps accepting requests and answering health checks;
only one batch runs at a time (the engine is not thread-safe), and the next one gathers meanwhile.

Streaming is honest about what the engine offers today: it has no per-token callback, so a streamed response is
sent after the request's generation finishes, one SSE chunk per generated token. Time-to-first-token therefore
equals total latency; the wire format is the real one, so clients need no change when a token hook lands.

Overload: ``max_ongoing_requests`` bounds the requests a replica holds (the batch plus the next one gathering);
``max_queued_requests`` bounds those waiting in front of it; beyond that Serve answers 503 at once.

Configuration, validated by pydantic: the engine (target, draft, policy) and the served model name are app
arguments (:class:`AppArgs`); batch size, batch wait and the telemetry directory are the deployment's
``user_config`` (:class:`BatchingConfig`) and can be changed live with ``serve deploy``.
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
from speckv.engine import GenerationResult

logger = logging.getLogger("speckv.serve")


class BatchingConfig(BaseModel):
    """The deployment's ``user_config``: dynamic batching and telemetry, changeable without a restart."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(8, ge=1, le=256, description="requests gathered into one engine.generate call")
    batch_wait_timeout_s: float = Field(0.02, ge=0.0, le=10.0,
                                        description="how long the first request waits for others to join")
    telemetry_dir: str | None = Field(None, description="write outputs/ and telemetry/ Parquet parts here")


class AppArgs(BaseModel):
    """Application arguments (``args:`` in the Serve config YAML)."""

    model_config = ConfigDict(extra="forbid")

    model_name: str = Field("speckv", min_length=1, description="the model id clients send and /v1/models lists")
    engine: EngineConfig = Field(default_factory=EngineConfig, description="target, draft, policy, limits")
    default_max_tokens: int = Field(256, ge=1, description="chat: new tokens when the request gives no max_tokens")
    completion_default_max_tokens: int = Field(16, ge=1, description="completions: OpenAI's default of 16")
    batching: BatchingConfig = Field(default_factory=BatchingConfig,
                                     description="initial user_config; a user_config in the YAML replaces it")
    num_cpus: float = Field(1.0, gt=0.0, description="CPUs reserved per replica (fractional is fine)")
    gpu: bool | None = Field(None, description="reserve one GPU per replica; None: when the cluster has GPUs. "
                                               "ray_actor_options in the YAML override this")


class ServeMetrics:
    """Prometheus metrics through Ray's metrics API (exported as ``ray_speckv_*`` by each node's metrics agent).

    Conventions as in :mod:`speckv.telemetry`: γ is ``num_draft_tokens`` of one verify step of one sequence;
    acceptance length counts the bonus token. Descriptions must be ASCII (Ray's metric registry encodes them so)."""

    def __init__(self, model: str) -> None:
        from ray.util.metrics import Counter, Gauge, Histogram

        keys = ("model",)
        self.tags = {"model": model}
        self.requests = Counter("speckv_requests", "requests finished, by status", tag_keys=("model", "status"))
        self.prompt_tokens = Counter("speckv_prompt_tokens", "prompt tokens processed", tag_keys=keys)
        self.generated_tokens = Counter("speckv_generated_tokens", "tokens generated", tag_keys=keys)
        self.draft_tokens = Counter("speckv_draft_tokens", "drafted tokens (sum of gamma)", tag_keys=keys)
        self.accepted_tokens = Counter("speckv_accepted_tokens", "drafted tokens the target accepted", tag_keys=keys)
        self.acceptance_rate = Gauge("speckv_acceptance_rate", "accepted / drafted over the last engine batch",
                                     tag_keys=keys)
        self.mean_gamma = Gauge("speckv_mean_gamma", "mean gamma per verify step over the last engine batch",
                                tag_keys=keys)
        self.gamma = Histogram("speckv_gamma", "gamma (drafted tokens) per sequence per verify step",
                               boundaries=[0.5 + g for g in range(16)], tag_keys=keys)
        self.acceptance_length = Histogram("speckv_acceptance_length", "tokens emitted per verify step (bonus incl.)",
                                           boundaries=[1.5 + n for n in range(16)], tag_keys=keys)
        self.batch_size = Histogram("speckv_batch_size", "requests per engine.generate call",
                                    boundaries=[1.5, 2.5, 4.5, 8.5, 16.5, 32.5, 64.5, 128.5], tag_keys=keys)
        self.batch_seconds = Histogram("speckv_batch_seconds", "wall time of one engine.generate call",
                                       boundaries=[0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64], tag_keys=keys)

    def record(self, results: list[GenerationResult], seconds: float) -> None:
        tags = self.tags
        self.batch_size.observe(len(results), tags)
        self.batch_seconds.observe(seconds, tags)
        drafted = accepted = steps = 0
        for r in results:
            self.requests.inc(1, {**tags, "status": r.status})
            if r.status != "ok":
                continue
            self.prompt_tokens.inc(r.num_prompt_tokens, tags)
            self.generated_tokens.inc(len(r.token_ids), tags)
            for step in r.steps:
                self.gamma.observe(step["num_draft_tokens"], tags)
                self.acceptance_length.observe(step["num_accepted_tokens"] + 1, tags)
            drafted += r.summary.get("num_draft_tokens") or 0
            accepted += r.summary.get("num_accepted_tokens") or 0
            steps += r.summary.get("num_spec_steps") or 0
        if drafted:  # Counter.inc rejects 0
            self.draft_tokens.inc(drafted, tags)
        if accepted:
            self.accepted_tokens.inc(accepted, tags)
        if drafted:
            self.acceptance_rate.set(accepted / drafted, tags)
        if steps:
            self.mean_gamma.set(drafted / steps, tags)


# Helpers are defined before the deployment class: @serve.deployment serializes the class when it is
# decorated, so names it uses that are defined later in this module would be missing in the replica.

def _sse(chunks: AsyncIterator[dict]) -> StreamingResponse:
    async def events() -> AsyncIterator[str]:
        async for chunk in chunks:
            yield f"data: {json.dumps(chunk)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


def _pydantic_message(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'request'}: {e['msg']}" for e in exc.errors())


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
    message = "; ".join(f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}" for e in errors)
    return JSONResponse(OpenAIError(400, message or "invalid request", param=param or None).body(), status_code=400)


@serve.deployment(
    max_ongoing_requests=64,
    max_queued_requests=256,
    health_check_period_s=10,
    health_check_timeout_s=30,
    graceful_shutdown_timeout_s=30,
)
@serve.ingress(api)
class SpecKVServer:
    """One replica = one :class:`~speckv.engine.SpecEngine` (loaded once, in ``__init__``)."""

    def __init__(self, args: dict | AppArgs) -> None:
        from speckv.engine import SpecEngine

        self.args = AppArgs.model_validate(args)
        self.model = self.args.model_name
        replica = _replica_id()
        self.engine = SpecEngine(self.args.engine, actor_id=f"serve-{replica}")
        self.policy = self.args.engine.policy.name
        self.metrics = ServeMetrics(self.model)
        self.batching = self.args.batching
        self._apply_batching(self.batching)
        self._fault: str | None = None  # set when engine.generate raised: the replica is unhealthy
        self._num_batches = 0

    # ------------------------------------------------------------------ Serve hooks

    def reconfigure(self, user_config: dict) -> None:
        """Called by Serve with the deployment's ``user_config`` (at start and on every ``serve deploy``)."""
        self.batching = BatchingConfig.model_validate(user_config or {})
        self._apply_batching(self.batching)

    def check_health(self) -> None:
        """Serve restarts the replica when this raises: after an engine fault, not because it is busy."""
        if self._fault is not None:
            raise RuntimeError(f"engine fault: {self._fault}")

    def _apply_batching(self, cfg: BatchingConfig) -> None:
        if cfg.max_batch_size > self.engine.config.max_batch_size:
            logger.warning("user_config.max_batch_size %d > engine.max_batch_size %d: each gathered batch is decoded "
                           "in several engine batches, one after another", cfg.max_batch_size,
                           self.engine.config.max_batch_size)
        self.generate_batch.set_max_batch_size(cfg.max_batch_size)
        self.generate_batch.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)

    # ------------------------------------------------------------------ batching

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)
    async def generate_batch(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """Concurrent requests, gathered by ``@serve.batch``, in one batched engine call."""
        return await asyncio.to_thread(self._run_engine, requests)

    def _run_engine(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        start = time.perf_counter()
        try:
            results = self.engine.generate(requests)
        except Exception as exc:  # bad input never raises (it yields status=error); this is an engine fault
            self._fault = f"{type(exc).__name__}: {exc}"
            logger.exception("engine.generate failed on a batch of %d", len(requests))
            raise
        self.metrics.record(results, time.perf_counter() - start)
        if self.batching.telemetry_dir:
            from speckv.io import write_parquet

            self._num_batches += 1
            write_parquet([r.output_row() for r in results], [s for r in results for s in r.steps],
                          self.batching.telemetry_dir, name=f"{self.engine.actor_id}-{self._num_batches:06d}")
        return results

    async def _generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """Each request joins the shared batch queue on its own; a prompt list is several entries."""
        results = await asyncio.gather(*(self.generate_batch(r) for r in requests))
        for r in results:
            if r.status != "ok":  # the engine's per-request errors are input errors (e.g. prompt too long)
                code = "context_length_exceeded" if "context" in (r.error or "") else None
                raise OpenAIError(400, r.error or "request failed", param="prompt", code=code)
        return list(results)

    # ------------------------------------------------------------------ routes

    @api.get("/v1/models")
    async def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.model, "object": "model", "created": 0, "owned_by": "speckv",
                                            "max_model_len": self.engine.max_context}]}

    @api.get("/health")
    async def health(self) -> dict:
        if self._fault is not None:
            raise OpenAIError(503, f"engine fault: {self._fault}", type_="server_error")
        return {"status": "ok"}

    @api.post("/v1/completions")
    async def completions(self, body: CompletionRequest) -> Any:
        self._check_model(body.model)
        request_id = f"cmpl-{uuid.uuid4().hex}"
        sampling = self._sampling(body, body.max_tokens or self.args.completion_default_max_tokens)
        requests = [GenerationRequest(id=f"{request_id}-{i}", prompt=p, raw_prompt=True, sampling=sampling)
                    for i, p in enumerate(body.prompts)]
        results = await self._generate(requests)
        if not body.stream:
            return protocol.completion_body(request_id, self.model, results, self.policy)
        return _sse(self._completion_stream(request_id, body, results))

    @api.post("/v1/chat/completions")
    async def chat_completions(self, body: ChatCompletionRequest) -> Any:
        self._check_model(body.model)
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        sampling = self._sampling(body, body.max_completion_tokens or body.max_tokens or self.args.default_max_tokens)
        try:
            request = GenerationRequest(id=request_id, sampling=sampling,
                                        messages=[{"role": m.role, "content": m.text} for m in body.messages])
        except ValidationError as exc:
            raise OpenAIError(400, _pydantic_message(exc), param="messages") from exc
        (result,) = await self._generate([request])
        if not body.stream:
            return protocol.chat_body(request_id, self.model, result, self.policy)
        return _sse(self._chat_stream(request_id, body, result))

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
            raise OpenAIError(400, _pydantic_message(exc)) from exc

    def _completion_stream(self, request_id: str, body: CompletionRequest,
                           results: list[GenerationResult]) -> AsyncIterator[dict]:
        created = int(time.time())

        async def chunks() -> AsyncIterator[dict]:
            for i, r in enumerate(results):
                for piece in protocol.text_deltas(self.engine.tokenizer, r):
                    yield protocol.completion_chunk(request_id, self.model, created, i, piece, None)
                yield protocol.completion_chunk(request_id, self.model, created, i, "", r.finish_reason)
            yield self._final_chunk("text_completion", request_id, created, body, results)

        return chunks()

    def _chat_stream(self, request_id: str, body: ChatCompletionRequest, result: GenerationResult) -> AsyncIterator[dict]:
        created = int(time.time())

        async def chunks() -> AsyncIterator[dict]:
            yield protocol.chat_chunk(request_id, self.model, created, {"role": "assistant", "content": ""}, None)
            for piece in protocol.text_deltas(self.engine.tokenizer, result):
                yield protocol.chat_chunk(request_id, self.model, created, {"content": piece}, None)
            yield protocol.chat_chunk(request_id, self.model, created, {}, result.finish_reason)
            yield self._final_chunk("chat.completion.chunk", request_id, created, body, [result])

        return chunks()

    def _final_chunk(self, obj: str, request_id: str, created: int, body: protocol._SamplingFields,
                     results: list[GenerationResult]) -> dict:
        """OpenAI's usage chunk (empty choices), sent always: ``usage`` is null unless ``include_usage``;
        the speculative-decoding figures ride on it."""
        include = body.stream_options is not None and body.stream_options.include_usage
        return {"id": request_id, "object": obj, "created": created, "model": self.model, "choices": [],
                "usage": protocol.usage(results) if include else None,
                "metrics": protocol.spec_metrics(results, self.policy)}


def _cluster_has_gpus() -> bool:
    import ray

    return ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0


def build_app(args: dict[str, Any] | None = None) -> serve.Application:
    """Serve's application builder (``import_path: deploy.app:build_app``); ``args`` are validated as AppArgs."""
    parsed = AppArgs.model_validate(args or {})
    gpu = _cluster_has_gpus() if parsed.gpu is None else parsed.gpu
    options: dict[str, Any] = {
        "user_config": parsed.batching.model_dump(),
        "ray_actor_options": {"num_cpus": parsed.num_cpus, **({"num_gpus": 1} if gpu else {})},
    }
    # the replica may batch up to max_batch_size requests and gather the next batch meanwhile
    options["max_ongoing_requests"] = max(64, 2 * parsed.batching.max_batch_size)
    return SpecKVServer.options(**options).bind(parsed.model_dump(mode="json"))
