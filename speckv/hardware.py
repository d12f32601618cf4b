"""What this machine is good at, measured once and cached: the target's dtype and the draft head's int8 path.

Machines of the same size differ: on an AMD EPYC with AVX-512-bf16 a bf16 target verifies 9 tokens in 1.1× the
time of one; on one with AVX2 only, torch's bf16 matrix multiply runs at 1.2 GFLOPS against 69 in fp32 and a 5-token
verify costs 2.6× one. So ``dtype='auto'`` does not read CPU flags: it times the target's own forwards in each
candidate dtype — a prompt's prefill, plain decoding (1 token per row) and a 5-token verify, at batch 1 and at the
engine's batch size — and keeps the dtype that serves a request of a typical shape fastest (:func:`dtype_score`).
The choice, with the measured times, is cached per (model, CPU, threads, torch) under ``cache_dir()/hardware`` and
logged. On CUDA, ``auto`` is bf16 where the device supports it, else fp16.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import platform
from collections.abc import Callable
from pathlib import Path

import torch

log = logging.getLogger(__name__)

CANDIDATE_DTYPES = ("fp32", "bf16")
#: tokens a 5-token verify step commits with the shipped head (its measured mean acceptance length at γ=4): what a
#: speculative step is worth when the dtype choice weighs plain decoding against speculation
SPEC_TOKENS = 2.3
SHAPE_TOKENS = 5
#: the request :func:`dtype_score` prices: about the job's (its prompts average 121 tokens with the chat template,
#: and it asks for 64 new tokens). The prefill matters where a dtype is fast one token at a time and slow in bulk:
#: bf16 on an AVX2-only CPU decodes one token faster than fp32 and prefills 128 several times slower
PROMPT_TOKENS, NEW_TOKENS = 128, 64


def cpu_capability() -> str:
    """torch's ``CPU capability usage`` (AVX512, AVX2, ...) with the CPU's bf16 instructions, as figures quote it."""
    capability = torch.backends.cpu.get_cpu_capability()
    flags = _cpu_flags()
    bf16 = "avx512_bf16" in flags or "amx_bf16" in flags
    return f"{capability}{', native bf16' if bf16 else ', no native bf16'}" if flags else capability


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.split(":", 1)[-1].split())


def cpu_name() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        return next(ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def dtype_score(ms: dict[str, float], batch: int) -> float:
    """Generated tokens per ms for requests of PROMPT_TOKENS prompt and NEW_TOKENS new tokens, over batch 1 and
    ``batch`` (geometric mean): a request pays its prefill, then each new token its share of a batch step, at the
    better of a plain step and a verify step of SHAPE_TOKENS tokens that commits SPEC_TOKENS. ``ms`` holds
    '<batch>x<tokens>' forward times ('1x<PROMPT_TOKENS>': the prefill)."""
    prefill, rates = ms[f"1x{PROMPT_TOKENS}"], []
    for b in sorted({1, batch}):
        per_token = min(ms[f"{b}x1"] / b, ms[f"{b}x{SHAPE_TOKENS}"] / (b * SPEC_TOKENS))
        rates.append(NEW_TOKENS / (prefill + NEW_TOKENS * per_token))
    return math.exp(sum(math.log(r) for r in rates) / len(rates))


def cached_choice(name: str, key: dict, measure: Callable[[], tuple[str, dict]]) -> tuple[str, dict]:
    """``measure()`` -> (choice, figures), once per ``key`` on this machine; then from the cache."""
    from speckv.models import cache_dir

    key = {**key, "cpu": cpu_name(), "capability": torch.backends.cpu.get_cpu_capability(),
           "threads": torch.get_num_threads(), "torch": torch.__version__}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = cache_dir() / "hardware" / f"{name}-{digest}.json"
    if path.is_file():
        record = json.loads(path.read_text())
        return record["choice"], record["figures"]
    choice, figures = measure()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"choice": choice, "figures": figures, "key": key}, indent=2))
    tmp.replace(path)
    return choice, figures


@torch.inference_mode()
def time_target_forward(model, batch: int, tokens: int, context: int = 100, repeats: int = 5,
                        keep: int | None = None) -> float:
    """Median ms of one forward of ``batch`` rows × ``tokens`` new tokens over a ``context``-token KV cache, with
    logits for the last ``keep`` of them (default: all, as a verify step needs; a prefill needs one)."""
    from speckv.costs import median_ms
    from speckv.kvcache import RaggedCache

    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(100, model.config.vocab_size, (batch, context), generator=gen).to(device)
    cache = RaggedCache(batch, device)
    model(**cache.model_inputs(prompt, torch.ones_like(prompt, dtype=torch.bool)), logits_to_keep=1)
    ids = torch.randint(100, model.config.vocab_size, (batch, tokens), generator=gen).to(device)
    drop = torch.zeros(batch, tokens, dtype=torch.bool, device=device)

    def forward() -> None:
        model(**cache.model_inputs(ids, torch.ones_like(ids, dtype=torch.bool)), logits_to_keep=keep or tokens)
        cache.keep_last(drop)
        cache.trim()

    return median_ms(forward, repeats, lambda: None)


def choose_dtype(spec, batch: int, load: Callable[[str], torch.nn.Module]) -> tuple[str, dict]:
    """The target's compute dtype for ``spec`` (dtype 'auto') on this machine: (choice, measured figures)."""
    from speckv.models import resolve_device

    device = resolve_device(spec.device)
    if device.type == "cuda":
        return ("bf16" if torch.cuda.is_bf16_supported() else "fp16"), {}

    def measure() -> tuple[str, dict]:
        shapes = sorted({(b, t) for b in (1, batch) for t in (1, SHAPE_TOKENS)})
        figures = {}
        for dtype in CANDIDATE_DTYPES:
            model = load(dtype)
            figures[dtype] = {f"{b}x{t}": time_target_forward(model, b, t) for b, t in shapes}
            figures[dtype][f"1x{PROMPT_TOKENS}"] = time_target_forward(model, 1, PROMPT_TOKENS, repeats=3, keep=1)
            del model
        scores = {d: dtype_score(ms, batch) for d, ms in figures.items()}
        choice = max(scores, key=scores.get)
        log.warning("dtype auto: %s on this machine (CPU capability usage: %s; forward ms %s)", choice,
                    cpu_capability(), json.dumps(figures))
        return choice, {"ms": figures, "score": scores}

    key = {"target": spec.model_dump(exclude={"dtype"}), "batch": batch, "request": [PROMPT_TOKENS, NEW_TOKENS]}
    return cached_choice("dtype", key, measure)
