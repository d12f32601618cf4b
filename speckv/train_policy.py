"""``speckv train-policy TELEMETRY_DIR --output POLICY_PATH``: train the learned selector from step telemetry.

The MLP (:class:`speckv.policies.learned.model.AcceptanceMLP`) learns P(the target accepts a node | it accepted the
node's parent) from every node of the greedy steps whose parent was accepted (:func:`reached`). Greedy telemetry
records a verdict for every node verified (telemetry.STEP_SCHEMA's ``draft_accept``), but under a rejected parent it
answers a prefix the target never took; acceptance runs in streaks, so those nodes are accepted less often than
reached ones with the same signals, and a model trained on them too came out 2–7 points low on reached nodes from
depth 2 on (``bench/reached_ab.py``; the rule multiplies those acceptances along each path). The split is by prompt
(``request_id``), so the held-out report measures prompts the model never saw.

The report replays held-out steps (:func:`speckv.oracle.replay_trees`: any sub-tree of a recorded tree is
replayable) under the measured costs of each compression level: tokens per step and estimated tokens per second of
the learned rule against fixed chains, fixed trees and the hindsight oracle (verify exactly the accepted path), at
batch 1 and 8. A second table, the headroom, replays with the MLP's logit nudged by ±h towards each node's true
outcome: what a better acceptance predictor would buy on this pair.

Any telemetry works as input — ``speckv collect``, ``speckv generate``, the batch job, Serve — as long as its steps
verified more than the policy will want to (a tree recorded N nodes wide only teaches budgets up to N).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch

from speckv.costs import CostModel
from speckv.oracle import node_features, replay_trees, subset, tree_arrays
from speckv.policies.learned.model import FEATURES, AcceptanceMLP, AcceptanceModel

CHAINS, TREES = (1, 2, 3, 4, 6, 8), (4, 8, 16, 24)
HINTS = (0.0, 0.5, 1.0, 2.0, 3.0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("telemetry", help="telemetry directory (or a collect/generate output dir holding telemetry/)")
    parser.add_argument("--output", required=True, help="policy weights path (.safetensors; metadata .json beside)")
    parser.add_argument("--costs", default=None, help="directory of <compression>.json cost models "
                        "(default: costs/ beside the telemetry)")
    parser.add_argument("--holdout", type=float, default=0.2, help="fraction of prompts held out")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--hidden", type=int, default=8, help="units per hidden layer")
    parser.add_argument("--seed", type=int, default=0)


# ---------------------------------------------------------------------------------------------- data


def load_steps(path: str | Path):
    from speckv.io import read_table

    path = Path(path)
    df = read_table(path / "telemetry" if (path / "telemetry").is_dir() else path).to_pandas()
    missing = [c for c in ("node_parent", "node_rank", "node_source", "accept_rate")
               if c not in df.columns or df[c].isna().all()]
    if missing:  # an older speckv logged chains only, and an acceptance history whose scale depended on γ
        raise ValueError(f"{path}: telemetry without {missing} (from an older speckv); collect it again with this "
                         "version")
    df = df[(df["temperature"] == 0) & (df["num_draft_tokens"] > 0)].reset_index(drop=True)
    if df.empty:
        raise ValueError(f"{path} holds no greedy steps that verified candidates; nothing to learn from")
    return df


def reached(arr: dict) -> np.ndarray:
    """[S, M] the real nodes whose parent is the root or on the accepted path: where "accepted, given its parent"
    is what happened, not a counterfactual."""
    parent = arr["parent"] - 1  # the parent's column; -1 = the root
    rows = np.arange(len(parent))[:, None]
    return arr["real"] & ((parent < 0) | arr["on_path"][rows, np.maximum(parent, 0)])


def samples(arr: dict, only_reached: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(features [M, F], labels [M]) for every node :func:`reached` (or, without ``only_reached``, every real node:
    ``bench/reached_ab.py``'s comparison)."""
    keep = (reached(arr) if only_reached else arr["real"]).reshape(-1)
    x = torch.from_numpy(node_features(arr)[keep]).float()
    return x, torch.from_numpy(arr["accept"].reshape(-1)[keep]).float()


