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


class LearnedPolicy:
    name = "learned"
    needs_costs = True

    def __init__(self, mlp: AcceptanceMLP | None, gamma_max: int, meta: dict | None = None) -> None:
        self.mlp, self.gamma_max, self.meta = mlp, gamma_max, meta or {}

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

    def init_state(self, ctx: StepContext) -> None:
        self._reset(ctx)

    def _reset(self, ctx: StepContext) -> None:
        n = ctx.batch_size
        ctx.state["p_all"] = torch.ones(n)  # P(every token proposed so far is accepted)
        ctx.state["expected"] = torch.ones(n)  # E_k, expected tokens from this step so far
        ctx.state["prefix_min"] = torch.ones(n)

    def budget(self, ctx: StepContext) -> torch.Tensor:
        self._reset(ctx)
        return torch.full((ctx.batch_size,), min(self.gamma_max, ctx.gamma_max), dtype=torch.long)

    @torch.inference_mode()
    def acceptance(self, ctx: StepContext, pos: int, top1: torch.Tensor, entropy: torch.Tensor) -> torch.Tensor:
        if self.mlp is None:
            return top1
        x = feature_matrix(top1, entropy, torch.full_like(top1, pos), ctx.accept_rate_ema, ctx.state["prefix_min"],
                           ctx.context_len, ctx.compression)
        return torch.sigmoid(self.mlp(x))

    def keep_drafting(self, ctx: StepContext, pos: int, top1: torch.Tensor, entropy: torch.Tensor) -> torch.Tensor:
        a = self.acceptance(ctx, pos, top1, entropy)
        p_next = ctx.state["p_all"] * a
        expected = ctx.state["expected"]
        if ctx.costs is None:  # no costs: keep while the next token is more likely kept than not
            keep = p_next >= 0.5
        else:
            b, c = ctx.batch_size, ctx.costs
            draft = c.draft(b)
            spent = (pos + 1) * draft + c.verify(b, 1 + pos)  # time of a step that stops here
            extra = draft + c.verify(b, 2 + pos) - c.verify(b, 1 + pos)  # marginal time of one more token
            keep = p_next * spent > expected * extra
        ctx.state["p_all"] = torch.where(keep, p_next, ctx.state["p_all"])
        ctx.state["expected"] = torch.where(keep, expected + p_next, expected)
        ctx.state["prefix_min"] = torch.minimum(ctx.state["prefix_min"], top1)
        return keep

    def observe(self, ctx: StepContext, num_draft: torch.Tensor, num_accepted: torch.Tensor) -> None:
        return None
