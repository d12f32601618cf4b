"""What the selector chose, per acceptance-model weight file: engines side by side over the same prompts, rounds
alternating, each round's steps, share of steps drafted, draft forwards, nodes and accepted nodes per row-step.

    python bench/step_counts.py --level bf16 --batch 1 a.safetensors b.safetensors ...

12 prompts of ``bench_mix.jsonl`` (3 per task), 40 new tokens, greedy; ``learned`` with its default trees and each
weight file's acceptance model. Step counts for the same output are what the weights decide, whatever the machine's
load; tokens/s is printed beside them.
"""

import argparse
import collections
import statistics
import time
from pathlib import Path

import torch

from speckv.bench.policies import drafter_for, load_level, method_config
from speckv.config import EMBEDDED, EngineConfig, SamplingParams
from speckv.drafters.lookup import LookupDrafter
from speckv.engine import SpecEngine
from speckv.io import load_requests
from speckv.models import load_tokenizer
from speckv.policies.learned.model import AcceptanceModel

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--level", default="bf16")
parser.add_argument("--batch", type=int, default=1)
parser.add_argument("--rounds", type=int, default=4)
parser.add_argument("weights", nargs="+")
args = parser.parse_args()
torch.set_grad_enabled(False)
spec, target, device, heads, _ = load_level(args.level, EMBEDDED, args.batch)
tokenizer, lookup = load_tokenizer(EMBEDDED), LookupDrafter()
engines = {}
for path in args.weights:
    policy, draft = method_config("learned", 16)
    engines[path] = SpecEngine(EngineConfig(target=spec, policy=policy, draft=draft, max_batch_size=args.batch),
                               target=target, tokenizer=tokenizer, drafter=drafter_for(draft, heads, lookup),
                               device=device)
    engines[path].policy.model = AcceptanceModel.load(path)
requests, _ = load_requests(Path(__file__).resolve().parents[1] / "speckv/data/bench_mix.jsonl",
                            SamplingParams(max_new_tokens=40), per_task=3)
for engine in engines.values():
    engine.generate(requests[: max(2, args.batch)])
rounds = collections.defaultdict(list)
for r in range(args.rounds):
    for path in (args.weights if r % 2 == 0 else args.weights[::-1]):
        start = time.perf_counter()
        results = engines[path].generate(requests)
        wall = time.perf_counter() - start
        steps = collections.defaultdict(list)  # batch step -> its rows
        for result in results:
            for s in result.steps:
                steps[s["batch_step_id"]].append(s)
        rows = [s for group in steps.values() for s in group]
        rounds[path].append({
            "wall": wall, "tokens": sum(len(x.token_ids) for x in results), "steps": len(steps),
            "drafted": statistics.mean(any(s["num_draft_tokens"] for s in g) for g in steps.values()),
            "forwards": statistics.mean(g[0]["draft_forwards"] for g in steps.values()),
            "nodes": statistics.mean(s["num_draft_tokens"] for s in rows),
            "accepted": statistics.mean(s["num_accepted_tokens"] for s in rows)})
print(f"{args.level} batch {args.batch}, {len(requests)} prompts × {args.rounds} rounds (per-round means):")
for path, runs in rounds.items():
    mean = {k: statistics.mean(r[k] for r in runs) for k in ("steps", "drafted", "forwards", "nodes", "accepted")}
    tok_s = sum(r["tokens"] for r in runs) / sum(r["wall"] for r in runs)
    print(f"  {path}: {tok_s:.1f} tok/s, {mean['steps']:.2f} steps, drafted in {mean['drafted']:.3f} of them, "
          f"{mean['forwards']:.2f} draft forwards, {mean['nodes']:.2f} nodes and {mean['accepted']:.3f} accepted a "
          f"row-step")
