"""The acceptance model: P(the target accepts a candidate node | it accepted the node's parent).

A small MLP (2 × 8 hidden units) over what is known when the node is drafted — its own draft signals, where it sits
in the tree, the row's acceptance history, the context length and the target's compression level. ``features`` is
the one definition of its inputs, shared by training (from telemetry) and inference (from a live tree); the MLP
trains in torch (:class:`AcceptanceMLP`) and decides in numpy (:class:`AcceptanceModel`, normalisation folded into
the first layer: a decision over every node of a step is a handful of numpy calls).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

COMPRESSIONS = ("fp32", "bf16", "fp16", "int8", "nf4")
#: the MLP's inputs, in order (see :func:`features`)
FEATURES = ("prob", "top1", "entropy", "rank", "depth", "path_min", "is_lookup", "match", "accept_rate",
            "lookup_rate", "log_context", *(f"is_{c}" for c in COMPRESSIONS))
DEFAULT_PATH = Path(__file__).resolve().parents[2] / "assets" / "policy" / "learned.safetensors"


def features(
    prob: np.ndarray,  # [M] the node's draft probability (a sampled node: its distribution's top-1; lookup: 1)
    top1: np.ndarray,  # [M] top-1 of the distribution it was drawn from (lookup: 0)
    entropy: np.ndarray,  # [M] entropy of that distribution, nats (lookup: 0)
    rank: np.ndarray,  # [M] order among its parent's head children (0 = top choice)
    depth: np.ndarray,  # [M] 1 = a child of the root
    path_min: np.ndarray,  # [M] lowest draft probability on the path above it (1 at depth 1)
    source: np.ndarray,  # [M] 0 head, 1 lookup
    match: np.ndarray,  # [M] lookup's suffix-match length (0 for head nodes)
    accept_rate: np.ndarray,  # [M] the row's head acceptance history
    lookup_rate: np.ndarray,  # [M] the row's lookup acceptance history
    context_len: np.ndarray,  # [M]
    compression: str | np.ndarray,  # one level, or [M] of them
) -> np.ndarray:  # [M, F] float64, columns in FEATURES order
    n = len(prob)
    comp = np.zeros((n, len(COMPRESSIONS)))
    if isinstance(compression, str):
        comp[:, COMPRESSIONS.index(compression)] = 1.0
    else:
        comp[np.arange(n), [COMPRESSIONS.index(c) for c in compression]] = 1.0
    cols = (prob, top1, entropy, rank, depth, path_min, source, match, accept_rate, lookup_rate,
            np.log1p(np.asarray(context_len, np.float64)))
    return np.concatenate([np.stack([np.asarray(c, np.float64) for c in cols], axis=1), comp], axis=1)


class AcceptanceMLP(torch.nn.Module):
    """The trainable form: raw features in, logit of P(accept) out (normalisation buffers set from the data)."""

    def __init__(self, n_features: int = len(FEATURES), hidden: int = 8) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(n_features, hidden), torch.nn.ReLU(),
            torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
            torch.nn.Linear(hidden, 1),
        )
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, F] -> [N] logits
        return self.net((x - self.mean) / self.std).squeeze(-1)


#: the level an unseen compression is read as: the unquantized dtypes round alike, so an fp32 or fp16 target accepts
#: what a bf16 one does (its one-hot column never saw data: its weight is whatever the initialisation left)
UNQUANTIZED = ("bf16", "fp16", "fp32")


class AcceptanceModel:
    """The deciding form: numpy, float64, normalisation folded into the first layer."""

    def __init__(self, mlp: AcceptanceMLP, meta: dict | None = None) -> None:
        self.mlp, self.meta = mlp, meta or {}
        self.seen = tuple(self.meta.get("compressions", COMPRESSIONS))
        lin1, lin2, lin3 = (m for m in mlp.net if isinstance(m, torch.nn.Linear))
        std, mean = mlp.std.double().numpy(), mlp.mean.double().numpy()
        self.w1 = lin1.weight.detach().double().numpy().T / std[:, None]  # [F, H]
        self.b1 = lin1.bias.detach().double().numpy() - mean @ self.w1
        self.w2, self.b2 = lin2.weight.detach().double().numpy().T, lin2.bias.detach().double().numpy()
        self.w3, self.b3 = lin3.weight.detach().double().numpy()[0], float(lin3.bias.detach()[0])

    def level(self, compression: str) -> str:
        """The compression level to feed the model: ``compression`` itself if it was trained on it, else the
        unquantized level it saw (fp32 -> bf16), else it as it is."""
        if compression in self.seen or compression not in UNQUANTIZED:
            return compression
        return next((c for c in UNQUANTIZED if c in self.seen), compression)

    def prob(self, x: np.ndarray) -> np.ndarray:  # [M, F] features -> [M] P(accept)
        h = np.maximum(x @ self.w1 + self.b1, 0.0)
        h = np.maximum(h @ self.w2 + self.b2, 0.0)
        return 1.0 / (1.0 + np.exp(-(h @ self.w3 + self.b3)))

    @classmethod
    def load(cls, path: str | Path) -> AcceptanceModel:
        path = Path(path)
        meta = json.loads(path.with_suffix(".json").read_text())
        if list(meta["features"]) != list(FEATURES):
            raise ValueError(f"{path} was trained on features {meta['features']}, this speckv uses {list(FEATURES)}: "
                             "retrain it with `speckv train-policy` on telemetry from this version")
        mlp = AcceptanceMLP(len(FEATURES), meta["hidden"])
        mlp.load_state_dict(load_file(path))
        return cls(mlp.eval(), meta)

    def save(self, path: str | Path, meta: dict) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.mlp.state_dict().items()}, str(path))
        path.with_suffix(".json").write_text(json.dumps({**meta, "features": list(FEATURES)}, indent=2) + "\n")
