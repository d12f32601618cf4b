"""``learned``: a small MLP predicts whether the target will accept the next drafted token; drafting goes on only
while the expected tokens per second still rise under the engine's measured costs.

Why not regress γ directly (as the SpecKV write-up does)? Expected tokens per step only grow with γ; what matters
is tokens per *second*, and the costs differ by machine, batch size and compression. So the MLP learns the part
that transfers — P(accept position i | the drafted prefix was accepted, the draft's signals, history,
compression) — and the stopping rule does the arithmetic with measured costs:

    after proposing k tokens, with P_j = Π_{m≤j} a_m the chance the first j are all accepted,
    E_k = 1 + Σ_{j≤k} P_j  expected tokens this step, T_k = (k+1)·draft + verify(B, 1+k)  its time;
    propose token k+1 only if (E_k + P_{k+1}) / (T_k + Δ) > E_k / T_k,  Δ = draft + verify(B, 2+k) − verify(B, 1+k).

Without weights (``--policy learned`` before ``speckv train-policy`` has produced any) the acceptance estimate
falls back to the draft's own top-1 probability; the cost-aware rule is the same.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

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

    The first layer splits into the part that changes with the draft position (top-1, entropy, position, prefix
    minimum) and the part that is fixed for a step (history, context, compression), computed once per step.
    """

    def __init__(self, mlp: AcceptanceMLP) -> None:
        lin1, lin2, lin3 = (m for m in mlp.net if isinstance(m, torch.nn.Linear))
        std, mean = mlp.std.numpy().astype(np.float64), mlp.mean.numpy().astype(np.float64)
        w1 = lin1.weight.detach().numpy().T.astype(np.float64) / std[:, None]  # [F, H]
        self.b1 = lin1.bias.detach().numpy().astype(np.float64) - mean / std @ (w1 * std[:, None])
        self.w1 = w1
        self.w2, self.b2 = lin2.weight.detach().numpy().T.astype(np.float64), lin2.bias.detach().numpy()
        self.w3, self.b3 = lin3.weight.detach().numpy()[0].astype(np.float64), float(lin3.bias.detach()[0])
        self.col = {name: i for i, name in enumerate(FEATURES)}

    def step_base(self, accept_rate_ema: np.ndarray, context_len: np.ndarray, compression: str) -> np.ndarray:
        c = self.col
        base = self.b1 + np.outer(accept_rate_ema, self.w1[c["accept_rate_ema"]])
        base += np.outer(np.log1p(context_len), self.w1[c["log_context"]])
        return base + self.w1[c[f"is_{compression}"]]

    def prob(self, base: np.ndarray, top1, entropy, pos: int, prefix_min) -> np.ndarray:
        c, w1 = self.col, self.w1
        h = base + np.outer(top1, w1[c["top1"]]) + np.outer(entropy, w1[c["entropy"]])
        h += pos * w1[c["position"]] + np.outer(prefix_min, w1[c["prefix_min_top1"]])
        h = np.maximum(np.maximum(h, 0) @ self.w2 + self.b2, 0)
        return 1.0 / (1.0 + np.exp(-(h @ self.w3 + self.b3)))


def decide(a: np.ndarray, p_all: np.ndarray, expected: np.ndarray, pos: int, costs: list | None):
    """The stopping rule, shared by the policy and the offline replay.

    ``a``: P(accept the token at ``pos`` | prefix accepted); ``p_all``/``expected``: P(all proposed so far
    accepted) and E[tokens] of the step so far; ``costs[k] = (draft ms, verify ms for 1+k tokens)``.
    Returns (propose, more, p_all', expected'): propose while one more token raises expected tokens per second;
    look at the next position only if, with the same acceptance again, it could still pay for its draft forward.
    """
    p_next = p_all * a
    if costs is None:  # no costs: keep while the next token is more likely kept than not
        keep = p_next >= 0.5
        more = keep & (p_next * a >= 0.5)
    else:
        draft, verify_here = costs[pos]
        spent = (pos + 1) * draft + verify_here  # time of a step that stops before this token
        extra = draft + costs[pos + 1][1] - verify_here  # marginal time of proposing it
        keep = p_next * spent > expected * extra
        # after proposing it, would one more (guessed as likely as this one) beat stopping there?
        spent2, exp2 = spent + extra, expected + p_next
        extra2 = draft + costs[min(pos + 2, len(costs) - 1)][1] - costs[pos + 1][1]
        more = keep & (p_next * a * spent2 > exp2 * extra2)
    return keep, more, np.where(keep, p_next, p_all), np.where(keep, expected + p_next, expected)


