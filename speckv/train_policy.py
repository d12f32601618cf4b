"""``speckv train-policy TELEMETRY_DIR --output POLICY_PATH``: train the learned γ selector from step telemetry.

The MLP (:class:`speckv.policies.learned.AcceptanceMLP`) learns P(draft position i accepted | positions < i
accepted, the draft's signals, history, compression) from every greedy step row: positions up to and including
the first rejection are samples, later ones are not (their context never existed). The split is by prompt
(``request_id``), so the held-out report measures prompts the model never saw.

The report replays held-out steps (see :mod:`speckv.collect` for why greedy telemetry is replayable) under the
measured costs of each compression level: tokens per step and estimated tokens per second of the learned rule
against every fixed γ and the hindsight oracle (draft exactly as many as will be accepted).

Any telemetry works as input — ``speckv collect``, ``speckv generate``, the batch job, Serve — as long as its
steps drafted more than the policy will want to (rows drafted with γ=k only teach positions < k).
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
from speckv.policies.learned import FEATURES, AcceptanceMLP, LearnedPolicy, decide, feature_matrix

FIXED_GAMMAS = (1, 2, 3, 4, 6, 8)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("telemetry", help="telemetry directory (or a collect/generate output dir holding telemetry/)")
    parser.add_argument("--output", required=True, help="policy weights path (.safetensors; metadata .json beside)")
    parser.add_argument("--costs", default=None, help="directory of <compression>.json cost models "
                        "(default: costs/ beside the telemetry)")
    parser.add_argument("--holdout", type=float, default=0.2, help="fraction of prompts held out")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--hidden", type=int, default=8,
                        help="units per hidden layer (8: held-out AUC and replay as with 32, decisions cheaper)")
    parser.add_argument("--seed", type=int, default=0)


# ---------------------------------------------------------------------------------------------- data


def load_steps(path: str | Path):
    from speckv.io import read_table

    path = Path(path)
    table = read_table(path / "telemetry" if (path / "telemetry").is_dir() else path)
    df = table.to_pandas()
    df = df[(df["temperature"] == 0) & (df["num_draft_tokens"] > 0)].reset_index(drop=True)
    if df.empty:
        raise ValueError(f"{path} holds no greedy steps that drafted tokens; nothing to learn from")
    missing = int(df["accept_rate"].isna().sum()) if "accept_rate" in df.columns else len(df)
    if missing:  # an older speckv logged accept_rate_ema instead, whose scale depended on the γ drafted
        raise ValueError(f"{path}: {missing} of {len(df)} steps have no accept_rate (telemetry from an older speckv); "
                         "collect them again with this version")
    return df


def step_arrays(df) -> dict[str, np.ndarray]:
    """Pad per-position lists into [N, G] arrays; ``reject_at`` = index of the first rejection (G if none)."""
    g = int(df["num_draft_tokens"].max())
    n = len(df)
    top1, ent = np.zeros((n, g), np.float32), np.zeros((n, g), np.float32)
    acc = np.zeros((n, g), bool)
    drafted = df["num_draft_tokens"].to_numpy()
    for i, (t, e, a) in enumerate(zip(df["draft_top1"], df["draft_entropy"], df["draft_accept"])):
        top1[i, : len(t)], ent[i, : len(e)], acc[i, : len(a)] = t, e, a
    first_false = np.where(~acc | (np.arange(g)[None] >= drafted[:, None]), np.arange(g)[None], g).min(axis=1)
    return {"top1": top1, "entropy": ent, "accept": acc, "drafted": drafted, "reject_at": first_false,
            "history": df["accept_rate"].to_numpy(np.float32), "context": df["context_len"].to_numpy(),
            "compression": df["compression"].to_numpy(),
            # which steps ran together in one batched step (for replays at batch > 1)
            "group": batch_groups(df)}


def batch_groups(df) -> np.ndarray:
    """One id per batched step: the telemetry rows of one actor that share a batch_step_id."""
    keys = df["actor_id"].astype(str) + "/" + df["batch_step_id"].astype(str)
    alone = df["batch_step_id"].isna().to_numpy()  # rows logged without one (older telemetry) stand alone
    keys[alone] = [f"row{i}" for i in np.flatnonzero(alone)]
    return np.unique(keys.to_numpy(), return_inverse=True)[1]


def position_features(arr: dict, pos: int, prefix_min: np.ndarray) -> torch.Tensor:
    n = len(arr["history"])
    return feature_matrix(torch.tensor(arr["top1"][:, pos]), torch.tensor(arr["entropy"][:, pos]),
                          torch.full((n,), pos), torch.tensor(arr["history"]), torch.tensor(prefix_min),
                          torch.tensor(arr["context"]), list(arr["compression"]))


def samples(arr: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(features [M, F], labels [M]) for every position up to and including the first rejection."""
    xs, ys = [], []
    prefix_min = np.ones(len(arr["history"]), np.float32)
    for pos in range(arr["top1"].shape[1]):
        live = (arr["reject_at"] >= pos) & (arr["drafted"] > pos)
        if live.any():
            xs.append(position_features(arr, pos, prefix_min)[torch.from_numpy(live)])
            ys.append(torch.from_numpy(arr["accept"][live, pos]).float())
        prefix_min = np.minimum(prefix_min, arr["top1"][:, pos])
    return torch.cat(xs), torch.cat(ys)


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
    mlp.eval()
    return mlp


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


