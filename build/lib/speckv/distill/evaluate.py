"""How good a trained draft is, measured through the engine's own step: greedy speculative decoding of the held-out
benchmark prompts with a fixed chain of γ, the acceptance figures of :class:`speckv.telemetry.RequestStats` per
task, and the draft's cost per drafted token from :func:`speckv.costs.calibrate` (the one cost model)."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

from speckv.config import DraftSpec, EngineConfig, PolicySpec, SamplingParams
from speckv.telemetry import RequestStats


def evaluate(kind: str, output: Path, target, tokenizer, target_spec, bench: Path, gamma: int,
             max_new_tokens: int, limit: int | None = None) -> dict:
    """Acceptance at γ on the ``bench`` prompts and the draft's cost; written into the draft's metadata file."""
    from speckv.costs import calibrate
    from speckv.drafters.draft_lm import RECIPE_FILE, DraftLM, draft_lm_dir
    from speckv.drafters.eagle import META_FILE, EagleDrafter
    from speckv.engine import SpecEngine
    from speckv.io import load_requests
    from speckv.models import load_causal_lm

    device = next(target.parameters()).device
    if kind == "eagle":
        meta_path, drafter = output / META_FILE, EagleDrafter.load(output, target, device)
    else:
        meta_path = output / RECIPE_FILE
        model, _ = load_causal_lm(target_spec.model_copy(update={"source": str(draft_lm_dir(output)),
                                                                  "quantization": "none"}))
        drafter = DraftLM(model, device, target.config.vocab_size)
    config = EngineConfig(target=target_spec, draft=DraftSpec(kind=kind, lookup=False),
                          policy=PolicySpec(name="fixed", gamma=gamma), max_batch_size=8)
    engine = SpecEngine(config, target=target, tokenizer=tokenizer, drafter=drafter, record_steps=False)
    requests, _ = load_requests(bench, SamplingParams(max_new_tokens=max_new_tokens), limit=limit)
    per_task: dict[str, RequestStats] = {}
    for result in engine.generate(requests):
        per_task[result.task or ""] = per_task.get(result.task or "", RequestStats()) + RequestStats.of([result.summary])
    total = sum(per_task.values(), RequestStats())
    costs = calibrate(engine, batch_sizes=(1,), tokens=(1,))

    def figures(stats: RequestStats) -> dict:
        first = 1 - stats.histogram[0] / stats.steps if stats.steps else None  # steps whose first draft was kept
        return {**stats.summary(), "first_token_acceptance": first}

    results = {
        "acceptance": {"all": figures(total), **{t: figures(s) for t, s in sorted(per_task.items())}},
        "cost": {"target_forward_ms": costs.verify(1, 1), "draft_token_ms": costs.draft(1),
                 "cost_ratio": costs.draft(1) / costs.verify(1, 1), "batch_size": 1},
        "gamma": gamma, "bench": bench.name, "int8_weights": bool(getattr(drafter, "int8_weights", False)),
        "measured": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    meta = json.loads(meta_path.read_text())
    meta.update(results)
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return results
