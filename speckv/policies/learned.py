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
The costs are calibrated once and corrected online from every step the engine measures.

Without weights (``--policy learned`` before ``speckv train-policy`` has produced any) the acceptance estimate
falls back to the draft's own top-1 probability; the cost-aware rule is the same.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from speckv.costs import monotone
from speckv.policies.base import StepContext

COMPRESSIONS = ("fp32", "bf16", "fp16", "int8", "nf4")
FEATURES = ("top1", "entropy", "position", "accept_rate_ema", "prefix_min_top1", "log_context",
            *(f"is_{c}" for c in COMPRESSIONS))
DEFAULT_PATH = Path(__file__).resolve().parent.parent / "assets" / "policy" / "learned.safetensors"


class AcceptanceMLP(torch.nn.Module):
    def __init__(self, n_features: int = len(FEATURES), hidden: int = 32) -> None:
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
    accept_rate_ema: torch.Tensor,  # [N]
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
    cols = [top1, entropy, position.float(), accept_rate_ema, prefix_min_top1, torch.log1p(context_len.float())]
    return torch.cat([torch.stack([c.float() for c in cols], dim=1), comp], dim=1)


class _FoldedMLP:
    """The MLP in numpy with the normalisation folded into the first layer, for per-step decisions in a few µs.

    The first layer splits into the part that changes with the draft position (top-1, entropy, prefix minimum:
    one [B, 3] @ [3, H] product; the position: a row of a table) and the part that is fixed for a step (history,
    context, compression), computed once per step. Every call is a handful of numpy operations: in the engine they
    run right after a target forward has flushed the CPU caches, so their number is what costs.
    """

    def __init__(self, mlp: AcceptanceMLP, max_position: int = 64) -> None:
        lin1, lin2, lin3 = (m for m in mlp.net if isinstance(m, torch.nn.Linear))
        std, mean = mlp.std.numpy().astype(np.float64), mlp.mean.numpy().astype(np.float64)
        w1 = lin1.weight.detach().numpy().T.astype(np.float64) / std[:, None]  # [F, H]
        self.b1 = lin1.bias.detach().numpy().astype(np.float64) - mean / std @ (w1 * std[:, None])
        self.w1 = w1
        self.col = {name: i for i, name in enumerate(FEATURES)}
        self.w_signals = w1[[self.col["top1"], self.col["entropy"], self.col["prefix_min_top1"]]]  # [3, H]
        self.w_position = np.arange(max_position)[:, None] * w1[self.col["position"]]  # [P, H]
        self.w2, self.b2 = lin2.weight.detach().numpy().T.astype(np.float64), lin2.bias.detach().numpy()
        self.w3, self.b3 = lin3.weight.detach().numpy()[0].astype(np.float64), float(lin3.bias.detach()[0])

    def step_base(self, accept_rate_ema: np.ndarray, context_len: np.ndarray, compression: str) -> np.ndarray:
        c = self.col
        base = self.b1 + np.outer(accept_rate_ema, self.w1[c["accept_rate_ema"]])
        base += np.outer(np.log1p(context_len), self.w1[c["log_context"]])
        return base + self.w1[c[f"is_{compression}"]]

    def prob(self, base: np.ndarray, signals: np.ndarray, pos: int) -> np.ndarray:
        """P(accept) per row; ``signals`` [B, 3] = (top-1, entropy, prefix minimum of top-1)."""
        h = signals @ self.w_signals
        h += base
        h += self.w_position[pos]
        h = np.maximum(h, 0.0, out=h) @ self.w2
        h += self.b2
        z = np.maximum(h, 0.0, out=h) @ self.w3
        return 1.0 / (1.0 + np.exp(-self.b3 - z))


def _group_sum(x: np.ndarray, group: np.ndarray | None):
    """Sum of ``x`` over each row's batch (``group`` ids, summed back onto the rows; ``None``: one batch, a scalar)."""
    if group is None:
        return x.sum()
    return np.bincount(group, weights=x)[group]


