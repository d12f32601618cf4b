"""OpenAI wire format for the Serve app: request models (validated), response/chunk builders, errors.

Only what the app serves is modelled. Fields the OpenAI API has but this engine cannot honour (``n > 1``,
``logprobs``, ``echo``, ``best_of > 1``) are rejected with a 400 rather than silently ignored; unknown extra
fields are ignored, as OpenAI-compatible servers usually do.

Extension fields, vLLM-style: requests accept ``top_k`` (0 or -1 disables it); every response carries
``metrics.speculative_decoding`` with the request's own draft figures (see :func:`spec_metrics`).
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from speckv.sequence import GenerationResult
from speckv.telemetry import RequestStats

#: Chat message roles the engine's chat template understands.
Role = Literal["system", "user", "assistant"]


class OpenAIError(Exception):
    """An error returned to the client as ``{"error": {...}}`` with an HTTP status."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class StreamOptions(BaseModel):
    include_usage: bool = False


class _SamplingFields(BaseModel):
    """Fields shared by completions and chat completions. Bounds follow the OpenAI API reference."""

    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(None, ge=1, description="new tokens to generate at most")
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="0 = greedy (OpenAI's default is 1)")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=-1, description="vLLM extension; 0 or -1 disables it")
    seed: int | None = Field(None, ge=0)
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=1, description="only one choice per prompt is supported")
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: Any = None
    user: str | None = None

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value: Any) -> Any:
        if value not in (None, False):
            raise ValueError("logprobs are not supported by this server")
        return value

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> list[str]:
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop takes at most 4 non-empty strings")
        return stops


class CompletionRequest(_SamplingFields):
    """``POST /v1/completions``. The prompt is fed as-is (no chat template); a list gives one choice per prompt."""

    prompt: str | list[str]
    echo: bool = False
    best_of: int = Field(1, ge=1, le=1)
    suffix: None = None

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, value: str | list[str]) -> str | list[str]:
        prompts = [value] if isinstance(value, str) else value
        if not prompts or any(not p.strip() for p in prompts):
            raise ValueError("prompt must be a non-empty string or a non-empty list of non-empty strings")
        return value

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, value: bool) -> bool:
        if value:
            raise ValueError("echo is not supported by this server")
        return value

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Role
    content: str | list[TextPart]

    @property
    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatCompletionRequest(_SamplingFields):
    """``POST /v1/chat/completions``. Messages go through the target's chat template."""

    messages: list[ChatMessageIn] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, description="newer name of max_tokens; wins when set")


# ---------------------------------------------------------------------------------------------- responses


def usage(results: list[GenerationResult]) -> dict:
    prompt = sum(r.num_prompt_tokens for r in results)
    completion = sum(len(r.token_ids) for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def spec_metrics(results: list[GenerationResult], policy: str) -> dict:
    """The request's speculative-decoding figures: the SUMMARY_FIELDS of speckv.telemetry (vLLM's names and
    conventions: ``mean_acceptance_length`` = tokens emitted per verify step, bonus token included) plus the
    policy and the mean number of candidates verified per step."""
    stats = RequestStats.of([r.summary for r in results])
    return {"speculative_decoding": {"policy": policy, **stats.summary(),
                                     "mean_gamma": stats.drafted / stats.steps if stats.steps else None}}


def completion_body(request_id: str, model: str, results: list[GenerationResult], policy: str) -> dict:
    return {
        "id": request_id, "object": "text_completion", "created": int(time.time()), "model": model,
        "choices": [{"index": i, "text": r.text, "finish_reason": r.finish_reason, "logprobs": None}
                    for i, r in enumerate(results)],
        "usage": usage(results),
        "metrics": spec_metrics(results, policy),
    }


def chat_body(request_id: str, model: str, result: GenerationResult, policy: str) -> dict:
    return {
        "id": request_id, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                     "finish_reason": result.finish_reason, "logprobs": None}],
        "usage": usage([result]),
        "metrics": spec_metrics([result], policy),
    }


def completion_chunk(request_id: str, model: str, created: int, index: int, text: str,
                     finish_reason: str | None) -> dict:
    return {"id": request_id, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": index, "text": text, "finish_reason": finish_reason, "logprobs": None}]}


def chat_chunk(request_id: str, model: str, created: int, delta: dict, finish_reason: str | None) -> dict:
    return {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]}


def final_chunk(obj: str, request_id: str, model: str, created: int, body: _SamplingFields,
                results: list[GenerationResult], policy: str) -> dict:
    """OpenAI's usage chunk (empty choices), sent always: ``usage`` is null unless ``include_usage``; the
    speculative-decoding figures ride on it."""
    include = body.stream_options is not None and body.stream_options.include_usage
    return {"id": request_id, "object": obj, "created": created, "model": model, "choices": [],
            "usage": usage(results) if include else None, "metrics": spec_metrics(results, policy)}