def split_by_prompt(df, holdout: float, seed: int) -> np.ndarray:
    """True for held-out rows: a stable hash of the request id, so a prompt is wholly in one side."""
    def bucket(rid: str) -> float:
        return int(hashlib.sha256(f"{seed}:{rid}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF

    return df["request_id"].map(bucket).to_numpy() < holdout


# ---------------------------------------------------------------------------------------------- training


def train(x: torch.Tensor, y: torch.Tensor, hidden: int, epochs: int, seed: int) -> AcceptanceMLP:
    torch.manual_seed(seed)
    mlp = AcceptanceMLP(x.shape[1], hidden)
    mlp.mean.copy_(x.mean(0))
    mlp.std.copy_(x.std(0).clamp(min=1e-3))
    opt = torch.optim.AdamW(mlp.parameters(), lr=3e-3, weight_decay=1e-4)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    batch = 2048
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for i in range(0, len(x), batch):
            idx = order[i : i + batch]
            opt.zero_grad()
            loss_fn(mlp(x[idx]), y[idx]).backward()
            opt.step()
    return mlp.eval()


def log_loss(p: torch.Tensor, y: torch.Tensor) -> float:
    p = p.clamp(1e-6, 1 - 1e-6)
    return float(-(y * p.log() + (1 - y) * (1 - p).log()).mean())


def auc(p: torch.Tensor, y: torch.Tensor) -> float:
    order = torch.argsort(p)
    ranks = torch.empty_like(p)
    ranks[order] = torch.arange(1, len(p) + 1, dtype=p.dtype)
    pos = y.bool()
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


# ---------------------------------------------------------------------------------------------- reports


def by_level(arr: dict, costs_by_level: dict[str, CostModel]):
    """(level, its costs, the steps of that level) for every level with costs that the steps hold."""
    for level, costs in costs_by_level.items():
        mask = arr["compression"] == level
        if mask.any():
            yield level, costs, subset(arr, mask)


def report(arr: dict, costs_by_level: dict[str, CostModel], model: AcceptanceModel, batches=(1, 8)) -> dict:
    out = {}
    for level, costs, sub in by_level(arr, costs_by_level):
        for b in batches:
            rows = {f"chain{g}": replay_trees(sub, costs, b, "chain", nodes=g) for g in CHAINS}
            rows |= {f"tree{n}": replay_trees(sub, costs, b, "tree", nodes=n) for n in TREES}
            rows["learned"] = replay_trees(sub, costs, b, "learned", model)
            rows["learned_draft_proxy"] = replay_trees(sub, costs, b, "learned", None)
            rows["oracle"] = replay_trees(sub, costs, b, "oracle")
            out[f"{level}/batch{b}"] = rows
    return out


def headroom(arr: dict, costs_by_level: dict[str, CostModel], model: AcceptanceModel) -> dict:
    """What a better acceptance predictor would buy, at batch 1: the MLP given a growing hint of the truth, its
    held-out AUC, and its share of the oracle's gain over a fixed chain of 4."""
    out = {}
    for level, costs, sub in by_level(arr, costs_by_level):
        x, y = samples(sub)
        with torch.no_grad():
            logit = model.mlp(x)
        chain4, oracle = (replay_trees(sub, costs, 1, p, nodes=4)["tokens_per_s"] for p in ("chain", "oracle"))
        rows = []
        for hint in HINTS:
            tok_s = replay_trees(sub, costs, 1, "learned", model, hint=hint)["tokens_per_s"]
            rows.append({"hint": hint, "auc": auc(torch.sigmoid(logit + hint * (2 * y - 1)), y),
                         "x_chain4": tok_s / chain4,
                         "oracle_share": (tok_s - chain4) / (oracle - chain4) if oracle > chain4 else float("nan")})
        out[level] = {"oracle_x_chain4": oracle / chain4, "rows": rows}
    return out


def format_report(rep: dict) -> str:
    lines = ["| level/batch | policy | tokens/step | est. tokens/s | × ar | × chain4 | mean nodes |",
             "|---|---|---|---|---|---|---|"]
    for key, rows in rep.items():
        base = rows["chain4"]["tokens_per_s"]
        for name, r in rows.items():
            lines.append(f"| {key} | {name} | {r['tokens_per_step']:.2f} | {r['tokens_per_s']:.1f} | "
                         f"{r['speedup_vs_ar']:.2f} | {r['tokens_per_s'] / base:.2f} | {r['mean_nodes']:.2f} |")
    return "\n".join(lines)


def format_headroom(room: dict) -> str:
    lines = ["| level | predictor | held-out AUC | est. × chain4 | share of the oracle's gain |", "|---|---|---|---|---|"]
    for level, r in room.items():
        for row in r["rows"]:
            name = "the MLP" if row["hint"] == 0 else f"MLP + truth hint {row['hint']:g}"
            lines.append(f"| {level} | {name} | {row['auc']:.3f} | {row['x_chain4']:.2f} | {row['oracle_share']:.0%} |")
        lines.append(f"| {level} | oracle | 1 | {r['oracle_x_chain4']:.2f} | 100% |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    df = load_steps(args.telemetry)
    held = split_by_prompt(df, args.holdout, args.seed)
    arr = tree_arrays(df)
    arr_train, arr_test = subset(arr, ~held), subset(arr, held)
    x, y = samples(arr_train)
    xt, yt = samples(arr_test)
    mlp = train(x, y, args.hidden, args.epochs, args.seed)
    model = AcceptanceModel(mlp)
    with torch.no_grad():
        p_test = torch.sigmoid(mlp(xt))
    prob_col = FEATURES.index("prob")
    metrics = {
        "train_samples": len(x), "test_samples": len(xt), "train_steps": int((~held).sum()),
        "test_steps": int(held.sum()), "test_prompts": int(df[held]["request_id"].nunique()),
        "test_log_loss": log_loss(p_test, yt), "test_auc": auc(p_test, yt),
        "draft_prob_log_loss": log_loss(xt[:, prob_col], yt), "draft_prob_auc": auc(xt[:, prob_col], yt),
        "test_accept_rate": float(yt.mean()), "test_mean_prediction": float(p_test.mean()),  # calibration at a glance
    }
    costs_dir = Path(args.costs) if args.costs else Path(args.telemetry) / "costs"
    costs = {p.stem: CostModel.from_json(p.read_text()) for p in sorted(costs_dir.glob("*.json"))}
    rep = report(arr_test, costs, model) if costs else {}
    room = headroom(arr_test, costs, model) if costs else {}
    meta = {
        "hidden": args.hidden, "epochs": args.epochs, "seed": args.seed,
        "telemetry": str(args.telemetry), "compressions": sorted(set(df["compression"])),
        "metrics": metrics, "replay_report": rep, "headroom": room,
        "train_seconds": round(time.perf_counter() - start, 1),
        "command": "speckv train-policy " + " ".join(f"{k}={v}" for k, v in vars(args).items() if k != "func"),
        "date": time.strftime("%Y-%m-%d"),
    }
    model.save(args.output, meta)
    print(json.dumps(metrics, indent=2))
    if rep:
        print(format_report(rep))
        print("\nWhat a better predictor would buy (batch 1; the hint adds ±h to the logit by the true outcome):")
        print(format_headroom(room))
    print(f"saved {args.output} (+ .json) in {meta['train_seconds']} s")
    return 0
