"""The batch gate: does the head draft at all this step, or does the batch decode plainly?

Drafting pays when some chain of W columns does: (B + Σ_b Σ_{k≤W} a_b^k) / T_W > (1 + m) · B / T, where a_b is row
b's running first-token acceptance (``ctx.first_accept``; a chain's k-th token is taken as accepted with a_b^k), T
the measured time of a plain step at this batch size and T_W that of a step drafting W forwards and verifying
1 + W tokens a row. Asking it of the first column alone (W = 1) kept a batch plain where the jump from one verified
token to two is the dear part and further tokens are cheap: int8 at batch 4 on an Intel Xeon, where a second token
costs 1.22× a plain step, a third 1.09× the second, and fixed γ=2 ran 1.14× ``ar`` while ``learned`` ran 1.00×.
A row alone (batch 1) sees its draft's signals for the first token before it pays for that token's verify (the
rule then declines a poor one), so there the test is W = 1 with only the first draft forward charged: charging it
the wider verify as well sent a row plain after three first-token rejections in a row, in runs whose drafted steps
kept 0.8–0.95 of their first tokens.

A batch that stops drafting re-probes now and then (one drafted token per row, after 8, 16, 32, 64 plain steps) if
any acceptance could pay; at a batch size it has not run yet the first step is plain, so that T is measured, not
assumed. The estimates behind all this can be wrong together, so in a batch one check is not an estimate: once a
batch size has run ``GUARD_STEPS`` drafting and plain steps each, it drafts only while its drafting steps deliver at
least the tokens per row per ms of its plain ones (:attr:`speckv.costs.OnlineCosts.rate`). Not at batch 1: one step
there delivers anything from 1 to γ+1 tokens, too noisy a rate (measured, int8: 38 % of steps plain, slower than
fixed γ=3); a row alone is judged position by position from its own draft's signals.

Prompt-lookup candidates cost no forward, so the gate never holds them back: the rule verifies them when they pay.
"""

from __future__ import annotations

import numpy as np

from speckv.costs import OnlineCosts

#: after this many plain steps a batch drafts once more, to re-measure acceptance; the interval doubles (up to
#: PROBE_MAX) while drafting stays not worth it, and resets when it is
PROBE_EVERY, PROBE_MAX = 8, 64
GUARD_STEPS = 4


class Gate:
    def __init__(self) -> None:
        self.plain_steps, self.probe_every = 0, PROBE_EVERY

    def decide(self, costs: OnlineCosts, n: int, first_accept: np.ndarray, margin: float, depth: int = 1) -> int:
        """Draft columns this step: 0 (plain), 1 (a probe, or a first try at a width not measured yet) or -1 (as
        many as the rule likes). ``first_accept`` [n]: each row's running first-token acceptance; ``depth``: the
        deepest chain the plan may draft."""
        if not costs.measured(n, 1):  # measure plain decoding at this batch size first: the baseline to beat
            return 0
        step = costs.step(n)
        plain, draft = step[0], costs.draft(n)
        widths = np.arange(1, 2 if n == 1 else max(2, min(depth, len(step) - 1) + 1))  # W
        cost = draft * widths + step[widths]  # [W] ms of a step drafting W forwards and verifying 1 + W a row
        beat = (1 + margin) * n / plain  # tokens per ms drafting must beat
        if not (n * (1 + widths) / cost > beat).any():  # even every drafted token accepted would not pay
            return 0
        took = plain + draft if n == 1 else cost
        a = np.clip(np.asarray(first_accept, dtype=np.float64), 0.0, 1.0)
        gain = np.cumsum([(a ** k).sum() for k in widths])  # [W] expected extra tokens of a W-column chain
        if ((n + gain) / took > beat).any() and self._measured_pays(costs, n):
            self.plain_steps, self.probe_every = 0, PROBE_EVERY
            return -1 if costs.measured(n, 2) else 1  # a width never run is a guess: try one column first
        self.plain_steps += 1
        if self.plain_steps > self.probe_every:  # one drafted token per row re-measures first-token acceptance
            self.plain_steps, self.probe_every = 0, min(2 * self.probe_every, PROBE_MAX)
            return 1
        return 0

    @staticmethod
    def _measured_pays(costs: OnlineCosts, n: int) -> bool:
        if n == 1 or min(costs.rate_steps.get((n, drafted), 0) for drafted in (True, False)) < GUARD_STEPS:
            return True
        return costs.rate[(n, True)] >= costs.rate[(n, False)]
