"""What a batch's cache width costs a plain step: one batch-8 decode forward of the embedded target (the engine's
verify forward, one token a row, explicit mask) over a cache whose rows hold the same 120 tokens each, padded with
holes on the left to 120, 240, 480 and 960 columns (a running batch's rows are left-padded to its width).

    python bench/cache_width.py [--rounds 12]

Prints the mean ms of each width (the rounds interleaved, the two fastest and slowest dropped) and its ratio to
the narrowest, with the paired-bootstrap interval over rounds.
"""
import argparse
import time

import numpy as np
import torch

from speckv.bench.stats import fmt_interval, ratio_interval
from speckv.collect import compression_spec
from speckv.hardware import cpu_capability, cpu_name
from speckv.kvcache import RaggedCache
from speckv.models import EMBEDDED, load_causal_lm, resolve_spec

parser = argparse.ArgumentParser()
parser.add_argument("--rounds", type=int, default=12)
args = parser.parse_args()
torch.set_grad_enabled(False)
spec = resolve_spec(compression_spec("bf16", EMBEDDED), 8)
target, device = load_causal_lm(spec)
decoder, lm_head = target.get_decoder(), target.get_output_embeddings()
dtype = lm_head.weight.dtype
BATCH, TOKENS, WIDTHS = 8, 120, (120, 240, 480, 960)
gen = torch.Generator().manual_seed(0)


def build(width: int) -> RaggedCache:
    cache = RaggedCache(BATCH, device)
    valid = torch.zeros(BATCH, width, dtype=torch.bool)
    valid[:, width - TOKENS:] = True
    with torch.inference_mode():
        decoder(**cache.model_inputs(torch.randint(100, 40000, (BATCH, width), generator=gen), valid, dtype=dtype))
    return cache


def step(cache: RaggedCache) -> float:
    ids = torch.randint(100, 40000, (BATCH, 1), generator=gen)
    attend = torch.ones(BATCH, 1, cache.valid.shape[1] + 1, dtype=torch.bool)
    start = time.perf_counter()
    with torch.inference_mode():
        out = decoder(**cache.model_inputs(ids, torch.ones_like(ids, dtype=torch.bool), attend,
                                           cache.lengths[:, None], dtype=dtype))
        lm_head(out.last_hidden_state)
        elapsed = (time.perf_counter() - start) * 1e3
        cache._index_slots(None, cache.valid.shape[1] - 1)  # roll the step back: the width stays as built
    return elapsed


caches = {w: build(w) for w in WIDTHS}
for cache in caches.values():
    step(cache)  # first forward of each shape: kernels
ms = {w: [] for w in WIDTHS}
for r in range(args.rounds):
    for w in WIDTHS if r % 2 == 0 else WIDTHS[::-1]:
        ms[w].append(step(caches[w]))
print(f"{cpu_name()} (CPU capability usage: {cpu_capability()}), {torch.get_num_threads()} threads, "
      f"target {spec.dtype}")
print(f"batch {BATCH}, {TOKENS} valid slots a row, one token a row, {args.rounds} interleaved rounds")
print("| width (columns) | ms (trimmed mean) | × the narrowest (paired interval over rounds) |")
print("|---|---|---|")
base = np.array(ms[WIDTHS[0]])
ones = np.ones(args.rounds)
for w in WIDTHS:
    v = np.array(ms[w])
    trimmed = np.sort(v)[2:-2].mean() if len(v) > 4 else v.mean()
    print(f"| {w} | {trimmed:.1f} | {fmt_interval(*ratio_interval(ones, base, ones, v))} |")
