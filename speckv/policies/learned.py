"""``learned``: a small MLP predicts whether the target will accept the next drafted token; drafting goes on only
while the expected tokens per second still rise under the engine's measured costs.

Why not regress γ directly (as the SpecKV write-up does)? Expected tokens per step only grow with γ; what matters
is tokens per *second*, and the costs differ by machine, batch size and compression. So the MLP learns the part
that transfers — P(accept position i | the drafted prefix was accepted, the draft's signals, history,
compression) — and the stopping rule does the arithmetic with measured costs:

    after proposing k tokens, with P_j = Π_{m≤j} a_m the chance the first j are all accepted,
    E_k = 1 + Σ_{j≤k} P_j  expected tokens this step, T_k = (k+1)·draft + verify(B, 1+k)  its time;
    propose token k+1 only if (E_k + P_{k+1}) / (T_k + Δ) > E_k / T_k,  Δ = verify(B, 2+k) − verify(B, 1+k).

In a batch the sums run over its rows, because the widest row sets the step's time (see :func:`decide`), and the
whole batch falls back to plain decoding when a drafted column cannot pay for itself (:meth:`LearnedPolicy.budget`).
The costs are calibrated once and corrected online from every step the engine measures; and a batch size whose
drafting steps are measured to deliver fewer tokens per ms than its plain steps goes back to plain decoding, whatever
the estimates say (:meth:`LearnedPolicy._measured_pays`).

Without weights (``--policy learned`` before ``speckv train-policy`` has produced any) the acceptance estimate
falls back to the draft's own top-1 probability; the cost-aware rule is the same.
"""

from __future__ import annotations

import json
import math
import operator
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from speckv.costs import monotone
from speckv.policies.base import StepContext

COMPRESSIONS = ("fp32", "bf16", "fp16", "int8", "nf4")
FEATURES = ("top1", "entropy", "position", "accept_rate", "prefix_min_top1", "log_context",
            *(f"is_{c}" for c in COMPRESSIONS))
DEFAULT_PATH = Path(__file__).resolve().parent.parent / "assets" / "policy" / "learned.safetensors"


class AcceptanceMLP(torch.nn.Module):
    def __init__(self, n_features: int = len(FEATURES), hidden: int = 8) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(n_features, hidden), torch.nn.ReLU(),
            torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
            torch.nn.Linear(hidden, 1),
        )
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, F] raw features -> [N] logit of P(accept)
        return self.net((x - self.mean) / self.std).squeeze(-1)


def feature_matrix(
    top1: torch.Tensor,  # [N]
    entropy: torch.Tensor,  # [N]
    position: torch.Tensor,  # [N] 0-based draft position
    accept_rate: torch.Tensor,  # [N]
    prefix_min_top1: torch.Tensor,  # [N] min top-1 over earlier positions of this draft (1 at position 0)
    context_len: torch.Tensor,  # [N]
    compression: list[str] | str,
) -> torch.Tensor:  # [N, F], columns in FEATURES order
    """The one definition of the MLP's inputs, shared by training (from telemetry) and inference."""
    n = top1.shape[0]
    if isinstance(compression, str):
        comp = torch.zeros(n, len(COMPRESSIONS))
        comp[:, COMPRESSIONS.index(compression)] = 1
    else:
        comp = torch.nn.functional.one_hot(torch.tensor([COMPRESSIONS.index(c) for c in compression]),
                                           len(COMPRESSIONS)).float()
    cols = [top1, entropy, position.float(), accept_rate, prefix_min_top1, torch.log1p(context_len.float())]
    return torch.cat([torch.stack([c.float() for c in cols], dim=1), comp], dim=1)


