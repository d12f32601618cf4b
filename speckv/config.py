"""Typed configuration, one pydantic model per concern.

``ModelSpec``      where a model comes from and how it is stored (dtype, bitsandbytes quantization, device)
``DraftSpec``      which drafter proposes tokens and from what weights
``PolicySpec``     which γ-policy chooses the speculation length, and its knobs
``SamplingParams`` per-request decoding parameters
``EngineConfig``   the engine as a whole (target + draft + policy + limits)
``GenerationRequest`` one prompt (text or chat messages) with its sampling parameters
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Dtype = Literal["auto", "fp32", "bf16", "fp16"]
Quantization = Literal["none", "int8", "nf4"]
Device = Literal["auto", "cpu", "cuda"]

#: The most candidate nodes any policy may verify per row and step.
GAMMA_LIMIT = 32

#: Name used for the embedded default target and draft (resolved in :mod:`speckv.models`).
EMBEDDED = "embedded"

POLICY_NAMES = ("ar", "fixed", "heuristic", "confidence", "entropy", "ema", "learned")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_Strict):
    """A causal LM: Hugging Face hub id, local directory, GGUF file, or ``embedded``."""

    source: str = Field(EMBEDDED, description="hub id, local dir, path to a .gguf file, or 'embedded'")
    dtype: Dtype = Field("auto", description="compute dtype of the weights that are not quantized; 'auto': the "
                         "fastest here, measured once per machine (speckv.hardware)")
    quantization: Quantization = Field("none", description="bitsandbytes weight quantization")
    device: Device = Field("auto", description="'auto' picks cuda when available, else cpu")
    gguf_file: str | None = Field(None, description="GGUF file name inside `source` when source is a dir/hub id")

    @property
    def compression(self) -> str:
        """Compression level as the policies see it: the dtype, or the quantization when there is one."""
        if self.dtype == "auto" and self.quantization == "none":
            raise ValueError("dtype 'auto' is resolved when the model loads; ask the loaded engine's spec")
        return self.dtype if self.quantization == "none" else self.quantization


class DraftSpec(_Strict):
    """The drafters: a head over the target's features (``eagle``), an independent small LM (``lm``), or none but
    prompt lookup (``lookup``); ``lookup`` adds the free prompt-lookup branch to the head's candidates."""

    kind: Literal["lm", "eagle", "lookup"] = Field("eagle", description="drafter kind")
    source: str = Field(EMBEDDED, description="draft weights: hub id, local dir, GGUF, or 'embedded'")
    dtype: Dtype | None = Field(None, description="defaults to the target's dtype")
    int8_weights: bool | None = Field(None, description="on CPU, the EAGLE head reads int8 weights (its layer and its "
                                      "LM-head slice, per-row scales; verification is unchanged); None: in the "
                                      "forwards of as few rows as int8 is faster at here (drafting, not a prompt "
                                      "joining), measured once per machine")
    lookup: bool = Field(True, description="add prompt-lookup candidates (longest suffix match in the row's prompt "
                         "and output) to the head's; the policy decides how many to verify")
    lookup_max_ngram: int = Field(4, ge=1, le=16, description="lookup: longest suffix matched")
    lookup_min_ngram: int = Field(2, ge=1, le=16, description="lookup: shortest suffix matched")
    lookup_tokens: int = Field(8, ge=1, le=32, description="lookup: continuation length proposed")