class LearnedPolicy:
    name = "learned"
    needs_costs = True

    def __init__(self, mlp: AcceptanceMLP | None, gamma_max: int, meta: dict | None = None) -> None:
        self.mlp, self.gamma_max, self.meta = mlp, gamma_max, meta or {}
        self.fast = _FoldedMLP(mlp) if mlp is not None else None
        self._cost_table: dict[tuple[int, int], list[tuple[float, float]]] = {}
        # what a real step costs beyond the calibrated forwards (sampling, verification, bookkeeping), learned online
        # from measured steps: ms per row per draft forward, and ms per row per verified token
        self._draft_extra = 0.0
        self._verify_extra = 0.0

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

    #: a row that skipped drafting re-probes after this many plain steps, so its history can recover
    PROBE_EVERY = 8

    def init_state(self, ctx: StepContext) -> None:
        ctx.state["plain_steps"] = torch.zeros(ctx.batch_size, dtype=torch.long)

    def budget(self, ctx: StepContext) -> torch.Tensor:
        """γ_max, or 0 for rows whose recent acceptance cannot pay even for the first draft forward at this batch
        size: draft one token only if a·verify(B,1) > draft(B) + verify(B,2) − verify(B,1), with a the row's
        acceptance EMA (a sequence that stopped accepting goes back to plain batched decoding, and re-probes)."""
        n = ctx.batch_size
        self._p_all, self._expected, self._prefix_min = np.ones(n), np.ones(n), np.ones(n)
        if self.fast is not None:
            self._base = self.fast.step_base(ctx.accept_rate_ema.numpy(), ctx.context_len.numpy(), ctx.compression)
        gamma = torch.full((n,), min(self.gamma_max, ctx.gamma_max), dtype=torch.long)
        if ctx.costs is None:
            return gamma
        key = (n, id(ctx.costs))
        if key not in self._cost_table:  # interpolate once per batch size, not every step
            c = ctx.costs
            self._cost_table[key] = [(c.draft(n), c.verify(n, 1 + k)) for k in range(self.gamma_max + 3)]
        dx, vx = self._draft_extra * n, self._verify_extra * n
        self._costs = [(d + dx, v + vx * (1 + k)) for k, (d, v) in enumerate(self._cost_table[key])]
        draft = self._costs[0][0]
        worth = ctx.accept_rate_ema * self._costs[0][1] > draft + self._costs[1][1] - self._costs[0][1]
        probe = ctx.state["plain_steps"] >= self.PROBE_EVERY
        go = worth | probe
        ctx.state["plain_steps"] = torch.where(go, 0, ctx.state["plain_steps"] + 1)
        return torch.where(go, gamma, 0)

    def acceptance(self, ctx: StepContext, pos: int, top1: np.ndarray, entropy: np.ndarray) -> np.ndarray:
        if self.fast is None:
            return top1
        return self.fast.prob(self._base, top1, entropy, pos, self._prefix_min)

    def keep_drafting(self, ctx: StepContext, pos: int, top1: torch.Tensor, entropy: torch.Tensor):
        t1 = top1.numpy()
        a = self.acceptance(ctx, pos, t1, entropy.numpy())
        keep, more, self._p_all, self._expected = decide(a, self._p_all, self._expected, pos,
                                                         self._costs if ctx.costs is not None else None)
        self._prefix_min = np.minimum(self._prefix_min, t1)
        return torch.from_numpy(keep), torch.from_numpy(more)

    OVERHEAD_EMA = 0.2

    def observe(self, ctx: StepContext, num_draft: torch.Tensor, num_accepted: torch.Tensor) -> None:
        """Correct the calibrated costs with the step the engine just measured (so decisions price the whole step)."""
        step, c = ctx.last_step, ctx.costs
        if not step or c is None:
            return
        n, w = step["batch"], self.OVERHEAD_EMA
        verify_extra = (step["verify_ms"] - c.verify(n, step["tokens"])) / (n * step["tokens"])
        self._verify_extra = (1 - w) * self._verify_extra + w * max(verify_extra, 0.0)
        if step["forwards"]:
            draft_extra = (step["draft_ms"] / step["forwards"] - c.draft(n)) / n
            self._draft_extra = (1 - w) * self._draft_extra + w * max(draft_extra, 0.0)
