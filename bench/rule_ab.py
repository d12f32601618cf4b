"""Paired A/B of the learned selector's rule and costs against an earlier revision's, at batch 1, in one process.

    python bench/rule_ab.py --level int8 --methods learned@ff07d0c,learned,tree5x4n8,fixed4 --per-task 6 --passes 2

``METHOD@REV`` runs METHOD with ``speckv/policies/learned/rule.py``, the learned policy's methods and
``speckv/costs.py``'s ``OnlineCosts`` as they were at git revision REV (read with ``git show``); everything else —
target, head, acceptance model, prompts — is shared. Every prompt runs under every method back to back, the order
rotating per prompt and pass (``speckv bench``'s own :func:`~speckv.bench.policies.interleave`), so drift on a
noisy machine hits all alike; ratios over the first method are the bench's, with the paired-bootstrap interval over
prompts (:func:`~speckv.bench.policies.paired`).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def module_at(rev: str, path: str, name: str) -> types.ModuleType:
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{path}"], check=True, capture_output=True,
                            text=True).stdout
    module = types.ModuleType(name)
    module.__file__ = f"{rev}:{path}"
    sys.modules[name] = module  # dataclasses look their module up
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module


def at_revision(engine, rev: str) -> None:
    """Give ``engine`` the learned rule, policy methods and online costs of ``rev``."""
    from speckv.policies import learned

    rule = module_at(rev, "speckv/policies/learned/rule.py", f"rule_{rev}")
    costs = module_at(rev, "speckv/costs.py", f"costs_{rev}")
    old = module_at(rev, "speckv/policies/learned/__init__.py", f"learned_{rev}")
    old.choose_width, old.worth_expanding = rule.choose_width, rule.worth_expanding
    policy = engine.policy
    assert isinstance(policy, learned.LearnedPolicy), "METHOD@REV is for the learned policy"
    policy.__class__ = old.LearnedPolicy  # its methods, this policy's state
    engine.costs = costs.OnlineCosts(engine.costs.calibrated, engine.costs.max_tokens)


def main() -> int:
    from speckv.bench.policies import engine_runner, interleave, method_config, paired
    from speckv.bench.stats import fmt_interval
    from speckv.collect import compression_spec
    from speckv.config import EngineConfig, SamplingParams
    from speckv.drafters.eagle import EagleDrafter, default_eagle_path
    from speckv.engine import SpecEngine
    from speckv.io import load_requests
    from speckv.models import EMBEDDED, load_causal_lm, load_tokenizer, resolve_spec
    from speckv.report import machine_record, where

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--level", default="bf16")
    parser.add_argument("--methods", required=True)
    parser.add_argument("--prompts", default=str(ROOT / "speckv/data/bench_mix.jsonl"))
    parser.add_argument("--per-task", type=int, default=6)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=40)
    args = parser.parse_args()
    methods = args.methods.split(",")
    spec = resolve_spec(compression_spec(args.level, EMBEDDED), 1)
    target, device = load_causal_lm(spec)
    tokenizer = load_tokenizer(EMBEDDED)
    head = EagleDrafter.load(default_eagle_path(), target, device)
    engines = {}
    for m in methods:
        name, _, rev = m.partition("@")
        policy, draft = method_config(name, 8)
        engines[m] = SpecEngine(EngineConfig(target=spec, policy=policy, draft=draft, max_batch_size=1),
                                target=target, tokenizer=tokenizer, drafter=head, device=device)
        if rev:
            at_revision(engines[m], rev)
    requests, _ = load_requests(args.prompts, SamplingParams(max_new_tokens=args.max_new_tokens),
                                per_task=args.per_task)
    for e in engines.values():  # warm-up: kernels, first shapes
        e.generate(requests[:2])
    runs = interleave({m: engine_runner(e) for m, e in engines.items()}, requests, 1, args.passes, args.level)
    record = machine_record(next(e for e in engines.values() if e.costs is not None))
    print(f"{args.level}: {where(record)}; {len(requests)} prompts × {args.passes} passes, "
          f"{args.max_new_tokens} tokens")
    base = methods[0]
    for m in methods:
        tok_s = sum(r["tokens"] for r in runs[m]) / sum(r["wall"] for r in runs[m])
        nodes = statistics.median(r["mean_nodes"] for r in runs[m])
        print(f"  {m:18s} {tok_s:6.1f} tok/s   × {base}: {fmt_interval(*paired(runs[m], runs[base], 1)):18s}"
              f" nodes/step {nodes:.2f}")
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