# ---------------------------------------------------------------------------------------------- replay


def replay(arr: dict, costs: CostModel, batch: int, policy: str, mlp: AcceptanceMLP | None = None,
           gamma: int = 0, hint: float = 0.0) -> dict:
    """Replay greedy steps under a policy; tokens per step and estimated tokens/s under ``costs``.

    ``hint`` > 0 adds ±hint to the MLP's logit by the position's true outcome (accepted with its whole prefix or
    not): a predictor better than any real one, to measure what a better predictor would buy (:func:`headroom`).

    At ``batch`` 1 every step stands alone. At a larger batch the steps that ran together (same ``batch_step_id``
    of the same actor) form one batched step: its time is set by its widest row (the most draft forwards, the most
    tokens verified), as in the engine, and the learned rule decides per column for the batch."""
    g = arr["top1"].shape[1]
    n = len(arr["history"])
    group = arr["group"] if batch > 1 else np.arange(n)
    d = costs.draft(batch)
    if policy == "fixed":
        k = np.minimum(gamma, arr["drafted"])
        forwards = k
    elif policy == "oracle":
        k = np.minimum(arr["reject_at"], arr["drafted"])
        forwards = k
    else:  # the learned rule, vectorised over steps, exactly as LearnedPolicy.keep_drafting does it
        step_costs = [(d, costs.verify(batch, 1 + j)) for j in range(g + 3)]
        p_all, expected = np.ones(n), np.ones(n)
        prefix_min = np.ones(n, np.float32)
        going = np.ones(n, bool)
        k = np.zeros(n, int)
        forwards = np.zeros(n, int)
        for pos in range(g):
            going &= arr["drafted"] > pos
            forwards += going  # the draft forward that shows position `pos`
            if mlp is None:
                a = arr["top1"][:, pos]
            else:
                truth = torch.from_numpy(arr["reject_at"] > pos).float()
                with torch.no_grad():
                    a = torch.sigmoid(mlp(position_features(arr, pos, prefix_min)) + hint * (2 * truth - 1)).numpy()
            keep, more, p_all, expected = decide(a, p_all, expected, going, pos, step_costs, group)
            k += keep
            going = keep & more
            prefix_min = np.minimum(prefix_min, arr["top1"][:, pos])
    tokens = np.minimum(k, arr["reject_at"]) + 1
    _, inverse, rows = np.unique(group, return_inverse=True, return_counts=True)
    widest = np.zeros(len(rows), int)
    np.maximum.at(widest, inverse, k)
    most_forwards = np.zeros(len(rows), int)
    np.maximum.at(most_forwards, inverse, forwards)
    seconds = (most_forwards * d + np.array([costs.verify(batch, 1 + int(x)) for x in widest])) / 1e3
    # each batched step stands for `batch` rows: its tokens are scaled up when fewer rows ran together
    step_tokens = np.bincount(inverse, weights=tokens) * batch / rows
    ar_seconds = costs.verify(batch, 1) / 1e3  # one plain decoding step, one token per row
    return {
        "tokens_per_step": float(tokens.mean()),
        "tokens_per_s": float(step_tokens.sum() / seconds.sum()),
        "speedup_vs_ar": float(step_tokens.sum() / seconds.sum() * ar_seconds / batch),
        "mean_gamma": float(k.mean()),
        "gamma_hist": np.bincount(k, minlength=g + 1).tolist(),
    }


def by_level(arr: dict, costs_by_level: dict[str, CostModel]):
    """(level, its costs, the steps of that level) for every level with costs that the steps hold."""
    for level, costs in costs_by_level.items():
        mask = arr["compression"] == level
        if mask.any():
            yield level, costs, {k: v[mask] for k, v in arr.items()}


def report(arr: dict, costs_by_level: dict[str, CostModel], mlp: AcceptanceMLP, batches=(1, 8)) -> dict:
    out = {}
    for level, costs, sub in by_level(arr, costs_by_level):
        for b in batches:
            rows = {f"fixed{gm}": replay(sub, costs, b, "fixed", gamma=gm) for gm in FIXED_GAMMAS}
            rows["learned"] = replay(sub, costs, b, "learned", mlp)
            rows["learned_top1_proxy"] = replay(sub, costs, b, "learned", None)
            rows["oracle"] = replay(sub, costs, b, "oracle")
            out[f"{level}/batch{b}"] = rows
    return out


