"""Where a batch step's time goes, per method, from the engine's own step telemetry: one process, methods
interleaved (the order reversing each round), verify / draft / decision ms by (batch size, tokens verified).

    python bench/step_breakdown.py int8 ar,learned,learned+lookup 4

Arguments: compression level, methods (``speckv bench``'s names), rounds. 16 prompts of ``bench_mix.jsonl`` (4 per
task), 48 new tokens, batch 8, greedy; prints each round's wall seconds and the per-cell medians.
"""
import collections
import statistics
import sys
import time
from pathlib import Path

import torch
torch.set_grad_enabled(False)
from speckv.bench.policies import drafter_for, load_level, method_config
from speckv.config import EMBEDDED, EngineConfig, SamplingParams
from speckv.drafters.lookup import LookupDrafter
from speckv.engine import SpecEngine
from speckv.io import load_requests
from speckv.models import load_tokenizer

level = sys.argv[1]; methods = sys.argv[2].split(","); rounds = int(sys.argv[3])
spec, target, device, heads, _ = load_level(level, EMBEDDED, 8)
tok, lookup = load_tokenizer(EMBEDDED), LookupDrafter()
engines = {}
for m in methods:
    policy, draft = method_config(m, 8)
    engines[m] = SpecEngine(EngineConfig(target=spec, policy=policy, draft=draft, max_batch_size=8), target=target,
                            tokenizer=tok, drafter=None if m == "ar" else drafter_for(draft, heads, lookup),
                            device=device)
reqs, _ = load_requests(str(Path(__file__).resolve().parents[1] / "speckv/data/bench_mix.jsonl"), SamplingParams(max_new_tokens=48), per_task=4)
for e in engines.values(): e.generate(reqs[:8])
walls = collections.defaultdict(list); steps = collections.defaultdict(list)
for r in range(rounds):
    for m in (methods if r % 2 == 0 else methods[::-1]):
        t = time.perf_counter(); res = engines[m].generate(reqs); walls[m].append(time.perf_counter() - t)
        # one entry per batch step (dedupe by batch_step_id)
        seen = {}
        for x in res:
            for s in x.steps:
                seen[s["batch_step_id"]] = s
        steps[m] += list(seen.values())
for m in methods:
    ss = steps[m]
    by = collections.defaultdict(list)
    for s in ss: by[(s["batch_size"], s["max_tokens_verified"])].append(s)
    print(m, "walls", [round(w, 2) for w in walls[m]], "steps", len(ss) // rounds)
    for k in sorted(by):
        v = by[k]
        if len(v) < 5: continue
        print(f"   b={k[0]} t={k[1]} n={len(v):4d} verify p50 {statistics.median(s['verify_ms'] for s in v):7.2f} draft p50 {statistics.median(s['draft_ms'] for s in v):6.2f} decision p50 {statistics.median(s['decision_ms']*s['batch_size'] for s in v):6.2f}")
    print("   total verify s", round(sum(s["verify_ms"] for s in ss) / 1e3 / rounds, 2), "draft s", round(sum(s["draft_ms"] for s in ss) / 1e3 / rounds, 2),
          "decision s", round(sum(s["decision_ms"] * s["batch_size"] for s in ss) / 1e3 / rounds, 2))
