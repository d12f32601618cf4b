"""Ratios measured side by side, with paired-bootstrap 95 % intervals (the SpecKV write-up's own test).

At batch 1 the unit is the prompt: every method generated every prompt, so a resample of prompts draws the same
prompts for both sides of a ratio, and the ratio of two methods is Σ tokens / Σ seconds of one over the other on
that resample. At larger batch sizes one run's throughput is not a sum over prompts (rows share steps), so the unit
is the repeat: the methods of one interleaved round ran back to back, and the ratio's interval comes from
resampling rounds (few rounds make it wide, honestly so).
"""

from __future__ import annotations

import numpy as np

RESAMPLES = 2000


def ratio_interval(tokens_a: np.ndarray, seconds_a: np.ndarray, tokens_b: np.ndarray, seconds_b: np.ndarray,
                   seed: int = 0) -> tuple[float, float, float]:
    """(ratio, low, high): the tokens/s of A over B on the whole sample, and the 2.5 / 97.5 percentiles of the same
    ratio over paired resamples of its units ([U] arrays: one unit per prompt, or per repeat)."""
    rng = np.random.default_rng(seed)
    n = len(tokens_a)
    ratio = (tokens_a.sum() / seconds_a.sum()) / (tokens_b.sum() / seconds_b.sum())
    if n < 2:
        return float(ratio), float("nan"), float("nan")
    idx = rng.integers(0, n, size=(RESAMPLES, n))
    boot = (tokens_a[idx].sum(1) / seconds_a[idx].sum(1)) / (tokens_b[idx].sum(1) / seconds_b[idx].sum(1))
    low, high = np.percentile(boot, [2.5, 97.5])
    return float(ratio), float(low), float(high)


def fmt_interval(ratio: float, low: float, high: float) -> str:
    if low != low:  # nan: a single unit
        return f"{ratio:.2f}"
    return f"{ratio:.2f} [{low:.2f}, {high:.2f}]"
