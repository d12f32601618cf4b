"""Paired A/B of the learned rule's margin for later columns in a batch, in one process: whole rounds of the prompts
per method, the order reversing each round, walls compared round by round against the first method.

    python bench/later_margin_ab.py int8 4 4 speckv/data/bench_mix.jsonl 3 40 fixed2,learned,learned@0.5,learned@0

Arguments: compression level, batch size, rounds, prompts file, prompts per task, new tokens, methods (``speckv
bench``'s names; ``learned@F`` scales the margin every column after the first must pay, ``later``, by F).
"""
import collections
import statistics
import sys
import time

import torch

torch.set_grad_enabled(False)
from speckv.bench.policies import method_config  # noqa: E402
from speckv.collect import compression_spec  # noqa: E402
from speckv.config import EngineConfig, SamplingParams  # noqa: E402
from speckv.drafters import Drafters  # noqa: E402
from speckv.drafters.eagle import EagleDrafter, default_eagle_path  # noqa: E402
from speckv.drafters.lookup import LookupDrafter  # noqa: E402
from speckv.engine import SpecEngine  # noqa: E402
from speckv.io import load_requests  # noqa: E402
from speckv.models import EMBEDDED, load_causal_lm, load_tokenizer, resolve_spec  # noqa: E402

level, batch, rounds, path, per_task, new_tokens = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], \
    int(sys.argv[5]), int(sys.argv[6])
methods = sys.argv[7].split(",")
spec = resolve_spec(compression_spec(level, EMBEDDED), batch)
target, device = load_causal_lm(spec)
tokenizer = load_tokenizer(EMBEDDED)
head = EagleDrafter.load(default_eagle_path(), target, device)
engines = {}
for m in methods:
    name, _, scale = m.partition("@")
    policy, draft = method_config(name, batch)
    drafter = None if name == "ar" else (Drafters([head, LookupDrafter()]) if draft.lookup else head)
    engine = SpecEngine(EngineConfig(target=spec, policy=policy, draft=draft, max_batch_size=batch), target=target,
                        tokenizer=tokenizer, drafter=drafter, device=device)
    if scale:
        def plan(ctx, policy=engine.policy, plan=engine.policy.plan, factor=float(scale)):
            out = plan(ctx)
            policy.later *= factor  # set by plan for this step's later decisions
            return out
        engine.policy.plan = plan
    engines[m] = engine
requests, _ = load_requests(path, SamplingParams(max_new_tokens=new_tokens), per_task=per_task)
for engine in engines.values():
    engine.generate(requests[:batch])  # warm-up: first shapes, costs measured at this batch size
walls = collections.defaultdict(list)
for r in range(rounds):
    for m in (methods if r % 2 == 0 else methods[::-1]):
        start = time.perf_counter()
        engines[m].generate(requests)
        walls[m].append(time.perf_counter() - start)
print(f"{level} batch {batch}, {len(requests)} prompts, {new_tokens} new tokens, {rounds} rounds; "
      f"CPU capability usage: {torch.backends.cpu.get_cpu_capability()}")
for m in methods:
    ratios = [walls[methods[0]][i] / walls[m][i] for i in range(rounds)]
    print(f"{m:14s} walls {[round(w, 2) for w in walls[m]]}  speed ÷ {methods[0]}: mean {statistics.mean(ratios):.3f},"
          f" rounds {[round(x, 3) for x in ratios]}")
