"""The decision rule: verify more candidates only while the expected tokens per second still rise.

A step of B rows that verifies 1 + W tokens per row (the widest row sets the forward's width) and spent D ms
drafting takes T(W) = D + step[W] ms, where ``step[k]`` is the measured ms of a step verifying 1 + k tokens per row
(:meth:`speckv.costs.OnlineCosts.step`). It is expected to commit E(W) = B + Σ_{k<W} G_k tokens, where G_k sums,
over the rows, the value of each row's k-th best node (the chance the node is on the accepted path: the product of
acceptances along its path). Column W+1 joins when it raises the rate, the first column by more than a margin m:

    (E + G_W) / T(W+1) > (1 + m_W) · E / T(W)   ⇔   G_W · T(W) > E · (T(W+1) − T(W)) + m_W · E · T(W+1)

with m_0 = m, the margin of leaving plain decoding (the safe side, against estimates that err together), and
m_W = ``later`` after it. A row alone (batch 1) runs ``later`` = 0: the margin asked again of every column
compounded (each cheap column had to add another m to the rate on its own), which cost learned 3–17 % in replays
of held-out steps (live, paired, together with the pooled costs of :class:`speckv.costs.OnlineCosts`: +10 % at
int8, +3 % at nf4, ±0 at bf16; ``bench/results/learned_rule_ab.md``). A batch keeps ``later`` = m: there a
column's worth is summed over rows against a width cost mostly extrapolated, and dropping it there verified more
lookup nodes at batch 8 and lost (grounded tasks: 0.92× `ar`, against 1.00–1.08× with it).

Columns are tried in order and the first that does not pay ends the step, so whether a node is verified depends
only on nodes valued at least as high — for a chain, the nodes before it, which keeps sampling lossless. One more
draft depth is worth its forward when the best new node per row, valued as if it were accepted as often as its
parent (``gain``), pays for that forward and the column it adds, by the same inequality; the j-th best new node
joins that forward while its own gain pays for the j-th node a row adds to it (the calibrated draft curve read at
batch × j) and one more column. With one row and a chain this is the classic rule: propose token k+1 while
(E_k + P_{k+1}) / (T_k + Δ) > E_k / T_k.

Written over arrays of steps (``[S, ...]``), so that the offline replay in ``speckv train-policy`` runs the very
same rule over thousands of logged steps at once.
"""

from __future__ import annotations

import math

import numpy as np


def margins(base: float, batch: int) -> tuple[float, float]:
    """(m_0, later) for a step of ``batch`` rows: ``base``·√batch to leave plain decoding, and the same for every
    further column in a batch, none for a row alone."""
    m = base * math.sqrt(batch)
    return m, (m if batch > 1 else 0.0)


def choose_width(
    gains: np.ndarray,  # [S, M] G_k per step: the batch's k-th best node values summed, non-increasing in k
    rows: np.ndarray,  # [S] rows per step (B: the tokens a plain step commits)
    step_ms: np.ndarray,  # [M+1] ms of a step verifying 1 + k tokens per row
    spent: np.ndarray,  # [S] ms already spent drafting this step
    margin: float,  # m_0: asked of the first column (leaving plain decoding)
    later: float = 0.0,  # m_W, W ≥ 1: asked of every further column
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # W [S], expected tokens E(W) [S], time T(W) [S]
    s, m = gains.shape
    width = np.zeros(s, np.int64)
    expected = rows.astype(np.float64)
    took = spent + step_ms[0]
    going = np.ones(s, bool)
    for k in range(min(m, len(step_ms) - 1)):
        wider = spent + step_ms[k + 1]
        m_k = margin if k == 0 else later
        go = going & (gains[:, k] * took > expected * (wider - took) + m_k * expected * wider)
        width += go
        expected = np.where(go, expected + gains[:, k], expected)
        took = np.where(go, wider, took)
        going = go
        if not going.any():
            break
    return width, expected, took


def worth_expanding(gain: float, expected: float, took: float, draft_ms: float, column_ms: float,
                    margin: float) -> bool:
    """One more draft forward (``draft_ms``) and the column it adds (``column_ms``) for ``gain`` expected tokens;
    ``margin``: the first column's, or ``later``'s once the step verifies any."""
    more = draft_ms + column_ms
    return gain * took > expected * more + margin * expected * (took + more)