class _FoldedMLP:
    """The MLP in numpy for per-step decisions: normalisation folded into the first layer, biases carried by a
    constant unit (a hidden unit fixed at 1, which ReLU keeps), so that a decision is a handful of numpy calls.

    The first layer splits into the part that changes with the draft position (top-1, entropy, prefix minimum:
    one [B, 3] @ [3, H] product) and a per-step table over positions of everything else (history, context,
    compression, position). The number of calls is what costs: in the engine they run right after a forward pass
    has flushed the CPU caches, where each distinct numpy call costs tens of µs, not one.
    """

    def __init__(self, mlp: AcceptanceMLP, max_position: int = 64) -> None:
        lin1, lin2, lin3 = (m for m in mlp.net if isinstance(m, torch.nn.Linear))
        std, mean = mlp.std.numpy().astype(np.float64), mlp.mean.numpy().astype(np.float64)
        w1 = lin1.weight.detach().numpy().T.astype(np.float64) / std[:, None]  # [F, H]
        b1 = lin1.bias.detach().numpy().astype(np.float64) - mean @ w1
        hidden = w1.shape[1]

        def unit(row: np.ndarray, one: float = 0.0) -> np.ndarray:  # append the constant unit's column
            return np.concatenate([row, np.full(row.shape[:-1] + (1,), one)], axis=-1)

        col = {name: i for i, name in enumerate(FEATURES)}
        self.w_signals = unit(w1[[col["top1"], col["entropy"], col["prefix_min_top1"]]])  # [3, H+1]
        self.w_history = unit(w1[[col["accept_rate"], col["log_context"]]])  # [2, H+1]
        self.w_position = unit(np.arange(max_position)[:, None] * w1[col["position"]])  # [P, H+1]
        self.bias = {c: unit(b1 + w1[col[f"is_{c}"]], 1.0) for c in COMPRESSIONS}  # [H+1], constant unit = 1
        self.w2 = np.zeros((hidden + 1, hidden + 1))  # [[W2, 0], [b2, 1]]
        self.w2[:hidden, :hidden] = lin2.weight.detach().numpy().T
        self.w2[hidden, :hidden], self.w2[hidden, hidden] = lin2.bias.detach().numpy(), 1.0
        self.w3 = np.append(lin3.weight.detach().numpy()[0], lin3.bias.detach().numpy()[0]).astype(np.float64)
        self.neg_w3 = -self.w3
        # the same weights as Python lists, for a batch of one: a loop of float operations touches far less code
        # than a dozen numpy calls do, which is what counts right after a forward pass (see the class docstring)
        # per unit: position, top-1, entropy and prefix-minimum weights
        self.one_layer1 = (self.w_position[1, :hidden].tolist(), *self.w_signals[:, :hidden].tolist())
        self.one_history = list(zip(*self.w_history[:, :hidden].tolist()))
        self.one_bias = {c: b[:hidden].tolist() for c, b in self.bias.items()}
        self.one_layer2 = list(zip(self.w2[:hidden, :hidden].T.tolist(), self.w2[hidden, :hidden].tolist()))
        self.one_w3, self.one_b3 = self.w3[:hidden].tolist(), float(self.w3[hidden])

    def step_table(self, accept_rate: np.ndarray, context_len: np.ndarray, compression: str,
                   positions: int) -> np.ndarray:
        """[positions, B, H+1]: the first layer's pre-activation without the draft signals, per position and row."""
        history = np.stack([accept_rate, np.log1p(context_len)], axis=1) @ self.w_history + self.bias[compression]
        return self.w_position[:positions, None, :] + history[None]

    def prob(self, table_at_pos: np.ndarray, signals: np.ndarray) -> np.ndarray:
        """P(accept) per row; ``signals`` [B, 3] = (top-1, entropy, prefix minimum of top-1)."""
        h = signals @ self.w_signals
        h += table_at_pos
        h = np.maximum(h, 0.0, out=h) @ self.w2
        e = np.maximum(h, 0.0, out=h) @ self.neg_w3  # -logit: the sigmoid 1 / (1 + exp(-logit)) in three calls
        np.exp(e, out=e)
        e += 1.0
        return np.reciprocal(e, out=e)

    def step_base_one(self, accept_rate: float, context_len: float, compression: str) -> list[float]:
        """One row's first-layer pre-activation without the draft signals and the position, as a list."""
        history = (accept_rate, math.log1p(context_len))
        return [b + history[0] * w[0] + history[1] * w[1]
                for b, w in zip(self.one_bias[compression], self.one_history)]

    def prob_one(self, base: list[float], pos: int, top1: float, entropy: float, prefix_min: float) -> float:
        """P(accept) for one row, in plain Python floats: the same function as :meth:`logit` on one row."""
        h = [v if (v := b + pos * wp + top1 * w0 + entropy * w1 + prefix_min * w2) > 0.0 else 0.0
             for b, wp, w0, w1, w2 in zip(base, *self.one_layer1)]
        h = [v if (v := sum(map(operator.mul, h, col)) + b) > 0.0 else 0.0 for col, b in self.one_layer2]
        z = sum(map(operator.mul, h, self.one_w3)) + self.one_b3
        return 1.0 / (1.0 + math.exp(-max(z, -60.0)))


