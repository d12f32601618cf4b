"""Measure the engine's own costs once and cache them (see :mod:`speckv.costs`)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import statistics
import time

import torch

from speckv.costs import CostModel, median_ms, monotone
from speckv.kvcache import RaggedCache
from speckv.models import cache_dir

log = logging.getLogger(__name__)

BATCH_SIZES = (1, 2, 4, 8, 16)
TOKENS = (1, 2, 3, 5, 9, 17)
CONTEXT = 128
REPEATS = 5


def cost_key(engine) -> str:
    cfg = engine.config
    # the loaded models themselves, not only the config: an injected model must never reuse another's costs
    drafter = engine.drafter
    module = getattr(drafter, "head", None) or getattr(drafter, "model", None)  # EAGLE head / draft LM
    draft_params = sum(p.numel() for p in module.parameters()) if module is not None else None
    parts = {
        "target": cfg.target.model_dump(),
        "target_arch": engine.target.config.to_json_string(use_diff=False),
        "draft": cfg.draft.model_dump(),
        "drafter": [type(drafter).__name__, draft_params, getattr(drafter, "vocab_size", None),
                    getattr(drafter, "int8_weights", False)],
        "device": str(engine.device),
        "threads": torch.get_num_threads(),
        "batch": BATCH_SIZES,
        "tokens": TOKENS,
        "method": 2,  # interleaved rounds, monotone in tokens
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def load_or_calibrate(engine) -> CostModel:
    path = cache_dir() / "costs" / f"{cost_key(engine)}.json"
    if path.is_file() and not os.environ.get("SPECKV_RECALIBRATE"):
        return CostModel.from_json(path.read_text())
    log.info("calibrating draft/verify costs once (cached in %s)", path)
    model = calibrate(engine)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(model.to_json())
    tmp.replace(path)
    return model


@torch.inference_mode()
def calibrate(engine, batch_sizes=BATCH_SIZES, tokens=TOKENS, context: int = CONTEXT) -> CostModel:
    """Median ms of each (batch, tokens) verify forward and of one draft forward per batch size.

    The token counts of a batch size are timed in interleaved rounds, so a burst of load from elsewhere hits all of
    them alike, and the medians are made non-decreasing in tokens (pool-adjacent-violators): verifying more tokens
    never costs less, and a policy must not chase a dip that is only noise."""
    dev, vocab = engine.device, engine.vocab_size
    gen = torch.Generator().manual_seed(0)
    verify_ms, draft_ms = [], []
    for batch in batch_sizes:
        prompt = torch.randint(100, vocab, (batch, context), generator=gen).to(dev)
        ones = torch.ones_like(prompt, dtype=torch.bool)
        cache = RaggedCache(batch, dev)
        _, hidden = engine._target_forward(cache, prompt, ones)
        inputs = [torch.randint(100, vocab, (batch, t), generator=gen).to(dev) for t in tokens]

        def forward(ids: torch.Tensor) -> float:
            start = time.perf_counter()
            engine._target_forward(cache, ids, torch.ones_like(ids, dtype=torch.bool))
            engine._sync()
            elapsed = (time.perf_counter() - start) * 1e3
            cache.keep_last(ids.shape[1], torch.zeros(batch, dtype=torch.long, device=dev))
            cache.trim()
            return elapsed

        for ids in inputs:  # warm-up
            forward(ids)
        samples = [[forward(ids) for ids in inputs] for _ in range(REPEATS)]
        verify_ms.append(monotone([statistics.median(column) for column in zip(*samples)]))
        if engine.drafter is None:
            draft_ms.append(0.0)
            continue
        feats = [hidden[b] for b in range(batch)] if hidden is not None else None
        engine.drafter.prefill(prompt.tolist(), prompt[:, -1], feats)
        engine.drafter.draft_logits(None)
        last = prompt[:, -1]
        draft_ms.append(median_ms(lambda: engine.drafter.draft_logits(last), REPEATS + 2, engine._sync))
    return CostModel(list(batch_sizes), list(tokens), verify_ms, draft_ms)

