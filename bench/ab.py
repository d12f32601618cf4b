"""Paired A/B of engine variants in one process: a method as it is, at an earlier revision, or with a margin scaled.

    python bench/ab.py --level int8 --methods learned@ff07d0c,learned,tree5x4n8,fixed4 --per-task 6 --passes 2
    python bench/ab.py --level int8 --batch 4 --methods fixed2,learned,learned@later=0.5,learned@later=0 --passes 4

Methods are ``speckv bench``'s (:func:`~speckv.bench.policies.method_config`), each optionally with a variant:

* ``METHOD@REV`` runs it with ``speckv/policies/learned/rule.py``, the learned policy's methods and
  ``speckv/costs.py``'s ``OnlineCosts`` as they were at git revision REV (read with ``git show``);
* ``METHOD@later=F`` runs it with the margin that every column after the first pays in a batch (``later``, see
  :mod:`speckv.policies.learned.rule`) scaled by F;
* ``METHOD@weights=PATH`` runs it with the acceptance model at PATH (``speckv train-policy``'s output).

Everything else — target, head, acceptance model, prompts — is shared. Beside tokens/s each method's nodes and
tokens per step and its steps per pass are printed: for one output, the step count is what a selector decided,
whatever the machine's load did to the seconds. The methods run on ``speckv bench``'s own
:func:`~speckv.bench.policies.interleave` (at batch 1 every prompt under every method back to back, in a batch
turns over the whole prompt set, the order rotating), and each ratio over the first method is the bench's, with
its paired-bootstrap interval (:func:`~speckv.bench.policies.paired`: over prompts at batch 1, passes otherwise).
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
    rule = module_at(rev, "speckv/policies/learned/rule.py", f"rule_{rev}")
    costs = module_at(rev, "speckv/costs.py", f"costs_{rev}")
    old = module_at(rev, "speckv/policies/learned/__init__.py", f"learned_{rev}")
    old.choose_width, old.worth_expanding = rule.choose_width, rule.worth_expanding
    engine.policy.__class__ = old.LearnedPolicy  # its methods, this policy's state
    engine.costs = costs.OnlineCosts(engine.costs.calibrated, engine.costs.max_tokens)


def scale_later(engine, factor: float) -> None:
    """Scale the learned policy's ``later`` margin, which its ``plan`` sets for the step's later decisions."""
    policy, plan = engine.policy, engine.policy.plan

    def scaled(ctx):
        out = plan(ctx)
        policy.later *= factor
        return out

    policy.plan = scaled


def split(method: str) -> tuple[str, str]:
    """``learned@later=0.5`` → (``learned``, ``later=0.5``); ``fixed2@lm`` names a method (the draft LM's), no
    variant."""
    if "@" not in method or method.endswith("@lm"):
        return method, ""
    name, _, variant = method.rpartition("@")
    return name, variant


def apply_variant(engine, variant: str) -> None:
    from speckv.policies.learned import AcceptanceModel, LearnedPolicy

    if not variant:
        return
    if not isinstance(engine.policy, LearnedPolicy):
        raise SystemExit(f"variant @{variant} is for the learned policy")
    if variant.startswith("later="):
        scale_later(engine, float(variant.removeprefix("later=")))
    elif variant.startswith("weights="):
        engine.policy.model = AcceptanceModel.load(variant.removeprefix("weights="))
    else:
        at_revision(engine, variant)


def main() -> int:
    from speckv.bench.policies import drafter_for, engine_runner, interleave, load_level, method_config, paired
    from speckv.bench.stats import fmt_interval
    from speckv.config import EMBEDDED, EngineConfig, SamplingParams
    from speckv.drafters.lookup import LookupDrafter
    from speckv.engine import SpecEngine
    from speckv.io import load_requests
    from speckv.models import load_tokenizer
    from speckv.report import machine_record, where

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--level", default="bf16")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--methods", required=True, help="comma list, the first the baseline (module doc)")
    parser.add_argument("--prompts", default=str(ROOT / "speckv/data/bench_mix.jsonl"))
    parser.add_argument("--per-task", type=int, default=3)
    parser.add_argument("--passes", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--gamma-max", type=int, default=16, help="as speckv bench's")
    args = parser.parse_args()
    methods = {m: split(m) for m in args.methods.split(",")}
    configs = {m: method_config(name, args.gamma_max) for m, (name, _) in methods.items()}  # bad names fail early
    lm = any(draft.kind == "lm" for _, draft in configs.values())
    spec, target, device, heads, _ = load_level(args.level, EMBEDDED, args.batch, lm)
    tokenizer, lookup = load_tokenizer(EMBEDDED), LookupDrafter()
    engines = {}
    for m, (policy, draft) in configs.items():
        engines[m] = SpecEngine(EngineConfig(target=spec, policy=policy, draft=draft, max_batch_size=args.batch),
                                target=target, tokenizer=tokenizer, drafter=drafter_for(draft, heads, lookup),
                                device=device)
        apply_variant(engines[m], methods[m][1])
    requests, _ = load_requests(args.prompts, SamplingParams(max_new_tokens=args.max_new_tokens),
                                per_task=args.per_task)
    for e in engines.values():  # warm-up: kernels, first shapes, costs measured at this batch size
        e.generate(requests[: max(2, args.batch)])
    runs = interleave({m: engine_runner(e) for m, e in engines.items()}, requests, args.batch, args.passes, args.level)
    record = machine_record(next(e for e in engines.values() if e.costs is not None))
    print(f"{args.level} batch {args.batch}: {where(record)}; {len(requests)} prompts × {args.passes} passes, "
          f"{args.max_new_tokens} tokens")
    base = next(iter(methods))
    for m in methods:
        tok_s = sum(r["tokens"] for r in runs[m]) / sum(r["wall"] for r in runs[m])
        nodes = statistics.median(r["mean_nodes"] for r in runs[m])
        steps = statistics.mean(len({s["batch_step_id"] for s in r["steps"]}) for r in runs[m])
        print(f"  {m:18s} {tok_s:6.1f} tok/s   × {base}: "
              f"{fmt_interval(*paired(runs[m], runs[base], args.batch)):18s} nodes/step {nodes:.2f}, "
              f"tokens/step {statistics.median(r['mean_acceptance_length'] for r in runs[m]):.2f}, "
              f"steps/pass {steps:.1f}")
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