def _where(cond, a, b):
    """``np.where`` for arrays, a plain conditional for one row's floats (the batch-1 path stays in Python)."""
    return np.where(cond, a, b) if isinstance(cond, np.ndarray) else (a if cond else b)


def _group_sum(x, weight, group: np.ndarray | None):
    """Sum of ``x · weight`` over each row's batch (``group`` ids, summed back onto the rows; ``None``: one batch,
    a scalar)."""
    if group is None:
        if isinstance(weight, np.ndarray):
            return x @ weight  # one call: the batch path runs this three times per decision
        return x.sum() * weight if isinstance(x, np.ndarray) else x * weight
    return np.bincount(group, weights=x * weight)[group]


def decide(a, p_all, expected, live, pos: int, costs: list | None, group: np.ndarray | None = None,
           weight: np.ndarray | float = 1.0, margin: float = 0.0):
    """The stopping rule, shared by the policy and the offline replay. Returns (propose, more, p_all', expected').

    ``a``: P(accept the token at ``pos`` | its prefix accepted); ``p_all``/``expected``: P(all proposed so far
    accepted) and E[tokens] of the step so far, per row; ``live``: rows still drafting — numpy arrays, or floats
    and a bool for a batch of one. ``costs[k] = (draft ms, ms of a step that verifies 1+k tokens per row)``, for
    the batch as a whole.

    A step's time is set by its widest row: every row pays for a column of drafted tokens, proposed or not. So the
    decision is per column, for a whole batch (``group``): propose position ``pos`` — in every live row — if the
    batch's expected extra tokens raise its tokens per second, G·S > E·ΔV (S: time of the step if it stops here,
    E: its expected tokens, G: expected extra tokens, ΔV: extra verify time); draft one more position only if, with
    the same acceptance again, it could pay for its draft forward too. With one row this is the per-row rule.
    ``weight`` values each row's tokens (see :meth:`LearnedPolicy.row_weights`); with ``margin`` m a position must
    raise tokens per second by a factor 1 + m, not just by something.
    """
    p_next = p_all * a
    if costs is None:  # no costs: keep while the next token is more likely kept than not
        keep = live & (p_next >= 0.5)
        more = keep & (p_next * a >= 0.5)
    else:
        draft, verify_here = costs[pos]
        spent = (pos + 1) * draft + verify_here  # this position's draft forward has run already
        extra = costs[pos + 1][1] - verify_here
        gain, tokens = _group_sum(_where(live, p_next, 0.0), weight, group), _group_sum(expected, weight, group)
        # (E + G) / (S + ΔV) > (1 + m) · E / S
        keep = live & (gain * spent > tokens * (extra + margin * (spent + extra)))
        gain2 = _group_sum(_where(keep, p_next * a, 0.0), weight, group)
        extra2 = draft + costs[min(pos + 2, len(costs) - 1)][1] - costs[pos + 1][1]
        spent2, tokens2 = spent + extra, tokens + gain
        more = keep & (gain2 * spent2 > tokens2 * (extra2 + margin * (spent2 + extra2)))
    return keep, more, _where(keep, p_next, p_all), _where(keep, expected + p_next, expected)