def decide(a: np.ndarray, p_all: np.ndarray, expected: np.ndarray, live: np.ndarray, pos: int,
           costs: list | None, group: np.ndarray | None = None, weight: np.ndarray | float = 1.0,
           margin: float = 0.0):
    """The stopping rule, shared by the policy and the offline replay. Returns (propose, more, p_all', expected').

    ``a``: P(accept the token at ``pos`` | its prefix accepted); ``p_all``/``expected``: P(all proposed so far
    accepted) and E[tokens] of the step so far, per row; ``live``: rows still drafting. ``costs[k] = (draft ms,
    ms of a step that verifies 1+k tokens per row)``, for the batch as a whole.

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
        gain, tokens = _group_sum(np.where(live, p_next, 0.0) * weight, group), _group_sum(expected * weight, group)
        # (E + G) / (S + ΔV) > (1 + m) · E / S
        keep = live & (gain * spent > tokens * (extra + margin * (spent + extra)))
        gain2 = _group_sum(np.where(keep, p_next * a, 0.0) * weight, group)
        extra2 = draft + costs[min(pos + 2, len(costs) - 1)][1] - costs[pos + 1][1]
        spent2, tokens2 = spent + extra, tokens + gain
        more = keep & (gain2 * spent2 > tokens2 * (extra2 + margin * (spent2 + extra2)))
    return keep, more, np.where(keep, p_next, p_all), np.where(keep, expected + p_next, expected)


class LearnedPolicy:
    name = "learned"
    needs_costs = True

    def __init__(self, mlp: AcceptanceMLP | None, gamma_max: int, meta: dict | None = None) -> None:
        self.mlp, self.gamma_max, self.meta = mlp, gamma_max, meta or {}
        self.fast = _FoldedMLP(mlp) if mlp is not None else None
        self._cost_table: dict[int, list[tuple[float, float]]] = {}  # calibrated costs by batch size
        # what real steps cost, learned online from the engine's measured steps: verify ms by (batch, tokens per row),
        # ms of a draft forward by batch, bookkeeping ms per row, and how measurements compare with calibration
        self._verify_ms: dict[tuple[int, int], float] = {}
        self._draft_ms: dict[int, float] = {}
        self._draft_scale, self._verify_scale, self._overhead_per_row = 1.0, 1.0, 0.0

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
    #: leave plain decoding (and, in a batch, widen a step) only for an expected gain of at least this much: plain
    #: decoding is the safe side and the estimate can err — step times are noisy, and a static batch waits for its
    #: slowest row (measured at batch 4: steps of 1.45 tokens per row on average cut the batch's steps only 1.22×)
    MARGIN, BATCH_MARGIN = 0.05, 0.2

    def init_state(self, ctx: StepContext) -> None:
        ctx.state["first_accept_ema"] = torch.full((ctx.batch_size,), 0.5)
        ctx.state["steps"] = torch.zeros(ctx.batch_size)
        self._plain_steps, self._probe_every = 0, self.PROBE_EVERY

    @staticmethod
    def row_weights(ctx: StepContext) -> np.ndarray:
        """How much a token of each row is worth to the batch: its share of the batch's remaining steps.

        A static batch runs until its slowest row is done, so a token that shortens the longest-running row saves a
        whole batched step, while one for a row that will finish early anyway only saves that row's share of the
        later, smaller steps. Rows are weighted by their expected remaining steps (tokens left / tokens per step so
        far) relative to the batch's largest; with one row, or rows alike, the weights are 1."""
        done = ctx.num_generated.numpy().astype(np.float64)
        per_step = np.maximum(done / np.maximum(ctx.state["steps"].numpy(), 1.0), 1.0)
        left = np.maximum(ctx.max_new_tokens.numpy() - done, 1.0) / per_step
        return left / left.max()

    def budget(self, ctx: StepContext) -> torch.Tensor:
        """γ_max for every row when drafting pays at this batch size, else 0 for all (plain batched decoding).

        Drafting one column pays when (W + Σ_b w_b·a_b) / (T + ΔT) > (1 + margin) · W / T: a_b is row b's running
        first-token acceptance, w_b its weight (:meth:`row_weights`, W their sum), T the measured time of a plain
        step at this batch size and ΔT what a drafted column adds to it (one draft forward plus the wider verify).
        A batch that stops drafting re-probes now and then, if any acceptance could pay; at a batch size it has not
        run yet, the first step is plain, so that T is measured, not assumed."""
        n = ctx.batch_size
        self._p_all, self._expected, self._prefix_min = np.ones((3, n))
        self._live, self._weight = np.ones(n, bool), 1.0
        if self.fast is not None:
            self._base = self.fast.step_base(ctx.accept_rate_ema.numpy(), ctx.context_len.numpy(), ctx.compression)
        gamma = torch.full((n,), min(self.gamma_max, ctx.gamma_max), dtype=torch.long)
        if ctx.costs is None:
            return gamma
        self._correct_costs(ctx)
        if (n, 1) not in self._verify_ms:  # measure plain decoding at this batch size first: the baseline to beat
            self._live[:] = False
            return torch.zeros(n, dtype=torch.long)
        self._costs = self._step_costs(ctx.costs, n)
        plain, column = self._costs[0][1], self._costs[0][0] + self._costs[1][1] - self._costs[0][1]
        self._weight = self.row_weights(ctx)
        rows, gain = self._weight.sum(), float(ctx.state["first_accept_ema"].numpy() @ self._weight)
        margin = self.BATCH_MARGIN if n > 1 else self.MARGIN
        needed = (1 + margin) * (plain + column) / plain - 1  # the mean first-token acceptance that pays
        if gain > needed * rows:
            self._plain_steps, self._probe_every = 0, self.PROBE_EVERY
            # a drafted column this batch size has not run yet is a guess: try one before trusting it with more
            return gamma if (n, 2) in self._verify_ms else gamma.clamp(max=1)
        self._plain_steps += 1
        # one drafted token per row re-measures first-token acceptance — unless no acceptance could pay here
        if needed < 1 and self._plain_steps > self._probe_every:
            self._plain_steps, self._probe_every = 0, min(2 * self._probe_every, self.PROBE_MAX)
            return gamma.clamp(max=1)
        self._live[:] = False
        return torch.zeros(n, dtype=torch.long)

    def _step_costs(self, c, n: int) -> list[tuple[float, float]]:
        """[(draft ms, ms of a step verifying 1+k tokens per row)] at batch n, from what this engine measured.

        A (batch, tokens) verify cost the engine has run is its running measurement; one it has not run yet takes
        its ratio to the plain step from the nearest batch size where both were measured, else the calibrated figure
        scaled by how measurements compare with calibration (calibration runs synthetic forwards and misjudges the
        real step's shape: it put verify(16, 2) at verify(16, 1), the engine measured far more). Made non-decreasing
        in tokens."""
        if n not in self._cost_table:  # interpolate once per batch size, not every step
            self._cost_table[n] = [(c.draft(n), c.verify(n, 1 + k)) for k in range(self.gamma_max + 3)]
        calibrated = self._cost_table[n]
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

    def _correct_costs(self, ctx: StepContext) -> None:
        """Fold the previous step's measured times into the running costs."""
        step, c, w = ctx.last_step, ctx.costs, self.EMA
        if "wall_ms" not in step:
            return
        n, tokens = step["batch"], step["tokens"]

        def ema(old: float | None, new: float) -> float:
            return new if old is None else (1 - w) * old + w * new

        self._verify_ms[(n, tokens)] = ema(self._verify_ms.get((n, tokens)), step["verify_ms"])
        self._verify_scale = ema(self._verify_scale, step["verify_ms"] / c.verify(n, tokens))
        if step["forwards"]:
            per_forward = step["draft_ms"] / step["forwards"]
            self._draft_ms[n] = ema(self._draft_ms.get(n), per_forward)
            self._draft_scale = ema(self._draft_scale, per_forward / c.draft(n))
        rest = max(step["wall_ms"] - step["draft_ms"] - step["verify_ms"], 0.0) / n
        self._overhead_per_row = ema(self._overhead_per_row, rest)

    def acceptance(self, ctx: StepContext, pos: int, top1: np.ndarray, entropy: np.ndarray) -> np.ndarray:
        if self.fast is None:
            return top1
        return self.fast.prob(self._base, np.stack([top1, entropy, self._prefix_min], axis=1), pos)

    def keep_drafting(self, ctx: StepContext, pos: int, top1: torch.Tensor, entropy: torch.Tensor):
        t1 = top1.numpy()
        a = self.acceptance(ctx, pos, t1, entropy.numpy())
        keep, more, self._p_all, self._expected = decide(a, self._p_all, self._expected, self._live, pos,
                                                         self._costs if ctx.costs is not None else None,
                                                         weight=self._weight,
                                                         margin=self.BATCH_MARGIN if ctx.batch_size > 1 else 0.0)
        self._prefix_min = np.minimum(self._prefix_min, t1)
        self._live = more
        return torch.from_numpy(keep), torch.from_numpy(more)

    def observe(self, ctx: StepContext, num_draft: torch.Tensor, num_accepted: torch.Tensor) -> None:
        ctx.state["steps"].numpy()[:] += 1
        drafted = num_draft.numpy() > 0
        ema = ctx.state["first_accept_ema"].numpy()  # updated in place (numpy: a few µs, not torch's dozens)
        ema[drafted] = (1 - self.EMA) * ema[drafted] + self.EMA * (num_accepted.numpy()[drafted] > 0)