class PolicySpec(_Strict):
    """How much speculation each row verifies, per step: γ drafted tokens of a chain, or a tree of γ nodes."""

    name: Literal["ar", "fixed", "heuristic", "confidence", "entropy", "ema", "learned"] = "learned"
    gamma: int = Field(4, ge=0, le=GAMMA_LIMIT, description="nodes per step for 'fixed' (a chain: γ); initial γ for "
                       "adaptive chains")
    gamma_max: int = Field(16, ge=1, le=GAMMA_LIMIT, description="most nodes a row may verify in a step (adaptive)")
    tree_topk: int | None = Field(None, ge=1, le=8, description="children per expanded node (1 = a chain); 'fixed' "
                                  "and 'learned'; default: a chain for 'fixed', 4 for 'learned', which also chooses "
                                  "how many nodes each draft depth expands (README, Benchmarks)")
    tree_depth: int | None = Field(None, ge=1, le=16, description="deepest draft level; default γ for "
                                   "'fixed', gamma_max for 'learned'")
    confidence_threshold: float = Field(0.4, gt=0.0, lt=1.0, description="'confidence': stop under this top-1 p")
    entropy_threshold: float = Field(2.0, gt=0.0, description="'entropy': stop above this draft entropy (nats)")
    ema_alpha: float = Field(0.5, gt=0.0, le=1.0, description="'ema': weight of the newest accepted length")
    path: str | None = Field(None, description="'learned': policy weights; default is the shipped one")

    @model_validator(mode="after")
    def _gamma_within_max(self) -> PolicySpec:
        if self.name == "fixed" and self.gamma < 1:
            raise ValueError("policy 'fixed' needs gamma >= 1 (use policy 'ar' for no speculation)")
        return self

    @property
    def max_gamma(self) -> int:
        """The most nodes this policy can ask for in a step."""
        if self.name == "ar":
            return 0
        if self.name == "fixed":
            return self.gamma
        return max(self.gamma_max, self.gamma)

    @property
    def topk(self) -> int:
        return self.tree_topk or (4 if self.name == "learned" else 1)

    @property
    def depth(self) -> int:
        """The deepest draft level this policy asks for."""
        return min(self.tree_depth or self.max_gamma, self.max_gamma)


class SamplingParams(_Strict):
    """Per-request decoding parameters. ``temperature == 0`` means greedy."""

    max_new_tokens: int = Field(128, ge=1, le=8192)
    temperature: float = Field(0.0, ge=0.0, le=10.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, description="0 disables top-k")
    seed: int | None = Field(None, ge=0)
    stop: list[str] = Field(default_factory=list, description="stop strings; the text is cut before them")
    ignore_eos: bool = False

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_as_list(cls, value: object) -> object:
        if value is None:
            return []
        if isinstance(value, str):
            return [value]
        return value

    @field_validator("stop")
    @classmethod
    def _stop_non_empty(cls, value: list[str]) -> list[str]:
        if any(not s for s in value):
            raise ValueError("stop strings must be non-empty")
        return value

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str


class GenerationRequest(_Strict):
    """One prompt. Exactly one of ``prompt`` (run through the chat template) or ``messages``."""

    id: str
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    task: str | None = Field(None, description="task tag copied into telemetry (code, math, ...)")
    sampling: SamplingParams = Field(default_factory=SamplingParams)
    raw_prompt: bool = Field(False, description="feed `prompt` as-is, without the chat template")

    @model_validator(mode="after")
    def _one_input(self) -> GenerationRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' or 'messages'")
        if self.prompt is not None and not self.prompt.strip():
            raise ValueError("'prompt' is empty")
        if self.messages is not None and not self.messages:
            raise ValueError("'messages' is empty")
        return self


class EngineConfig(_Strict):
    """Everything an engine needs; the CLI, the Ray job and the Serve app all build one of these."""

    target: ModelSpec = Field(default_factory=ModelSpec)
    draft: DraftSpec = Field(default_factory=DraftSpec)
    policy: PolicySpec = Field(default_factory=PolicySpec)
    max_batch_size: int = Field(8, ge=1, le=256, description="most requests decoded together (vLLM's max_num_seqs); "
                                "waiting requests join the running batch as others finish")
    max_prefill_tokens: int = Field(4096, ge=16, description="prompt tokens admitted per engine step at most (a "
                                    "request longer than this is admitted alone)")
    admit_wait: int = Field(4, ge=0, le=64, description="steps a free slot may stay empty, while more requests wait "
                            "than fit, for a running row due to finish within them: their successors then prefill in "
                            "one forward (a 1-row prefill costs most of a batch-8 step more than sharing one)")
    scheduling: Literal["continuous", "static"] = Field("continuous", description="continuous: requests join the "
                                                        "running batch every step; static: a batch runs to its last "
                                                        "row before the next starts (for comparison)")
    max_context: int | None = Field(None, ge=16, description="prompt + new tokens bound; default model's")
    threads: int | None = Field(None, ge=1, description="torch CPU threads; default leaves torch's choice")