class LearnedPolicy:
    name = "learned"
    needs_costs = True

    def __init__(self, mlp: AcceptanceMLP | None, gamma_max: int, meta: dict | None = None) -> None:
        self.mlp, self.gamma_max, self.meta = mlp, gamma_max, meta or {}
        self.fast = _FoldedMLP(mlp) if mlp is not None else None
        self._calibrated: dict[int, list[tuple[float, float]]] = {}  # calibrated costs by batch size
        # what real steps cost, learned online from the engine's measured steps: verify ms by (batch, tokens per row),
        # ms of a draft forward by batch, bookkeeping ms per row, and how measurements compare with calibration
        self._verify_ms: dict[tuple[int, int], float] = {}
        self._draft_ms: dict[int, float] = {}
        self._draft_scale, self._verify_scale, self._overhead_per_row = 1.0, 1.0, 0.0
        self._costs, self._costs_batch, self._costs_age = [], 0, 0  # the step cost list in use, and for which batch
        self._gammas: dict[tuple[int, int], torch.Tensor] = {}  # budgets handed out, by (batch, γ): made once
        # what steps delivered, measured: tokens per row per ms by (batch, drafted?), and how many steps were counted
        self._rate: dict[tuple[int, bool], float] = {}
        self._rate_steps: dict[tuple[int, bool], int] = {}
        self._pending: tuple[int, bool, float] | None = None  # the last step's (batch, drafted?, tokens per row)

    @classmethod
    def load(cls, path: str | Path | None, gamma_max: int) -> LearnedPolicy:
        path = Path(path) if path else DEFAULT_PATH
        if not path.is_file():
            if path != DEFAULT_PATH:
                raise FileNotFoundError(f"learned policy weights not found: {path}")
            return cls(None, gamma_max)  # documented fallback: draft top-1 as the acceptance estimate
        meta = json.loads(path.with_suffix(".json").read_text())
        if list(meta["features"]) != list(FEATURES):
            raise ValueError(f"{path} was trained on features {meta['features']}, this speckv uses {FEATURES}")
        mlp = AcceptanceMLP(len(FEATURES), meta["hidden"])
        mlp.load_state_dict(load_file(path))
        mlp.eval()
        return cls(mlp, gamma_max, meta)

    def save(self, path: str | Path, meta: dict) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.mlp.state_dict().items()}, str(path))
        path.with_suffix(".json").write_text(json.dumps({**meta, "features": list(FEATURES)}, indent=2))

    # ---------------------------------------------------------------- protocol
    # Per-step state is plain numpy (a few µs per decision); only what must survive row pruning is in ctx.state.

    #: after this many plain steps a batch drafts once more, to re-measure acceptance; the interval doubles (up to
    #: PROBE_MAX) while drafting stays not worth it, and resets when it is
    PROBE_EVERY, PROBE_MAX = 8, 64
    #: weight of a new measurement in the running cost corrections and the first-token acceptance
    EMA = 0.2
    #: leave plain decoding (and, in a batch, widen a step) only for an expected gain of at least MARGIN·√batch:
    #: plain decoding is the safe side, and the wider the batch the more a drafted step's cost is an estimate (wide
    #: verify shapes are extrapolated, a drafter catching up after plain steps inflates one step's draft time).
    #: Measured, bf16: a flat 0.2 in batches kept batch 4 plain (0.97× fixed γ=4); a flat 0.05 gave 1.04–1.13× at
    #: batch 4 but drafted at batch 16, where it lost 5–6 % to plain decoding
    MARGIN = 0.05
    #: the step cost list is rebuilt from the running measurements every this many steps (and when a new batch size
    #: or a new (batch, tokens) cell is measured); the measurements move slowly, a rebuild is dozens of Python calls
    COST_REFRESH = 8
    #: drafting must pay in what the engine measures, not only in expectation: once a batch size above 1 has run this
    #: many drafting steps and this many plain ones, it drafts only while the drafting steps deliver at least the
    #: tokens per row per ms of the plain ones (estimates of acceptance, draft and verify time can all be off together;
    #: this check is not an estimate). Where drafting clearly pays, plain steps are rare and the check stays out of the
    #: way; it acts where the estimates sit near the line and the policy switches between the two
    GUARD_STEPS = 4

    def init_state(self, ctx: StepContext) -> None:
        ctx.state["first_accept_ema"] = torch.full((ctx.batch_size,), 0.5)
        # a static batch's rows all start together and only leave, so every live row has run the same steps; once
        # one row is left, its first-token acceptance lives in a float (batches only shrink)
        self._steps, self._plain_steps, self._probe_every, self._drafting = 0, 0, self.PROBE_EVERY, False
        self._first_accept_one: float | None = None
        self._pending = None

    @staticmethod
    def row_weights(ctx: StepContext, steps: int) -> np.ndarray:
        """How much a token of each row is worth to the batch: its share of the batch's remaining steps.

        A static batch runs until its slowest row is done, so a token that shortens the longest-running row saves a
        whole batched step, while one for a row that will finish early anyway only saves that row's share of the
        later, smaller steps. Rows are weighted by their expected remaining steps (tokens left / tokens per step so
        far, over the ``steps`` the batch has run) relative to the batch's largest; rows alike weigh 1."""
        done = ctx.num_generated.numpy().astype(np.float64)
        per_step = np.maximum(done / max(steps, 1), 1.0)
        left = np.maximum(ctx.max_new_tokens.numpy() - done, 1.0) / per_step
        return left / left.max()

    def budget(self, ctx: StepContext) -> torch.Tensor:
        """γ_max for every row when drafting pays at this batch size, else 0 for all (plain batched decoding).

        Drafting one column pays when (W + Σ_b w_b·a_b) / (T + ΔT) > (1 + margin) · W / T: a_b is row b's running
        first-token acceptance, w_b its weight (:meth:`row_weights`, W their sum), T the measured time of a plain
        step at this batch size and ΔT what a drafted column adds to it (one draft forward plus the wider verify).
        A batch that stops drafting re-probes now and then, if any acceptance could pay; at a batch size it has not
        run yet, the first step is plain, so that T is measured, not assumed.

        A row alone (batch 1) sees its draft's top-1 and entropy for the first token before it pays for that token's
        verify (:meth:`keep_drafting` declines a poor one), so ΔT is only the first draft forward there. Charging it
        the wider verify as well sent a row plain after three first-token rejections in a row (the running
        acceptance falls from 0.5 to 0.26), in runs whose drafted steps kept 0.8–0.95 of their first tokens.

        The plain path is a few Python operations: it runs on every step of a batch that does not speculate."""
        n, gamma = ctx.batch_size, min(self.gamma_max, ctx.gamma_max)
        self._drafting, self._margin = False, self.MARGIN * n ** 0.5  # the margin holds for this step's decisions too
        if ctx.costs is None:
            return self._start(ctx, 1.0 if n == 1 else np.ones(n), gamma)
        self._correct_costs(ctx)
        if (n, 1) not in self._verify_ms:  # measure plain decoding at this batch size first: the baseline to beat
            return self._budget(n, 0)
        self._costs_age += 1
        if self._costs_batch != n or self._costs_age >= self.COST_REFRESH:
            self._costs, self._costs_batch, self._costs_age = self._step_costs(ctx.costs, n), n, 0
        plain, column = self._costs[0][1], self._costs[0][0] + self._costs[1][1] - self._costs[0][1]
        needed = (1 + self._margin) * (plain + column) / plain - 1
        if needed >= 1:  # not even a first token accepted every time would pay: plain decoding, no probes
            return self._budget(n, 0)
        if n == 1:  # the first draft forward only has to pay for itself: see the docstring
            needed = (1 + self._margin) * (plain + self._costs[0][0]) / plain - 1
            weight, rows, gain = 1.0, 1.0, self._first_accept(ctx)
        else:
            weight = self.row_weights(ctx, self._steps)
            rows, gain = weight.sum(), float(ctx.state["first_accept_ema"].numpy() @ weight)
        if gain > needed * rows and self._measured_pays(n):
            self._plain_steps, self._probe_every = 0, self.PROBE_EVERY
            # a drafted column this batch size has not run yet is a guess: try one before trusting it with more
            return self._start(ctx, weight, gamma if (n, 2) in self._verify_ms else 1)
        self._plain_steps += 1
        if self._plain_steps > self._probe_every:  # one drafted token per row re-measures first-token acceptance
            self._plain_steps, self._probe_every = 0, min(2 * self._probe_every, self.PROBE_MAX)
            return self._start(ctx, weight, 1)
        return self._budget(n, 0)

    def _measured_pays(self, n: int) -> bool:
        """False once drafting steps at batch ``n`` > 1 have delivered fewer tokens per row per ms than its plain steps.

        Not at batch 1: there one step delivers anything from 1 to γ+1 tokens, so a running mean over a few steps
        falls below the plain rate on any run of rejections, and the check kept a row plain for long stretches where
        drafting paid (measured, int8: 38 % of steps plain, slower than fixed γ=3). A row alone is judged position by
        position from its own draft's signals, which a batch cannot be."""
        if n == 1 or min(self._rate_steps.get((n, drafted), 0) for drafted in (True, False)) < self.GUARD_STEPS:
            return True
        return self._rate[(n, True)] >= self._rate[(n, False)]

    def _budget(self, n: int, gamma: int) -> torch.Tensor:
        key = (n, gamma)
        if key not in self._gammas:  # the engine only reads budgets, so one tensor per (batch, γ) serves every step
            self._gammas[key] = torch.full((n,), gamma, dtype=torch.long)
        return self._gammas[key]

    def _start(self, ctx: StepContext, weight, gamma: int) -> torch.Tensor:
        """Set up a drafting step: per-row running products (floats for one row, arrays for a batch), the draft
        signals' buffer and the MLP's per-step table."""
        n = ctx.batch_size
        self._drafting, self._weight = True, weight
        if n == 1:
            self._p_all, self._expected, self._live, self._prefix_min = 1.0, 1.0, True, 1.0
            if self.fast is not None:  # plain floats: two tensor calls, not the rate property's four
                (accepted, judged), = ctx.accept_sums.tolist()
                self._base_one = self.fast.step_base_one(accepted / judged, ctx.context_len.item(), ctx.compression)
        else:
            self._p_all, self._expected, self._live = np.ones(n), np.ones(n), np.ones(n, bool)
            self._weight_sum = float(weight.sum())  # summed here: observe() runs right after a forward
            self._signals = np.ones((n, 3))  # top-1, entropy, prefix minimum of top-1 (1 before the first position)
            if self.fast is not None:
                self._table = self.fast.step_table(ctx.accept_rate.numpy(), ctx.context_len.numpy(),
                                                   ctx.compression, gamma)
        return self._budget(n, gamma)

    def _first_accept(self, ctx: StepContext) -> float:
        if self._first_accept_one is None:
            self._first_accept_one = ctx.state["first_accept_ema"].item()
        return self._first_accept_one

    def _step_costs(self, c, n: int) -> list[tuple[float, float]]:
        """[(draft ms, ms of a step verifying 1+k tokens per row)] at batch n, from what this engine measured.

        A (batch, tokens) verify cost the engine has run is its running measurement; one it has not run yet takes
        its ratio to the plain step from the nearest batch size where both were measured, else the calibrated figure
        scaled by how measurements compare with calibration (calibration runs synthetic forwards and misjudges the
        real step's shape: it put verify(16, 2) at verify(16, 1), the engine measured far more). Made non-decreasing
        in tokens."""
        calibrated = self._calibrated_at(c, n)
        draft = self._draft_ms.get(n, calibrated[0][0] * self._draft_scale)
        seen = [self._verify_ms[(n, 1 + k)] / v for k, (_, v) in enumerate(calibrated) if (n, 1 + k) in self._verify_ms]
        scale = sum(seen) / len(seen) if seen else self._verify_scale  # this batch size's own, where measured
        plain = self._verify_ms.get((n, 1))
        verify = []
        for k, (_, v) in enumerate(calibrated):
            measured = self._verify_ms.get((n, 1 + k))
            if measured is None and plain is not None:  # the shape measured at the nearest batch size, if any
                near = [m for m in self._verify_ms if m[1] == 1 + k and (m[0], 1) in self._verify_ms]
                if near:
                    m = min(near, key=lambda key: abs(key[0] - n))
                    measured = plain * self._verify_ms[m] / self._verify_ms[(m[0], 1)]
            verify.append(v * scale if measured is None else measured)
        rest = self._overhead_per_row * n
        return [(draft, v + rest) for v in monotone(verify)]

    def _calibrated_at(self, c, n: int) -> list[tuple[float, float]]:
        if n not in self._calibrated:  # interpolate once per batch size, not every step
            self._calibrated[n] = [(c.draft(n), c.verify(n, 1 + k)) for k in range(self.gamma_max + 3)]
        return self._calibrated[n]

    def _correct_costs(self, ctx: StepContext) -> None:
        """Fold the previous step's measured times into the running costs (plain Python: runs every step)."""
        step, w = ctx.last_step, self.EMA
        if "wall_ms" not in step:
            return
        n, tokens = step["batch"], step["tokens"]
        calibrated = self._calibrated_at(ctx.costs, n)

        def ema(old: float | None, new: float) -> float:
            return new if old is None else (1 - w) * old + w * new

        if self._pending is not None and self._pending[0] == n:  # what the step delivered, per row per ms
            key = self._pending[:2]
            self._rate[key] = ema(self._rate.get(key), self._pending[2] / step["wall_ms"])
            self._rate_steps[key] = self._rate_steps.get(key, 0) + 1
        self._pending = None

        if (n, tokens) not in self._verify_ms:
            self._costs_age = self.COST_REFRESH  # a newly measured cell: rebuild the cost list now
        self._verify_ms[(n, tokens)] = ema(self._verify_ms.get((n, tokens)), step["verify_ms"])
        self._verify_scale = ema(self._verify_scale, step["verify_ms"] / calibrated[tokens - 1][1])
        if step["forwards"]:
            per_forward = step["draft_ms"] / step["forwards"]
            self._draft_ms[n] = ema(self._draft_ms.get(n), per_forward)
            self._draft_scale = ema(self._draft_scale, per_forward / calibrated[0][0])
        rest = max(step["wall_ms"] - step["draft_ms"] - step["verify_ms"], 0.0) / n
        self._overhead_per_row = ema(self._overhead_per_row, rest)

    def acceptance(self, pos: int, top1: np.ndarray, entropy: np.ndarray) -> np.ndarray:
        """[B] P(accept the token drafted at ``pos`` | its prefix accepted), in the step :meth:`budget` set up."""
        if len(top1) == 1:
            return np.array([self._acceptance_one(pos, float(top1[0]), float(entropy[0]))])
        signals = self._signals
        signals[:, 0], signals[:, 1] = top1, entropy
        if self.fast is None:
            return signals[:, 0].copy()
        return self.fast.prob(self._table[min(pos, len(self._table) - 1)], signals)

    def _acceptance_one(self, pos: int, top1: float, entropy: float) -> float:
        return top1 if self.fast is None else self.fast.prob_one(self._base_one, pos, top1, entropy, self._prefix_min)

    def keep_drafting(self, ctx: StepContext, pos: int, top1: torch.Tensor, entropy: torch.Tensor):
        costs = self._costs if ctx.costs is not None else None
        if ctx.batch_size == 1:  # Python floats throughout (see _FoldedMLP)
            t1 = top1.item()
            a = self._acceptance_one(pos, t1, entropy.item())
            keep, more, self._p_all, self._expected = decide(a, self._p_all, self._expected, self._live, pos, costs)
            self._prefix_min, self._live = min(self._prefix_min, t1), more
            return _ONE[keep], _ONE[more]
        signals = self._signals
        a = self.acceptance(pos, top1.numpy(), entropy.numpy())
        keep, more, self._p_all, self._expected = decide(a, self._p_all, self._expected, self._live, pos, costs,
                                                         weight=self._weight, margin=self._margin)
        np.minimum(signals[:, 2], signals[:, 0], out=signals[:, 2])
        self._live = more
        return torch.from_numpy(keep), torch.from_numpy(more)

    def observe(self, ctx: StepContext, num_draft: torch.Tensor, num_accepted: torch.Tensor) -> None:
        self._steps += 1
        n = ctx.batch_size
        if not self._drafting:  # a plain step: a token per row, nothing drafted, nothing to learn about acceptance
            self._pending = (n, False, 1.0)
            return
        if n == 1:
            self._pending = (1, True, 1.0 + num_accepted.item())
            if num_draft.item():
                accepted = num_accepted.item() > 0
                self._first_accept_one = (1 - self.EMA) * self._first_accept(ctx) + self.EMA * accepted
            return
        accepted = num_accepted.numpy()
        self._pending = (n, True, 1.0 + float(accepted @ self._weight) / self._weight_sum)  # weighted mean
        drafted = num_draft.numpy() > 0
        ema = ctx.state["first_accept_ema"].numpy()  # updated in place (numpy: a few µs, not torch's dozens)
        ema[drafted] = (1 - self.EMA) * ema[drafted] + self.EMA * (accepted[drafted] > 0)


#: a batch of one's decisions, made once: keep_drafting returns these rather than building tensors every call
_ONE = {False: torch.zeros(1, dtype=torch.bool), True: torch.ones(1, dtype=torch.bool)}
