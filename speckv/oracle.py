"""Hindsight oracle: how fast the logged steps could have been with perfect foresight of acceptance.

Pure functions over step telemetry (``speckv.telemetry.STEP_SCHEMA``; a pandas DataFrame or a pyarrow Table in,
DataFrames and numbers out), shared by ``speckv analyze``, the benchmark and selector training.

Glossary, written down once:

* **batch step** — one draft → verify → accept round of the engine. Its rows (one per live request) share
  ``actor_id``, ``draft_ms`` and ``verify_ms`` exactly; a ``batch_step_id`` column is used instead when present.
* **observed ms** of a batch step = ``draft_ms + verify_ms + Σ decision_ms`` (measured). Each row is charged an
  equal share of the step's draft and verify time plus its own decision time, so summing the shares over any
  grouping (policy, task, …) gives time that adds up to the steps' wall time. Prefill and the first token are not
  in the telemetry, so tokens/s here is decode-step throughput.
* **oracle** — replays the same trajectory but verifies, for every row, exactly the accepted path
  (``a = num_accepted_tokens``: nothing beyond what was proposed is known). It emits the same ``a + 1`` tokens per
  step with zero wasted candidates, spends no time deciding, and pays :func:`step_ms` with ``a`` draft forwards and
  ``a`` nodes — ``draft(B) · max_b a_b + verify(B, 1 + max_b a_b)`` per batch step: the batched draft runs as many
  forwards as the deepest row needs and the verify forward is as wide as the widest row. The same oracle scores
  ``speckv train-policy``'s replays (:func:`replay_trees`).
* **costs** — ``draft(B, w)`` ms per draft forward of ``B`` rows × ``w`` nodes (a chain's: w = 1) and
  ``verify(B, T)`` ms for a forward of ``B`` rows × ``T`` tokens; a :class:`speckv.costs.CostModel` (measured by
  calibration) or one fitted from the telemetry itself by :func:`fit_costs`.
* **gap** = modelled time ÷ oracle time − 1, both from the same cost model, so its fit error cancels; the oracle's
  tokens/s is the observed (measured) tokens/s × (1 + gap). The speed a γ-policy leaves on the table.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from speckv.costs import CostModel, Costs
from speckv.proposal import HEAD, LOOKUP

#: columns the oracle reads
REQUIRED_COLUMNS = ("actor_id", "batch_size", "num_draft_tokens", "num_accepted_tokens", "num_emitted_tokens",
                    "draft_ms", "verify_ms", "decision_ms", "max_tokens_verified")
#: rows with equal values here were measured under one cost regime, so they share one fitted cost model
COST_GROUP = ("compression", "device", "drafter")


def step_ms(costs: Costs, batch: int, forwards, width, drafting=None):
    """The one model of a batched step's time: ``forwards`` draft forwards of one node a row (or ``drafting`` ms, their
    time where some fed more: :func:`draft_ms`) and a verify of 1 + ``width`` tokens per row (scalars, or arrays over
    steps)."""
    verify = np.vectorize(lambda w: costs.verify(batch, 1 + int(w)))(width) if np.ndim(width) else \
        costs.verify(batch, 1 + int(width))
    return (costs.draft(batch) * forwards if drafting is None else drafting) + verify


def draft_ms(arr: dict, nodes: np.ndarray, costs: Costs, batch: int, inverse: np.ndarray, groups: int) -> np.ndarray:
    """[groups] ms the head's forwards take to draft ``nodes`` ([S, M] of :func:`tree_arrays`' columns) in each
    batched step (``inverse``: each row's step): the root's forward, one node a row, then one forward per depth d ≥ 1
    feeding the depth-d nodes with a child among ``nodes``, as wide as its widest row (``Costs.draft(batch, w)``)."""
    head = nodes & (arr["source"] == HEAD)
    parent, depth = arr["parent"] - 1, arr["depth"]  # parent's column (-1: the root), [S, M]
    deepest = int(depth[head].max()) if head.any() else 0
    widths = np.zeros((len(head), max(deepest, 1)), np.int64)  # [S, forwards] nodes a row each forward feeds
    widths[:, 0] = head.any(axis=1)
    fed = np.zeros_like(head)
    rows, cols = np.nonzero(head & (parent >= 0))
    fed[rows, parent[rows, cols]] = True
    for d in range(1, deepest):
        widths[:, d] = (fed & (depth == d)).sum(axis=1)
    widest = np.zeros((groups, widths.shape[1]), np.int64)
    np.maximum.at(widest, inverse, widths)
    table = np.array([0.0] + [costs.draft(batch, w) for w in range(1, int(widest.max(initial=0)) + 1)])
    return table[widest].sum(axis=1)


def as_frame(steps: pd.DataFrame | pa.Table) -> pd.DataFrame:
    frame = steps.to_pandas() if isinstance(steps, pa.Table) else steps
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"telemetry lacks column(s) {missing}; expected the STEP_SCHEMA of speckv.telemetry")
    return frame


def step_ids(steps: pd.DataFrame) -> pd.Series:
    """A batch-step id per row (see the glossary): rows of one batched engine step get the same integer."""
    if "batch_step_id" in steps.columns and steps["batch_step_id"].notna().all():
        keys = ["actor_id", "batch_step_id"]
    else:
        keys = ["actor_id", "draft_ms", "verify_ms"]
    keys += [c for c in ("policy", *COST_GROUP) if c in steps.columns]
    return steps.groupby(keys, sort=False, dropna=False).ngroup().rename("batch_step")


def batch_steps(steps: pd.DataFrame | pa.Table) -> pd.DataFrame:
    """One row per batch step: B (live rows), k (draft forwards = max γ), ``widths`` (nodes a row each forward fed),
    T (tokens verified per row), times, and ``oracle_k`` (max accepted drafts over the rows), indexed by the
    ``batch_step`` id of :func:`step_ids`. Telemetry from before ``draft_widths`` was logged reads as forwards of one
    node a row."""
    frame = as_frame(steps)
    accepted = np.minimum(frame["num_accepted_tokens"], frame["num_draft_tokens"])
    forwards = frame["draft_forwards"] if "draft_forwards" in frame.columns else frame["num_draft_tokens"]
    logged = frame["draft_widths"] if "draft_widths" in frame.columns else pd.Series([None] * len(frame), frame.index)
    widths = [tuple(int(w) for w in ws) if ws is not None else (1,) * int(k) for ws, k in zip(logged, forwards)]
    work = pd.DataFrame({
        "batch_step": step_ids(frame),
        "B": frame["batch_size"],
        "k": forwards,
        "widths": pd.Series(widths, index=frame.index, dtype=object),
        "oracle_k": accepted,
        "T": frame["max_tokens_verified"],
        "draft_ms": frame["draft_ms"].astype("float64"),
        "verify_ms": frame["verify_ms"].astype("float64"),
        "decision_ms": frame["decision_ms"].astype("float64"),
        "rows": 1,
        **{c: frame[c] for c in COST_GROUP if c in frame.columns},
    })
    agg = {"B": "max", "k": "max", "widths": lambda ws: max(ws, key=len), "oracle_k": "max", "T": "max",
           "draft_ms": "first", "verify_ms": "first", "decision_ms": "sum", "rows": "sum",
           **{c: "first" for c in COST_GROUP if c in frame.columns}}
    return work.groupby("batch_step", sort=True).agg(agg)


def fit_costs(steps: pd.DataFrame | pa.Table, gamma_max: int | None = None) -> CostModel:
    """Fit draft and verify cost from the telemetry of *one* cost regime (one compression/device/drafter).

    verify(B, T): the mean ``verify_ms`` of each observed (B, T) cell (the mean, not the median: throughput is a sum), linearly interpolated between observed T;
    outside them extended with the within-batch-size least-squares slope in T (clipped at ≥ 0; flat when the data
    has a single T per batch size, which under-states the oracle's saving rather than inventing one).
    draft(B, w): ms of a draft forward feeding x = B·w rows (``CostModel.draft``'s convention), a + c·x, by least
    squares of each drafting step's ``draft_ms`` on its forwards and the rows they fed (a, c ≥ 0); flat (c = 0: ms per
    forward, through the origin) where the rows per forward never varied, since then nothing separates a from c.
    """
    bs = batch_steps(steps)
    if bs.empty:
        raise ValueError("no steps to fit costs from")
    cells = bs.groupby(["B", "T"])["verify_ms"].agg(["mean", "size"]).reset_index()
    # within-B slope: each batch size keeps its own intercept, all share one slope in T (cells weighted by steps)
    weight = cells.groupby("B")["size"].transform("sum")
    mean_t = (cells["size"] * cells["T"]).groupby(cells["B"]).transform("sum") / weight
    mean_v = (cells["size"] * cells["mean"]).groupby(cells["B"]).transform("sum") / weight
    dt, dv = cells["T"] - mean_t, cells["mean"] - mean_v
    denom = float((cells["size"] * dt * dt).sum())
    slope = max(float((cells["size"] * dt * dv).sum()) / denom, 0.0) if denom > 0 else 0.0

    batch_sizes = sorted(int(b) for b in cells["B"].unique())
    t_max = max(int(cells["T"].max()), (gamma_max or 0) + 1, 2)
    tokens = list(range(1, t_max + 1))
    verify_grid = []
    for b in batch_sizes:
        known = cells[cells["B"] == b].sort_values("T")
        kt, kv = known["T"].to_numpy(float), known["mean"].to_numpy(float)
        row = np.interp(tokens, kt, kv)  # flat outside [kt[0], kt[-1]]; replaced by the slope below
        t = np.asarray(tokens, float)
        row = np.where(t < kt[0], kv[0] - slope * (kt[0] - t), row)
        row = np.where(t > kt[-1], kv[-1] + slope * (t - kt[-1]), row)
        verify_grid.append([max(float(v), 0.0) for v in row])

    drafting = bs[bs["k"] > 0]
    ms = drafting["draft_ms"].to_numpy(float)
    forwards = np.array([len(ws) for ws in drafting["widths"]], float)
    fed = np.array([int(b) * sum(ws) for b, ws in zip(drafting["B"], drafting["widths"])], float)  # rows fed, summed
    a, c = (float((forwards * ms).sum() / (forwards * forwards).sum()) if len(ms) else 0.0), 0.0  # flat unless fitted
    design = np.stack([forwards, fed], axis=1)
    if len(ms) and np.linalg.matrix_rank(design) == 2:
        fit_a, fit_c = np.linalg.lstsq(design, ms, rcond=None)[0]
        if fit_a >= 0 and fit_c >= 0:
            a, c = float(fit_a), float(fit_c)
        elif fit_a < 0:  # all of it per row fed
            a, c = 0.0, float((fed * ms).sum() / (fed * fed).sum())
    top = max([2] + [int(b) * max(ws) for b, ws in zip(drafting["B"], drafting["widths"])])  # the widest forward
    return CostModel(batch_sizes=batch_sizes, tokens=tokens, verify_ms=verify_grid, draft_ms=[a + c, a + c * top],
                     draft_rows=[1, top])  # a line: CostModel.draft interpolates and extends it exactly


def _cost_groups(frame: pd.DataFrame) -> list[str]:
    return [c for c in COST_GROUP if c in frame.columns]


def time_shares(steps: pd.DataFrame | pa.Table, costs: Costs | None = None) -> pd.DataFrame:
    """The telemetry rows with per-row time shares added (glossary above):

    ``batch_step``, ``step_rows``, ``observed_ms`` (measured), ``observed_draft_ms``, ``observed_verify_ms``,
    ``modelled_ms`` (the observed steps re-costed with the cost model: a check of the fit), ``oracle_ms``,
    ``oracle_draft_tokens`` and ``wasted_draft_tokens``.

    ``costs=None`` fits one cost model per (compression, device, drafter) group from the telemetry itself.
    """
    frame = as_frame(steps).copy()
    if frame.empty:
        raise ValueError("no telemetry rows")
    frame["batch_step"] = step_ids(frame)
    bs = batch_steps(frame)
    if costs is None:
        keys = _cost_groups(frame)
        models = {}
        for key, group in (frame.groupby(keys, dropna=False, sort=False) if keys else [((), frame)]):
            gmax = int(group["gamma_max"].max()) if "gamma_max" in group.columns else None
            model = fit_costs(group, gmax)
            key = key if isinstance(key, tuple) else (key,)
            models[key] = model
        cost_of = {sid: models[tuple(row[c] for c in keys)] for sid, row in bs.iterrows()}
    else:
        cost_of = dict.fromkeys(bs.index, costs)
    modelled, oracle = [], []
    for sid, s in bs.iterrows():
        c = cost_of[sid]
        b = int(s["B"])
        modelled.append(sum(c.draft(b, w) for w in s["widths"]) + c.verify(b, int(s["T"])))
        oracle.append(step_ms(c, b, s["oracle_k"], s["oracle_k"]))
    bs = bs.assign(modelled_step_ms=modelled, oracle_step_ms=oracle)

    per_step = bs.loc[frame["batch_step"]].reset_index(drop=True)
    per_step.index = frame.index
    n = per_step["rows"].astype(float)
    frame["step_rows"] = per_step["rows"]
    frame["observed_draft_ms"] = per_step["draft_ms"] / n
    frame["observed_verify_ms"] = per_step["verify_ms"] / n
    frame["observed_ms"] = frame["observed_draft_ms"] + frame["observed_verify_ms"] + frame["decision_ms"]
    frame["modelled_ms"] = per_step["modelled_step_ms"] / n + frame["decision_ms"]
    frame["oracle_ms"] = per_step["oracle_step_ms"] / n
    frame["oracle_draft_tokens"] = np.minimum(frame["num_accepted_tokens"], frame["num_draft_tokens"])
    frame["wasted_draft_tokens"] = frame["num_draft_tokens"] - frame["oracle_draft_tokens"]
    return frame


def gap_table(replayed: pd.DataFrame, by: list[str] | None = None) -> pd.DataFrame:
    """Observed vs oracle tokens/s per group of :func:`time_shares`' rows (one row, index ``all``, when ``by`` is empty)."""
    cols = ["num_emitted_tokens", "observed_ms", "modelled_ms", "oracle_ms", "num_draft_tokens", "wasted_draft_tokens"]
    grouped = replayed.groupby(by, dropna=False)[cols].sum() if by else replayed[cols].sum().to_frame("all").T
    tok = grouped["num_emitted_tokens"]
    out = pd.DataFrame({
        "tokens": tok,
        "observed_tok_s": 1e3 * tok / grouped["observed_ms"],
        "modelled_tok_s": 1e3 * tok / grouped["modelled_ms"],
        # the same cost model prices both, so its bias cancels in the ratio
        "oracle_tok_s": 1e3 * tok / grouped["observed_ms"] * grouped["modelled_ms"] / grouped["oracle_ms"],
        "wasted_draft_frac": grouped["wasted_draft_tokens"] / grouped["num_draft_tokens"].where(
            grouped["num_draft_tokens"] > 0),
    })
    out["gap"] = out["oracle_tok_s"] / out["observed_tok_s"] - 1
    return out


def oracle_gap(steps: pd.DataFrame | pa.Table, costs: Costs | None = None) -> dict[str, float]:
    """Headline numbers over all rows: observed, modelled and oracle tokens/s, the gap, and the wasted-draft share."""
    row = gap_table(time_shares(steps, costs)).iloc[0]
    return {k: float(v) for k, v in row.items()}


# ---------------------------------------------------------------------------------------------- policy replay
#
# Greedy telemetry records, for every node of every verified tree, whether its token is the target's argmax given its
# parent (telemetry.STEP_SCHEMA's draft_accept). That makes any sub-tree of a recorded tree replayable: its accepted
# path is the part of the recorded one ("the true path") that it holds. So a tree recorded wide (``speckv collect``)
# answers how every narrower budget — a fixed chain, a fixed tree, the learned rule, the oracle — would have done.


def tree_arrays(df: pd.DataFrame) -> dict[str, np.ndarray]:
    """Each step's node lists padded into [S, M] arrays, with what replay needs derived from them."""
    s, m = len(df), max(int(df["num_draft_tokens"].max()), 1)
    real = np.arange(m)[None, :] < df["num_draft_tokens"].to_numpy()[:, None]

    def pad(column: str, dtype) -> np.ndarray:
        out = np.zeros((s, m), dtype)
        for i, values in enumerate(df[column]):
            out[i, : len(values)] = values
        return out

    parent, prob, accept = pad("node_parent", np.int64), pad("node_prob", np.float64), pad("draft_accept", bool)
    source, rank = pad("node_source", np.int64), pad("node_rank", np.int64)
    depth, path_min, on_path = np.zeros((s, m), np.int64), np.ones((s, m)), np.zeros((s, m), bool)
    logq, head_chain = np.zeros((s, m)), np.zeros((s, m), bool)
    rows = np.arange(s)
    for j in range(m):  # parents come first
        p = parent[:, j] - 1  # parent's column; -1 = the root
        root = p < 0
        pc = np.maximum(p, 0)
        depth[:, j] = np.where(root, 1, depth[rows, pc] + 1)
        path_min[:, j] = np.where(root, 1.0, np.minimum(path_min[rows, pc], prob[rows, pc]))
        on_path[:, j] = accept[:, j] & real[:, j] & (root | on_path[rows, pc])
        own = np.where(source[:, j] == LOOKUP, np.log(0.6), np.log(np.maximum(prob[:, j], 1e-30)))
        logq[:, j] = own + np.where(root, 0.0, logq[rows, pc])
        head_chain[:, j] = real[:, j] & (source[:, j] == HEAD) & (rank[:, j] == 0) & (root | head_chain[rows, pc])
    return {
        "real": real, "parent": parent, "prob": prob, "accept": accept, "source": source, "rank": rank,
        "top1": pad("draft_top1", np.float64), "entropy": pad("draft_entropy", np.float64),
        "match": pad("node_match", np.int64), "depth": depth, "path_min": path_min, "on_path": on_path,
        "score": np.where(real, np.exp(logq), -1.0), "head_chain": head_chain,
        "accept_rate": df["accept_rate"].to_numpy(np.float64),
        "lookup_rate": (df["lookup_rate"] if "lookup_rate" in df.columns else pd.Series(0.5, index=df.index))
        .fillna(0.5).to_numpy(np.float64),
        "context": df["context_len"].to_numpy(), "compression": df["compression"].to_numpy(),
        "group": batch_groups(df),
    }


def batch_groups(df: pd.DataFrame) -> np.ndarray:
    """One id per batched step: the telemetry rows of one actor that share a batch_step_id."""
    keys = df["actor_id"].astype(str) + "/" + df["batch_step_id"].astype(str)
    alone = df["batch_step_id"].isna().to_numpy()  # rows logged without one (older telemetry) stand alone
    keys[alone] = [f"row{i}" for i in np.flatnonzero(alone)]
    return np.unique(keys.to_numpy(), return_inverse=True)[1]


def node_features(arr: dict) -> np.ndarray:  # [S·M, F] every node slot's features (padding included)
    from speckv.policies.learned.model import features

    s, m = arr["real"].shape

    def flat(name: str) -> np.ndarray:
        return arr[name].reshape(-1)

    def per_row(name: str) -> np.ndarray:
        return np.repeat(arr[name], m)

    return features(flat("prob"), flat("top1"), flat("entropy"), flat("rank"), flat("depth"), flat("path_min"),
                    flat("source"), flat("match"), per_row("accept_rate"), per_row("lookup_rate"), per_row("context"),
                    per_row("compression"))


def subset(arr: dict, mask: np.ndarray) -> dict:
    """The steps ``mask`` selects (``group`` ids keep meaning: rows of a batched step stay together)."""
    return {k: v[mask] for k, v in arr.items()}


def replay_trees(arr: dict, costs: Costs, batch: int, policy: str, model=None, nodes: int = 0,
                 hint: float = 0.0, margin: float = 0.05) -> dict:
    """Replay recorded greedy trees under a policy; tokens per step and estimated tokens/s under ``costs``.

    ``policy``: ``chain`` (the head's top choices, ``nodes`` deep), ``tree`` (the ``nodes`` best by draft score,
    EAGLE-2's rerank), ``learned`` (the rule of speckv.policies.learned.rule on ``model``'s acceptance, or on the
    draft probability without a model; ``hint`` > 0 nudges the model's logit by ±hint towards each node's true outcome:
    a better predictor than any real one, for :func:`headroom`-style reports), or ``oracle`` (exactly the true path).
    At ``batch`` 1 every step stands alone; at a larger batch the rows that ran together form one batched step, as
    wide as its widest row. Time per step is :func:`step_ms`, drafting priced by :func:`draft_ms` (the kept nodes'
    forwards at their widths)."""
    from speckv.policies.learned.rule import choose_width, margins

    real, s = arr["real"], len(arr["real"])
    group = arr["group"] if batch > 1 else np.arange(s)
    if policy == "chain":
        keep = arr["head_chain"] & (arr["depth"] <= nodes)
    elif policy == "tree":
        keep = _top(arr["score"], np.full(s, nodes))
    elif policy == "oracle":
        keep = arr["on_path"].copy()
    else:
        value = _values(arr, model, hint)
        ranked = -np.sort(-np.where(real, value, 0.0), axis=1)
        _, inverse, rows = np.unique(group, return_inverse=True, return_counts=True)
        gains = np.zeros((len(rows), ranked.shape[1]))
        np.add.at(gains, inverse, ranked)
        spent = draft_ms(arr, real, costs, batch, inverse, len(rows))  # what drafting the recorded trees took
        step = np.array([costs.verify(batch, 1 + k) for k in range(ranked.shape[1] + 1)])
        width, _, _ = choose_width(gains, rows, step, spent, *margins(margin, batch))
        keep = _top(np.where(real, value, -1.0), width[inverse])
    tokens = (keep & arr["on_path"]).sum(axis=1) + 1
    width = keep.sum(axis=1)
    _, inverse, rows = np.unique(group, return_inverse=True, return_counts=True)
    widest = np.zeros(len(rows), int)
    np.maximum.at(widest, inverse, width)
    seconds = step_ms(costs, batch, 0, widest, draft_ms(arr, keep, costs, batch, inverse, len(rows))) / 1e3
    step_tokens = np.bincount(inverse, weights=tokens) * batch / rows  # a step stands for `batch` rows
    ar_seconds = costs.verify(batch, 1) / 1e3
    return {
        "tokens_per_step": float(tokens.mean()),
        "tokens_per_s": float(step_tokens.sum() / seconds.sum()),
        "speedup_vs_ar": float(step_tokens.sum() / seconds.sum() * ar_seconds / batch),
        "mean_nodes": float(width.mean()),
    }


def _values(arr: dict, model, hint: float) -> np.ndarray:
    """P(node on the accepted path) per node: its parent's value times its own acceptance."""
    real, s, m = arr["real"], *arr["real"].shape
    if model is None:
        accept = np.where(arr["source"] == LOOKUP, arr["lookup_rate"][:, None], arr["prob"])
    else:
        p = np.clip(model.prob(node_features(arr)).reshape(s, m), 1e-9, 1 - 1e-9)
        logit = np.log(p) - np.log1p(-p)
        accept = 1.0 / (1.0 + np.exp(-(logit + hint * (2 * arr["accept"] - 1))))
    value = np.zeros((s, m))
    rows = np.arange(s)
    for j in range(m):
        p = arr["parent"][:, j] - 1
        value[:, j] = accept[:, j] * np.where(p < 0, 1.0, value[rows, np.maximum(p, 0)])
    return np.where(real, value, 0.0)


def _top(score: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Each row's ``count`` best-scored real nodes (score -1 marks padding); ties to the earlier column."""
    order = np.argsort(-score, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(score.shape[1])[None, :].repeat(len(score), 0), axis=1)
    return (rank < count[:, None]) & (score >= 0)
