"""Paired A/B of the learned rule's margin for later columns in a batch, in one process.

    python bench/later_margin_ab.py --level int8 --batch 4 --methods fixed2,learned,learned@0.5,learned@0 --passes 4

``learned@F`` runs ``learned`` with the margin every column after the first must pay (``later``) scaled by F;
everything else — target, head, acceptance model, prompts — is shared. The methods take turns over the whole prompt
set, the order rotating per pass (``speckv bench``'s own :func:`~speckv.bench.policies.interleave`); ratios over the
first method are the bench's, with the paired-bootstrap interval over passes (:func:`~speckv.bench.policies.paired`).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def scale_later(engine, factor: float) -> None:
    """Scale the learned policy's ``later`` margin, which its ``plan`` sets for the step's later decisions."""
    policy, plan = engine.policy, engine.policy.plan

    def scaled(ctx):
        out = plan(ctx)
        policy.later *= factor
        return out

    policy.plan = scaled


def main() -> int:
    from speckv.bench.policies import drafter_for, engine_runner, interleave, method_config, paired
    from speckv.bench.stats import fmt_interval
    from speckv.collect import compression_spec
    from speckv.config import EngineConfig, SamplingParams
    from speckv.drafters.eagle import EagleDrafter, default_eagle_path
    from speckv.drafters.lookup import LookupDrafter
    from speckv.engine import SpecEngine
    from speckv.io import load_requests
    from speckv.models import EMBEDDED, load_causal_lm, load_tokenizer, resolve_spec
    from speckv.report import machine_record, where

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--level", default="int8")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--methods", required=True)
    parser.add_argument("--prompts", default=str(ROOT / "speckv/data/bench_mix.jsonl"))
    parser.add_argument("--per-task", type=int, default=3)
    parser.add_argument("--passes", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=40)
    args = parser.parse_args()
    methods = args.methods.split(",")
    spec = resolve_spec(compression_spec(args.level, EMBEDDED), args.batch)
    target, device = load_causal_lm(spec)
    tokenizer = load_tokenizer(EMBEDDED)
    heads, lookup = {"eagle": EagleDrafter.load(default_eagle_path(), target, device)}, LookupDrafter()
    engines = {}
    for m in methods:
        name, _, factor = m.partition("@")
        policy, draft = method_config(name, args.batch)
        engines[m] = SpecEngine(EngineConfig(target=spec, policy=policy, draft=draft, max_batch_size=args.batch),
                                target=target, tokenizer=tokenizer, drafter=drafter_for(draft, heads, lookup),
                                device=device)
        if factor:
            scale_later(engines[m], float(factor))
    requests, _ = load_requests(args.prompts, SamplingParams(max_new_tokens=args.max_new_tokens),
                                per_task=args.per_task)
    for e in engines.values():  # warm-up: kernels, first shapes, costs measured at this batch size
        e.generate(requests[: args.batch])
    runs = interleave({m: engine_runner(e) for m, e in engines.items()}, requests, args.batch, args.passes, args.level)
    record = machine_record(next(e for e in engines.values() if e.costs is not None))
    print(f"{args.level} batch {args.batch}: {where(record)}; {len(requests)} prompts × {args.passes} passes, "
          f"{args.max_new_tokens} tokens")
    base = methods[0]
    for m in methods:
        tok_s = sum(r["tokens"] for r in runs[m]) / sum(r["wall"] for r in runs[m])
        nodes = statistics.median(r["mean_nodes"] for r in runs[m])
        print(f"  {m:14s} {tok_s:6.1f} tok/s   × {base}: "
              f"{fmt_interval(*paired(runs[m], runs[base], args.batch)):18s} nodes/step {nodes:.2f}")
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
