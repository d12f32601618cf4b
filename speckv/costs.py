"""Measured costs: verify time as a function of (batch size, tokens per row), draft time per drafted token.

Policies that trade acceptance against time read a :class:`CostModel`. It is measured, never assumed: on CPU
verifying 8 tokens costs ~1.3× one token, on a GPU nearly 1×, and a quantized target changes both — so the engine
calibrates it once per (target, drafter, compression, device, threads) and caches the figures as JSON.
"""

from __future__ import annotations

import bisect
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass


@dataclass
class CostModel:
    batch_sizes: list[int]  # grid rows, ascending
    tokens: list[int]  # grid columns: tokens per row in the verify forward (1 + γ), ascending
    verify_ms: list[list[float]]  # [len(batch_sizes)][len(tokens)] median target forward ms
    draft_ms: list[float]  # [len(batch_sizes)] median ms of one draft forward (one token per row)

    def verify(self, batch: int, tokens: int) -> float:
        """Target forward ms for ``batch`` rows × ``tokens`` tokens, interpolated on the grid."""
        row = [_interp(self.tokens, ms, tokens) for ms in self.verify_ms]
        return _interp(self.batch_sizes, row, batch)

    def draft(self, batch: int) -> float:
        return _interp(self.batch_sizes, self.draft_ms, batch)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> CostModel:
        return cls(**json.loads(text))


def _interp(xs: list[int], ys: list[float], x: float) -> float:
    if x <= xs[0]:
        return ys[0]
    if x >= xs[-1]:  # extrapolate linearly from the last two points
        if len(xs) == 1:
            return ys[-1]
        slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
        return ys[-1] + slope * (x - xs[-1])
    i = bisect.bisect_right(xs, x)
    frac = (x - xs[i - 1]) / (xs[i] - xs[i - 1])
    return ys[i - 1] + frac * (ys[i] - ys[i - 1])


def monotone(values: list[float]) -> list[float]:
    """The closest non-decreasing sequence in least squares (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [mean, count]
    for v in values:
        blocks.append([v, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (m2, n2), (m1, n1) = blocks.pop(), blocks.pop()
            blocks.append([(m1 * n1 + m2 * n2) / (n1 + n2), n1 + n2])
    return [m for m, n in blocks for _ in range(n)]


def median_ms(fn: Callable[[], None], repeats: int, sync: Callable[[], None]) -> float:
    fn()  # warm-up
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return times[len(times) // 2]
