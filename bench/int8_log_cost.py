"""What bitsandbytes' per-matmul cast warning costs an int8 target on CPU, and what silencing it at the logger's
level (:class:`speckv.models._FirstThenQuiet`) gives back: one int8 projection of the embedded target, a batch-8
decode input, timed in interleaved blocks with the warning's record built and dropped by a filter (what a filter
alone does) against stopped at the level check.

    python bench/int8_log_cost.py

Prints µs per call each way and their ratio with the paired-bootstrap interval over blocks, and the ms this is
per batch step (one call per int8 linear: 7 per layer, 30 layers).
"""
import logging
import time

import numpy as np
import torch

from speckv.bench.stats import fmt_interval, ratio_interval
from speckv.collect import compression_spec
from speckv.hardware import cpu_capability, cpu_name
from speckv.models import _FIRST_THEN_QUIET, EMBEDDED, load_causal_lm, resolve_spec

torch.set_grad_enabled(False)
target, _ = load_causal_lm(resolve_spec(compression_spec("int8", EMBEDDED), 8))
layer = target.model.layers[0].self_attn.q_proj
x = torch.randn(8, 1, layer.in_features, dtype=torch.bfloat16)
log = logging.getLogger("bitsandbytes.autograd._functions")
log.removeFilter(_FIRST_THEN_QUIET)
drop = logging.Filter("nothing passes this")  # a name no record has: every record is built, then dropped
calls, blocks = 300, 24
us = {"filtered": [], "quiet": []}
for block in range(blocks):
    for mode in ("filtered", "quiet") if block % 2 else ("quiet", "filtered"):
        log.setLevel(logging.NOTSET if mode == "filtered" else logging.ERROR)
        (log.addFilter if mode == "filtered" else log.removeFilter)(drop)
        start = time.perf_counter()
        for _ in range(calls):
            layer(x)
        us[mode].append((time.perf_counter() - start) / calls * 1e6)
log.removeFilter(drop)
f, q = np.array(us["filtered"]), np.array(us["quiet"])
ones = np.ones(blocks)
ratio = ratio_interval(ones, q, ones, f)  # calls/s quiet over filtered, paired by block
linears = 7 * len(target.model.layers)
print(f"{cpu_name()} (CPU capability usage: {cpu_capability()}), {torch.get_num_threads()} threads")
print(f"int8 {tuple(x.shape)} @ {layer.in_features}x{layer.out_features}, {blocks} blocks of {calls} calls: "
      f"record built and filtered {np.median(f):.1f} µs, level check only {np.median(q):.1f} µs; "
      f"speed quiet ÷ filtered {fmt_interval(*ratio)}; per batch step ({linears} int8 linears) "
      f"{(np.median(f) - np.median(q)) * linears / 1e3:.1f} ms")