HINTS = (0.0, 0.5, 1.0, 2.0, 3.0)


def headroom(arr: dict, costs_by_level: dict[str, CostModel], mlp: AcceptanceMLP) -> dict:
    """What a better acceptance predictor would buy, at batch 1: the MLP given a growing hint of the truth
    (``replay``'s ``hint``), its held-out AUC, and its share of the oracle's gain over fixed γ=4."""
    out = {}
    for level, costs, sub in by_level(arr, costs_by_level):
        x, y = samples(sub)
        fixed4, oracle = (replay(sub, costs, 1, p, gamma=4)["tokens_per_s"] for p in ("fixed", "oracle"))
        rows = []
        for hint in HINTS:
            with torch.no_grad():
                p_hint = torch.sigmoid(mlp(x) + hint * (2 * y - 1))
            tok_s = replay(sub, costs, 1, "learned", mlp, hint=hint)["tokens_per_s"]
            rows.append({"hint": hint, "auc": auc(p_hint, y), "x_fixed4": tok_s / fixed4,
                         "oracle_share": (tok_s - fixed4) / (oracle - fixed4) if oracle > fixed4 else float("nan")})
        out[level] = {"oracle_x_fixed4": oracle / fixed4, "rows": rows}
    return out


def format_headroom(room: dict) -> str:
    lines = ["| level | predictor | held-out AUC | est. × fixed4 | share of the oracle's gain |",
             "|---|---|---|---|---|"]
    for level, r in room.items():
        for row in r["rows"]:
            name = "the MLP" if row["hint"] == 0 else f"MLP + truth hint {row['hint']:g}"
            lines.append(f"| {level} | {name} | {row['auc']:.3f} | {row['x_fixed4']:.2f} | {row['oracle_share']:.0%} |")
        lines.append(f"| {level} | oracle | 1 | {r['oracle_x_fixed4']:.2f} | 100% |")
    return "\n".join(lines)


def format_report(rep: dict) -> str:
    lines = ["| level/batch | policy | tokens/step | est. tokens/s | × ar | × fixed4 | mean γ |",
             "|---|---|---|---|---|---|---|"]
    for key, rows in rep.items():
        base = rows["fixed4"]["tokens_per_s"]
        for name, r in rows.items():
            lines.append(f"| {key} | {name} | {r['tokens_per_step']:.2f} | {r['tokens_per_s']:.1f} | "
                         f"{r['speedup_vs_ar']:.2f} | {r['tokens_per_s'] / base:.2f} | {r['mean_gamma']:.2f} |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    df = load_steps(args.telemetry)
    held = split_by_prompt(df, args.holdout, args.seed)
    arr_train = step_arrays(df[~held])
    arr_test = step_arrays(df[held])
    x, y = samples(arr_train)
    xt, yt = samples(arr_test)
    mlp = train(x, y, args.hidden, args.epochs, args.seed)
    with torch.no_grad():
        p_test = torch.sigmoid(mlp(xt))
    top1_col = FEATURES.index("top1")
    metrics = {
        "train_samples": len(x), "test_samples": len(xt), "train_steps": int((~held).sum()),
        "test_steps": int(held.sum()), "test_prompts": int(df[held]["request_id"].nunique()),
        "test_log_loss": log_loss(p_test, yt), "test_auc": auc(p_test, yt),
        "top1_proxy_log_loss": log_loss(xt[:, top1_col], yt), "top1_proxy_auc": auc(xt[:, top1_col], yt),
        "test_accept_rate": float(yt.mean()), "test_mean_prediction": float(p_test.mean()),  # calibration at a glance
    }
    costs_dir = Path(args.costs) if args.costs else Path(args.telemetry) / "costs"
    costs = {p.stem: CostModel.from_json(p.read_text()) for p in sorted(costs_dir.glob("*.json"))}
    rep = report(arr_test, costs, mlp) if costs else {}
    room = headroom(arr_test, costs, mlp) if costs else {}
    meta = {
        "hidden": args.hidden, "epochs": args.epochs, "seed": args.seed,
        "telemetry": str(args.telemetry), "compressions": sorted(set(df["compression"])),
        "metrics": metrics, "replay_report": rep, "headroom": room,
        "train_seconds": round(time.perf_counter() - start, 1),
        "command": "speckv train-policy " + " ".join(f"{k}={v}" for k, v in vars(args).items() if k != "func"),
        "date": time.strftime("%Y-%m-%d"),
    }
    LearnedPolicy(mlp, 0).save(args.output, meta)
    print(json.dumps(metrics, indent=2))
    if rep:
        print(format_report(rep))
        print("\nWhat a better predictor would buy (batch 1; the hint adds ±h to the logit by the true outcome):")
        print(format_headroom(room))
    print(f"saved {args.output} (+ .json) in {meta['train_seconds']} s")
    return 0
