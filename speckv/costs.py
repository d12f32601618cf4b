"""The one cost model: verify time by (batch size, tokens per row), draft time per draft forward by batch size.

Policies that trade acceptance against time read it; so do the oracle, ``speckv bench`` and ``speckv distill``.
It is measured, never assumed: on CPU verifying 9 tokens costs 1.1× one token on a CPU with native bf16 and 4×
on one without, on a GPU nearly 1×, and a quantized target changes both. Three parts, one file:

* :class:`CostModel` — the grid calibration measures (medians), interpolated; JSON on disk.
* :func:`load_or_calibrate` / :func:`calibrate` — measure it once per (target, drafter, compression, device,
  threads) and cache it under ``cache_dir()/costs``.
* :class:`OnlineCosts` — the engine's running view: calibration corrected by the wall time of every step the
  engine runs (calibration's synthetic forwards misjudge the real step's shape: it put verify(16, 2) at
  verify(16, 1), the engine measured far more), pooled into one fitted curve per batch size, plus what drafting
  and plain steps each delivered per ms.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Protocol

import numpy as np
import torch

log = logging.getLogger(__name__)

BATCH_SIZES = (1, 2, 4, 8, 16)
TOKENS = (1, 2, 3, 5, 9, 17, 33)
CONTEXT = 128
REPEATS = 5


class Costs(Protocol):
    def draft(self, batch: int, nodes: int = 1) -> float: ...  # ms of one draft forward of batch × nodes

    def verify(self, batch: int, tokens: int) -> float: ...  # ms of a target forward of batch × tokens


@dataclass
class CostModel:
    batch_sizes: list[int]  # grid rows, ascending
    tokens: list[int]  # grid columns: tokens per row in the verify forward (1 + nodes), ascending
    verify_ms: list[list[float]]  # [len(batch_sizes)][len(tokens)] median target forward ms
    draft_ms: list[float]  # median ms of one draft forward, by the rows it feeds: at draft_rows, else batch_sizes
    draft_rows: list[int] | None = None  # the draft grid's rows fed (batch × nodes), ascending; None: batch_sizes

    def verify(self, batch: int, tokens: int) -> float:
        """Target forward ms for ``batch`` rows × ``tokens`` tokens, interpolated on the grid."""
        row = [_interp(self.tokens, ms, tokens) for ms in self.verify_ms]
        return _interp(self.batch_sizes, row, batch)

    def draft(self, batch: int, nodes: int = 1) -> float:
        """Draft forward ms for ``batch`` rows × ``nodes`` nodes each, read at batch · nodes, the rows a head's linear
        layers see (calibration times one node a row at each batch size)."""
        return _interp(self.draft_rows or self.batch_sizes, self.draft_ms, batch * nodes)

    def ratios(self, batch: int = 1, tokens=(1, 5, 9)) -> dict[int, float]:
        """Verify cost of each token count relative to one token (the figure that decides whether drafting pays)."""
        base = self.verify(batch, 1)
        return {t: self.verify(batch, t) / base for t in tokens}

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
    return statistics.median(times)


# ---------------------------------------------------------------------------------------------- calibration


def cost_key(engine) -> str:
    """What the figures depend on: the loaded models themselves, not only the config (an injected model must never
    reuse another's costs), the device and the threads."""
    drafter = engine.drafter
    parts = {
        "target": engine.target_spec.model_dump(),
        "target_arch": engine.target.config.to_json_string(use_diff=False),
        "draft": engine.config.draft.model_dump(),
        "drafter": drafter.describe() if drafter is not None else None,
        "device": str(engine.device),
        "threads": torch.get_num_threads(),
        "batch": BATCH_SIZES,
        "tokens": TOKENS,
        "method": 3,  # interleaved rounds, monotone in tokens, public engine calls
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_or_calibrate(engine) -> CostModel:
    from speckv.models import cache_dir

    path = cache_dir() / "costs" / f"{cost_key(engine)}.json"
    if path.is_file() and not os.environ.get("SPECKV_RECALIBRATE"):
        return CostModel.from_json(path.read_text())
    log.info("calibrating draft/verify costs once (cached in %s)", path)
    model = calibrate(engine)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(model.to_json())
    tmp.replace(path)
    return model


@torch.inference_mode()
def calibrate(engine, batch_sizes=BATCH_SIZES, tokens=TOKENS, context: int = CONTEXT) -> CostModel:
    """Median ms of each (batch, tokens) verify forward and of one draft forward per batch size.

    The token counts of a batch size are timed in interleaved rounds, so a burst of load from elsewhere hits all of
    them alike, and the medians are made non-decreasing in tokens (pool-adjacent-violators): verifying more tokens
    never costs less, and a policy must not chase a dip that is only noise."""
    verify_ms, draft_ms = [], []
    for batch in batch_sizes:
        timer = engine.verify_timer(batch, context)
        for t in tokens:  # warm-up
            timer(t)
        samples = [[timer(t) for t in tokens] for _ in range(REPEATS)]
        verify_ms.append(monotone([statistics.median(column) for column in zip(*samples)]))
        forward = engine.drafter.forward_timer(batch, context) if engine.drafter is not None else None
        draft_ms.append(median_ms(forward, REPEATS + 2, engine.sync) if forward is not None else 0.0)
    return CostModel(list(batch_sizes), list(tokens), verify_ms, draft_ms)


# ---------------------------------------------------------------------------------------------- online


@dataclass
class StepTimes:
    """What one batched engine step measured (vLLM's SpecDecodingStats shape, plus times)."""

    batch: int  # rows in the step
    tokens: int  # tokens per row in the verify forward (1 + the widest row's nodes)
    draft_widths: tuple[int, ...]  # nodes per row fed by each draft forward (none: a plain step)
    draft_ms: float
    verify_ms: float
    decision_ms: float
    wall_ms: float  # the whole step, bookkeeping included; the drafter's catch-up (prepare) not, like admission
    delivered: float  # tokens committed per row, on average
    drafted: bool  # any row verified drafted tokens

    @property
    def draft_forwards(self) -> int:
        return len(self.draft_widths)


class OnlineCosts:
    """Calibration corrected by every step the engine runs; what the policy reads as ``ctx.costs``.

    ``verify(n, t)`` is one curve per batch size, ``a + b·[t > 1] + c·(t − 1)`` (plain step, the jump to any
    multi-token forward, the cost per further token; b, c ≥ 0), fitted by weighted least squares to every cell the
    engine has run at that batch size (weight: its samples, up to ``WINDOW``) and to the calibrated curve, scaled to
    this batch size's measurements, as a prior of weight ``PRIOR`` per token count. Pooled, not cell by cell: a
    step's time swings ±20 % on a loaded 2-core machine (measured, int8, batch 1: one run's cells for 2, 4 and 6
    tokens, run 9–22 times each, sat 30–65 % above those for 3, 5 and 7, run 43–65 times), and a cell read on its
    own — a rare width overstated by its few samples, then made the floor of every wider one — kept the policy off
    widths that fixed trees showed to pay (learned 0.88× tree5x4n8 in one paired run). The jump is real on some
    targets (bitsandbytes int8 on this CPU: 1.13–1.27× for a second token, ~3 % per token after), so a single
    slope would not do. A cell's value is the running mean of its samples, an EMA over the last ``WINDOW`` or so.
    The first step of each shape is not counted: it builds its kernels (measured: a first 4-token verify at int8
    took twice its later ones). ``step(n)`` is the list a policy works with: ``step(n)[k]`` = ms of a step that
    verifies 1 + k tokens per row, bookkeeping included; rebuilt every ``REFRESH`` steps (the measurements move
    slowly, and a rebuild is dozens of Python calls)."""

    EMA = 0.2  # draft ms, overhead and delivered rates
    WINDOW = 16  # samples a verify cell averages over
    PRIOR = 1.0  # weight of each calibrated token count in the fit
    REFRESH = 8

    def __init__(self, calibrated: CostModel, max_tokens: int) -> None:
        self.calibrated, self.max_tokens = calibrated, max_tokens
        self.cells: dict[tuple[int, int], list[float]] = {}  # (batch, tokens) -> [mean verify ms, samples ≤ WINDOW]
        self.draft_ms: dict[int, float] = {}
        self.rate: dict[tuple[int, bool], float] = {}  # tokens per row per ms, by (batch, drafted)
        self.rate_steps: dict[tuple[int, bool], int] = {}
        self.verify_scale = self.draft_scale = 1.0
        self.overhead_per_row = 0.0
        self.steps = 0  # steps observed
        self._warm: set[tuple] = set()  # shapes seen once (batch, tokens, drafted)
        # batch -> (steps when fitted, verify ms for 1, 2, … tokens per row, the step list built from it)
        self._fits: dict[int, tuple[int, np.ndarray, np.ndarray]] = {}

    def _ema(self, old: float | None, new: float) -> float:
        return new if old is None else (1 - self.EMA) * old + self.EMA * new

    def observe(self, t: StepTimes) -> None:
        self.steps += 1
        n, cell = t.batch, (t.batch, t.tokens, t.draft_forwards > 0)
        if cell not in self._warm:  # the first step of a shape builds its kernels (oneDNN, bitsandbytes): not a cost
            self._warm.add(cell)
            return
        cell = cell[:2]
        if cell not in self.cells:  # a newly measured cell: refit this batch size now
            self.cells[cell] = [0.0, 0.0]
            self._fits.pop(n, None)
        stats = self.cells[cell]
        stats[1] = min(stats[1] + 1, self.WINDOW)
        stats[0] += (t.verify_ms - stats[0]) / stats[1]
        self.verify_scale = self._ema(self.verify_scale, t.verify_ms / self.calibrated.verify(n, t.tokens))
        if t.draft_forwards:  # per forward of one node a row: a wider forward counts as its calibrated multiple
            per_forward = t.draft_ms / sum(self._widen(n, w) for w in t.draft_widths)
            self.draft_ms[n] = self._ema(self.draft_ms.get(n), per_forward)
            if self.calibrated.draft(n) > 0:
                self.draft_scale = self._ema(self.draft_scale, per_forward / self.calibrated.draft(n))
        rest = max(t.wall_ms - t.draft_ms - t.verify_ms, 0.0) / n
        self.overhead_per_row = self._ema(self.overhead_per_row, rest)
        key = (n, t.drafted)
        self.rate[key] = self._ema(self.rate.get(key), t.delivered / t.wall_ms)
        self.rate_steps[key] = self.rate_steps.get(key, 0) + 1

    def measured(self, batch: int, tokens: int) -> bool:
        return (batch, tokens) in self.cells

    def draft(self, batch: int, nodes: int = 1) -> float:
        one = self.draft_ms.get(batch, self.calibrated.draft(batch) * self.draft_scale)
        return one * self._widen(batch, nodes)

    def _widen(self, batch: int, nodes: int) -> float:  # a forward of `nodes` a row ÷ one of a node a row
        base = self.calibrated.draft(batch)
        return self.calibrated.draft(batch, nodes) / base if nodes > 1 and base > 0 else 1.0

    def verify(self, batch: int, tokens: int) -> float:
        curve = self._fitted(batch)[0]
        if tokens <= len(curve):
            return float(curve[tokens - 1])
        return float(curve[-1] + (curve[-1] - curve[-2]) * (tokens - len(curve)))  # the fitted slope, c

    def step(self, batch: int) -> np.ndarray:
        return self._fitted(batch)[1]

    def _fitted(self, batch: int) -> tuple[np.ndarray, np.ndarray]:  # (verify curve, step list), refreshed together
        built, curve, table = self._fits.get(batch, (None, None, None))
        if curve is None or self.steps - built >= self.REFRESH:
            curve = self._fit(batch)
            table = curve[: self.max_tokens] + self.overhead_per_row * batch
            self._fits[batch] = (self.steps, curve, table)
        return curve, table

    def _fit(self, batch: int) -> np.ndarray:
        tokens = np.arange(1, max(self.max_tokens, 2) + 1)
        cells = [(t, mean, w) for (b, t), (mean, w) in self.cells.items() if b == batch]
        seen = sum(w * mean / self.calibrated.verify(batch, t) for t, mean, w in cells)
        scale = seen / sum(w for _, _, w in cells) if cells else self.verify_scale
        prior = [self.calibrated.verify(batch, int(t)) * scale for t in tokens]
        t = np.array([c[0] for c in cells] + list(tokens), np.float64)
        y = np.array([c[1] for c in cells] + prior)
        w = np.sqrt(np.array([c[2] for c in cells] + [self.PRIOR] * len(tokens)))
        x = np.stack([np.ones_like(t), (t > 1).astype(np.float64), t - 1], axis=1)  # a, b, c
        best, best_err = None, np.inf
        for cols in ([0, 1, 2], [0, 2], [0, 1], [0]):  # the best fit whose jump and slope are not negative
            coef = np.linalg.lstsq(x[:, cols] * w[:, None], y * w, rcond=None)[0]
            if (coef[1:] < 0).any():
                continue
            err = float(np.sum(((x[:, cols] @ coef - y) * w) ** 2))
            if err < best_err:
                full = np.zeros(3)
                full[cols] = coef
                best, best_err = full, err
        grid = np.stack([np.ones(len(tokens)), (tokens > 1).astype(np.float64), tokens - 1.0], axis=1)
        return np.maximum(grid @ best, 0.0)
