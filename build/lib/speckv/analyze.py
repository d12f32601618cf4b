"""``speckv analyze TELEMETRY_DIR --output REPORT_DIR``: tables and PNG plots from step telemetry.

Reads the Parquet parts written by ``speckv generate``, the Ray batch job or the Serve app (a ``telemetry/``
directory, its parent output directory, or one file) and writes ``REPORT_DIR/index.md`` with the plots beside it,
plus ``summary.json`` with the headline numbers for scripts. Conventions (mean acceptance length includes the bonus
token; acceptance rate = accepted / drafted) are those of :mod:`speckv.telemetry`; time shares, tokens/s and the
hindsight oracle are those of :mod:`speckv.oracle`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from speckv import oracle
from speckv.io import read_table
from speckv.telemetry import RequestStats

#: columns the report reads, beyond the oracle's
REQUIRED_COLUMNS = ("request_id", "task", "policy", "compression", "num_draft_tokens", "num_accepted_tokens",
                    "num_emitted_tokens", "node_parent", "node_prob", "node_rank", "node_source", "node_match",
                    "draft_top1", "draft_entropy", "draft_accept", "decision_ms", "accept_rate",
                    "gamma_max", *oracle.REQUIRED_COLUMNS)
GROUP = ["policy", "compression"]
NO_TASK = "(none)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("telemetry", metavar="TELEMETRY_DIR",
                        help="telemetry Parquet: a directory of parts, an output directory holding telemetry/, "
                             "or one .parquet file")
    parser.add_argument("--output", required=True, metavar="REPORT_DIR", help="where index.md and the PNGs go")
    parser.add_argument("--bins", type=int, default=10, help="bins for the acceptance-vs-signal plots (default 10)")


def run(args: argparse.Namespace) -> int:
    steps = load_steps(args.telemetry)
    out = Path(args.output)
    report = build_report(steps, out, bins=args.bins, source=str(args.telemetry))
    print(f"{len(steps)} step rows, {len(report['plots'])} plots -> {out / 'index.md'}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------------------------- loading


def telemetry_files(path: str | Path) -> tuple[Path, list[Path]]:
    """The telemetry location and its Parquet parts, given the parts' directory (searched recursively, for
    partitioned writers), its parent output directory (``DIR/telemetry``), or one file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"telemetry path not found: {path}")
    if path.is_file():
        return path, [path]
    if not any(path.glob("*.parquet")) and (path / "telemetry").is_dir():
        path = path / "telemetry"
    files = sorted(f for f in path.rglob("*.parquet") if not f.name.startswith((".", "_")))
    if not files:
        raise FileNotFoundError(f"no telemetry in {path}: expected *.parquet step files (or a telemetry/ directory "
                                f"of them), as written by `speckv generate --output DIR`")
    return path, files


def load_steps(path: str | Path) -> pd.DataFrame:
    path, files = telemetry_files(path)
    table = pa.concat_tables([read_table(f) for f in files], promote_options="default")
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"{path} does not look like step telemetry: missing column(s) {missing} "
                         f"(STEP_SCHEMA in speckv/telemetry.py); an outputs/ directory is not telemetry")
    if table.num_rows == 0:
        raise ValueError(f"no telemetry rows in {path}: every request failed or nothing was generated")
    steps = table.to_pandas()
    steps["task"] = steps["task"].fillna(NO_TASK)
    steps["compression"] = steps["compression"].fillna("unknown")
    return steps


# ---------------------------------------------------------------------------------------------- numbers


def position_table(steps: pd.DataFrame) -> pd.DataFrame:
    """One row per verified node: group, its depth (``position`` = depth − 1), draft top-1 probability, entropy, the
    target's agreement given its parent, whether it was accepted (on the accepted path) and whether it was reached
    (its parent was: the node decided whether the path grows)."""
    from speckv.oracle import tree_arrays

    if steps.empty or int(steps["num_draft_tokens"].max()) == 0:
        return pd.DataFrame(columns=[*GROUP, "task", "position", "top1", "entropy", "agree", "accepted", "reached"])
    arr = tree_arrays(steps.reset_index(drop=True))
    real = arr["real"]
    parent_on = np.concatenate([np.ones((len(real), 1), bool), arr["on_path"]], axis=1)
    reached = np.take_along_axis(parent_on, arr["parent"], axis=1) & real
    s_idx, n_idx = np.nonzero(real)
    rows = steps.reset_index(drop=True).loc[s_idx, [*GROUP, "task"]].reset_index(drop=True)
    rows["position"] = arr["depth"][s_idx, n_idx] - 1
    rows["top1"], rows["entropy"] = arr["top1"][s_idx, n_idx], arr["entropy"][s_idx, n_idx]
    rows["agree"] = arr["accept"][s_idx, n_idx].astype(float)
    rows["accepted"] = arr["on_path"][s_idx, n_idx].astype(float)
    rows["reached"] = reached[s_idx, n_idx]
    return rows


def budget_table(steps: pd.DataFrame) -> pd.DataFrame:
    """Accepted length by tree budget: steps, share of steps and mean acceptance length (bonus included) per
    compression level and number of nodes verified."""
    budget = pd.cut(steps["num_draft_tokens"], [-1, 0, 1, 2, 4, 8, 16, 32, 1 << 20],
                    labels=["0", "1", "2", "3-4", "5-8", "9-16", "17-32", ">32"])
    g = steps.assign(budget=budget).groupby(["compression", "budget"], observed=True)
    table = pd.DataFrame({"steps": g.size(), "mean acceptance length": g["num_accepted_tokens"].mean() + 1,
                          "mean depth": g["tree_depth"].mean() if "tree_depth" in steps else np.nan})
    table["share of steps"] = table["steps"] / table.groupby(level="compression")["steps"].transform("sum")
    return table


def correlations(positions: pd.DataFrame) -> dict[str, float]:
    """Pearson (point-biserial) and Spearman correlation of the target's agreement with the draft's signals."""
    out = {"n_tokens": float(len(positions))}
    agree = positions["agree"]
    for signal in ("top1", "entropy"):
        x = positions[signal]
        # Spearman = Pearson of average ranks (pandas' own needs scipy)
        pairs = {"pearson": (x, agree), "spearman": (x.rank(), agree.rank())}
        for method, (a, b) in pairs.items():
            out[f"{signal}_{method}"] = float(a.corr(b)) if len(positions) > 2 else math.nan
    return out


def group_metrics(rows: pd.DataFrame) -> pd.Series:
    """The report's columns for one group of replayed step rows (see speckv.oracle for the time conventions)."""
    steps = len(rows)
    acceptance = RequestStats(steps, int(rows["num_draft_tokens"].sum()), int(rows["num_accepted_tokens"].sum()))
    acceptance = acceptance.summary()
    total_ms = rows["observed_ms"].sum()
    oracle_ms = rows["oracle_ms"].sum() * total_ms / rows["modelled_ms"].sum()  # as in oracle.gap_table
    tokens = rows["num_emitted_tokens"].sum()
    # telemetry from before num_decisions was logged: the budget plus one decision per drafted token
    decisions = rows["num_decisions"] if "num_decisions" in rows else rows["num_draft_tokens"] + 1
    per_decision = rows["decision_ms"] / decisions.clip(lower=1)
    return pd.Series({
        "requests": rows["request_id"].nunique(),
        "steps": steps,
        "mean nodes": rows["num_draft_tokens"].mean(),
        "mean acceptance length": acceptance["mean_acceptance_length"],
        "draft acceptance rate": acceptance["draft_acceptance_rate"] or math.nan,
        "tokens/s": 1e3 * tokens / total_ms if total_ms > 0 else math.nan,
        "oracle tokens/s": 1e3 * tokens / oracle_ms if oracle_ms > 0 else math.nan,
        "draft share": rows["observed_draft_ms"].sum() / total_ms if total_ms > 0 else math.nan,
        "verify share": rows["observed_verify_ms"].sum() / total_ms if total_ms > 0 else math.nan,
        "policy share": rows["decision_ms"].sum() / total_ms if total_ms > 0 else math.nan,
        "decision ms p50": per_decision.quantile(0.5),
        "decision ms p99": per_decision.quantile(0.99),
    })


def metrics_table(replayed: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    if by:
        table = replayed.groupby(by, sort=True, dropna=False).apply(group_metrics)
    else:
        table = group_metrics(replayed).to_frame("all").T
    return table.astype({"requests": int, "steps": int})


# ---------------------------------------------------------------------------------------------- plots


def _label(key) -> str:
    return " · ".join(str(k) for k in key) if isinstance(key, tuple) else str(key)


def _save(fig: Figure, out: Path, name: str) -> str:
    FigureCanvasAgg(fig)  # headless: attach the Agg canvas explicitly, no pyplot state
    fig.tight_layout()
    fig.savefig(out / name, dpi=110)
    return name


def plot_acceptance_by_position(positions: pd.DataFrame, out: Path) -> str:
    fig = Figure(figsize=(11, 4.2))
    ax_cond, ax_abs = fig.subplots(1, 2)
    for key, g in positions.groupby(GROUP, sort=True):
        reached = g[g["reached"]]
        cond = reached.groupby("position")["accepted"].agg(["mean", "size"])
        cond = cond[cond["size"] >= 3]
        ax_cond.plot(cond.index + 1, cond["mean"], marker="o", label=_label(key))
        absolute = g.groupby("position")["accepted"].agg(["mean", "size"])
        absolute = absolute[absolute["size"] >= 3]
        ax_abs.plot(absolute.index + 1, absolute["mean"], marker="o", label=_label(key))
    ax_cond.set(title="P(accept at i | tokens before i accepted)", xlabel="draft position i", ylabel="acceptance",
                ylim=(0, 1.02))
    ax_abs.set(title="P(token at i accepted | drafted at i)", xlabel="draft position i", ylim=(0, 1.02))
    for ax in (ax_cond, ax_abs):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax_cond.legend(fontsize=8)
    return _save(fig, out, "acceptance_by_position.png")


MIN_BIN = 5  # fewer tokens than this in a bin: not plotted (noise)


def _binned(x: pd.Series, y: pd.Series, edges: np.ndarray) -> pd.DataFrame:
    idx = np.clip(np.digitize(x, edges[1:-1]), 0, len(edges) - 2)
    frame = pd.DataFrame({"bin": idx, "x": x.to_numpy(), "y": y.to_numpy()})
    g = frame.groupby("bin").agg(x=("x", "mean"), y=("y", "mean"), n=("y", "size"))
    g["se"] = np.sqrt(g["y"] * (1 - g["y"]) / g["n"])
    return g[g["n"] >= MIN_BIN]


def plot_acceptance_vs_signals(positions: pd.DataFrame, corr: dict[str, float], out: Path, bins: int) -> str:
    fig = Figure(figsize=(11, 4.2))
    axes = fig.subplots(1, 2)
    panels = ((axes[0], "top1", "draft top-1 probability"), (axes[1], "entropy", "draft entropy (nats)"))
    for ax, signal, xlabel in panels:
        x = positions[signal]
        # top-1 lives on [0, 1]: equal-width bins; entropy is skewed: equal-count bins for the curve
        quantiles = np.linspace(0, 1, bins + 1)
        edges = quantiles if signal == "top1" else np.unique(np.quantile(x, quantiles))
        if len(edges) < 2:
            edges = np.array([x.min(), x.max() + 1e-6])
        hist_range = (0.0, 1.0) if signal == "top1" else (0.0, max(float(x.quantile(0.99)), 1e-3))
        counts = ax.twinx()
        counts.hist(x.clip(*hist_range), bins=40, range=hist_range, color="0.85", zorder=0)
        counts.set_ylabel("drafted tokens", color="0.5")
        ax.set_zorder(counts.get_zorder() + 1)
        ax.patch.set_visible(False)
        g = _binned(x, positions["agree"], edges)
        ax.errorbar(g["x"], g["y"], yerr=g["se"], marker="o", capsize=3, label="all positions")
        first = positions[positions["position"] == 0]
        if len(first):
            g0 = _binned(first[signal], first["agree"], edges)
            ax.plot(g0["x"], g0["y"], marker=".", linestyle="--", alpha=0.7, label="position 1 only")
        if signal == "top1":
            ax.plot([0, 1], [0, 1], color="0.6", linewidth=0.8, label="calibrated")
        ax.set(xlabel=xlabel, ylabel="target agrees (given drafted prefix)", ylim=(0, 1.02),
               title=f"Pearson r = {corr[signal + '_pearson']:.3f}, Spearman ρ = {corr[signal + '_spearman']:.3f}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    return _save(fig, out, "acceptance_vs_signals.png")


def plot_gamma_histogram(steps: pd.DataFrame, out: Path) -> str:
    """Share of steps per budget (nodes verified): one row of panels per policy, one column per compression level."""
    policies = sorted(steps["policy"].unique())
    levels = sorted(steps["compression"].unique())
    fig = Figure(figsize=(3.6 * len(levels) + 0.6, 2.8 * len(policies) + 0.4))
    axes = fig.subplots(len(policies), len(levels), squeeze=False, sharey=True)
    gmax = int(max(steps["gamma_max"].max(), steps["num_draft_tokens"].max()))
    for (r, policy), (c, level) in ((rp, cl) for rp in enumerate(policies) for cl in enumerate(levels)):
        ax = axes[r][c]
        g = steps[(steps["policy"] == policy) & (steps["compression"] == level)]
        if g.empty:
            ax.set_axis_off()
            continue
        counts = g["num_draft_tokens"].value_counts().reindex(range(gmax + 1), fill_value=0)
        ax.bar(counts.index, counts / counts.sum())
        ax.set_title(f"{policy} · {level}  (mean {g['num_draft_tokens'].mean():.2f} nodes, {len(g)} steps)", fontsize=9)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3, axis="y")
        if r == len(policies) - 1:
            ax.set_xlabel("nodes verified (γ for a chain)")
        if c == 0:
            ax.set_ylabel("share of steps")
    return _save(fig, out, "gamma_histogram.png")


def _grouped_bars(ax, table: pd.DataFrame, column: str, ylabel: str) -> None:
    """Bars of ``table[column]`` (index: task, group...) — tasks on the x axis, one bar per policy·compression."""
    wide = table[column].unstack(GROUP)
    n = max(len(wide.columns), 1)
    width = 0.8 / n
    x = np.arange(len(wide.index))
    for i, key in enumerate(wide.columns):
        ax.bar(x + (i - (n - 1) / 2) * width, wide[key].to_numpy(float), width, label=_label(key))
    ax.set_xticks(x, [str(t) for t in wide.index])
    ax.set(ylabel=ylabel)
    ax.grid(alpha=0.3, axis="y")


def plot_by_task(by_task: pd.DataFrame, out: Path) -> str:
    table = by_task.reorder_levels(["task", *GROUP])
    fig = Figure(figsize=(13.5, 4))
    axes = fig.subplots(1, 3)
    _grouped_bars(axes[0], table, "mean acceptance length", "tokens per verify step (bonus incl.)")
    _grouped_bars(axes[1], table, "draft acceptance rate", "accepted / drafted")
    _grouped_bars(axes[2], table, "tokens/s", "decode tokens/s")
    axes[0].set_title("mean acceptance length")
    axes[1].set_title("draft acceptance rate")
    axes[2].set_title("tokens/s")
    axes[2].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, out, "by_task.png")


def plot_oracle_gap(gaps: pd.DataFrame, out: Path) -> str:
    fig = Figure(figsize=(max(6, 2.2 * len(gaps)), 4))
    ax = fig.subplots()
    x = np.arange(len(gaps))
    width = 0.27
    for i, (col, label) in enumerate((("observed_tok_s", "observed (measured)"),
                                      ("modelled_tok_s", "observed (cost model)"),
                                      ("oracle_tok_s", "hindsight oracle"))):
        ax.bar(x + (i - 1) * width, gaps[col], width, label=label)
    for xi, (_, row) in zip(x, gaps.iterrows()):
        ax.annotate(f"{row['gap']:+.0%}", (xi + width, row["oracle_tok_s"]), ha="center", va="bottom", fontsize=9)
    ax.set_xticks(x, [_label(k) for k in gaps.index])
    ax.set(ylabel="decode tokens/s", title="oracle gap: drafting exactly the tokens that get accepted")
    ax.set_ylim(0, 1.25 * float(gaps[["observed_tok_s", "oracle_tok_s"]].max().max()))
    ax.legend(fontsize=8, loc="upper left", ncol=3)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, out, "oracle_gap.png")


def plot_cost_breakdown(replayed: pd.DataFrame, out: Path) -> str:
    sums = replayed.groupby(GROUP, sort=True)[["observed_draft_ms", "observed_verify_ms", "decision_ms",
                                               "num_emitted_tokens"]].sum()
    per_token = sums[["observed_draft_ms", "observed_verify_ms", "decision_ms"]].div(sums["num_emitted_tokens"], axis=0)
    fig = Figure(figsize=(8, 1.2 + 0.6 * len(per_token)))
    ax = fig.subplots()
    y = np.arange(len(per_token))
    left = np.zeros(len(per_token))
    for col, label in (("observed_draft_ms", "draft"), ("observed_verify_ms", "verify"), ("decision_ms", "policy")):
        ax.barh(y, per_token[col], left=left, label=label)
        left += per_token[col].to_numpy()
    ax.set_yticks(y, [_label(k) for k in per_token.index])
    ax.invert_yaxis()  # first group on top, as in the tables
    ax.set(xlabel="ms per emitted token (decode steps)", title="cost breakdown")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="x")
    return _save(fig, out, "cost_breakdown.png")


def plot_verify_cost(replayed: pd.DataFrame, out: Path) -> str:
    """Measured verify ms by tokens verified (one point per batch step) — what the oracle's cost model is fit to."""
    bs = oracle.batch_steps(replayed.drop(columns=["batch_step"]))
    fig = Figure(figsize=(6.5, 4))
    ax = fig.subplots()
    keys = [c for c in oracle.COST_GROUP if c in bs.columns] + ["B"]
    rng = np.random.default_rng(0)
    for key, g in bs.groupby(keys, sort=True):
        jitter = rng.uniform(-0.12, 0.12, len(g))
        points = ax.scatter(g["T"] + jitter, g["verify_ms"], s=8, alpha=0.35)
        med = g.groupby("T")["verify_ms"].mean()
        label = f"{_label(key[:-1])} · batch {key[-1]}"
        ax.plot(med.index, med.to_numpy(), marker="o", color=points.get_facecolor()[0][:3], label=label)
    ax.set(xlabel="tokens verified per row (1 + max γ)", ylabel="verify ms (batch step)",
           title="verify cost vs tokens verified (mean line)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, out, "verify_cost.png")


# ---------------------------------------------------------------------------------------------- report


def _fmt(value) -> str:
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return "–"
        return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
    return str(value)


SHARES = ("draft share", "verify share", "policy share", "draft acceptance rate", "gap", "wasted draft share")


def markdown_table(table: pd.DataFrame) -> str:
    """A GitHub Markdown table of ``table`` with its index levels as leading columns."""
    flat = table.reset_index()
    if list(flat.columns[:1]) == ["index"]:
        flat = flat.drop(columns="index")
    header = "| " + " | ".join(str(c) for c in flat.columns) + " |"
    rule = "|" + "|".join("---:" if pd.api.types.is_numeric_dtype(flat[c]) else "---" for c in flat.columns) + "|"
    lines = [header, rule]
    for i in range(len(flat)):  # by column, not iterrows: a row Series would turn the int columns into floats
        cells = [f"{v:.1%}" if c in SHARES and isinstance(v, float) and not math.isnan(v) else _fmt(v)
                 for c, v in ((c, flat[c].iloc[i]) for c in flat.columns)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def build_report(steps: pd.DataFrame, out: Path, *, bins: int = 10, source: str = "") -> dict:
    """Compute every table and plot for ``steps`` (step telemetry rows) into ``out``; returns the summary dict."""
    out.mkdir(parents=True, exist_ok=True)
    replayed = oracle.time_shares(steps)
    positions = position_table(steps)
    corr = correlations(positions)

    overall = metrics_table(replayed, [])
    by_group = metrics_table(replayed, GROUP)
    by_task = metrics_table(replayed, [*GROUP, "task"])
    gaps = oracle.gap_table(replayed, GROUP)
    overall_gap = oracle.gap_table(replayed).iloc[0]

    plots = [plot_acceptance_by_position(positions, out) if len(positions) else None,
             plot_acceptance_vs_signals(positions, corr, out, bins) if len(positions) else None,
             plot_gamma_histogram(steps, out),
             plot_by_task(by_task, out),
             plot_oracle_gap(gaps, out),
             plot_cost_breakdown(replayed, out),
             plot_verify_cost(replayed, out)]
    plots = [p for p in plots if p]

    n_batch_steps = replayed["batch_step"].nunique()
    mismatched = int((replayed.groupby("batch_step").agg(n=("batch_size", "size"), b=("batch_size", "max"))
                      .query("n != b").shape[0]))
    lines = index_lines(steps, source, n_batch_steps, overall, by_group, by_task, corr, gaps, overall_gap, plots,
                        mismatched)
    (out / "index.md").write_text("\n".join(lines), encoding="utf-8")

    summary = {
        "source": source,
        "rows": int(len(steps)),
        "requests": int(steps["request_id"].nunique()),
        "batch_steps": int(n_batch_steps),
        "correlation": corr,
        "overall": {k: _json_number(v) for k, v in overall.iloc[0].items()},
        "oracle": {k: _json_number(v) for k, v in overall_gap.items()},
        "plots": plots,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    return summary


def signal_and_oracle_lines(corr: dict, gap_view: pd.DataFrame, overall_gap: pd.Series) -> list[str]:
    return [
        "## Acceptance vs the draft's signals",
        "",
        f"Over {int(corr['n_tokens'])} drafted tokens, the target's agreement (given the drafted prefix) correlates "
        f"with the draft's top-1 probability at Pearson r = {corr['top1_pearson']:.3f} "
        f"(Spearman ρ = {corr['top1_spearman']:.3f}) and with its entropy at r = {corr['entropy_pearson']:.3f} "
        f"(ρ = {corr['entropy_spearman']:.3f}). The seed write-up quotes 0.56 for top-1 probability.",
        "",
        "## Hindsight oracle",
        "",
        "The oracle replays each step drafting exactly the tokens that were accepted (capped at what was drafted), "
        "so it emits the same tokens with no wasted drafts, a narrower verify and no policy time. Its cost uses a "
        "draft and verify cost model fit to this telemetry per compression/device/drafter (verify ms by batch size "
        "and tokens verified; draft ms per draft forward); *cost-model tokens/s* re-costs the observed steps with "
        "the same model, as a check of the fit. gap = cost-model time of the observed steps / the oracle's − 1 (the fit's "
        "error cancels); oracle tokens/s = observed × (1 + gap).",
        "",
        markdown_table(gap_view),
        "",
        f"Overall: observed {overall_gap['observed_tok_s']:.1f} tokens/s, oracle {overall_gap['oracle_tok_s']:.1f} "
        f"tokens/s, gap {overall_gap['gap']:+.1%}.",
        "",
    ]


def index_lines(steps, source, n_batch_steps, overall, by_group, by_task, corr, gaps, overall_gap, plots,
                mismatched) -> list[str]:
    """The report's markdown, section by section."""
    gap_view = gaps.rename(columns={"observed_tok_s": "observed tokens/s", "modelled_tok_s": "cost-model tokens/s",
                                    "oracle_tok_s": "oracle tokens/s", "wasted_draft_frac": "wasted draft share"})
    lines = [
        "# speckv telemetry report",
        "",
        f"Source: `{source}` — {len(steps)} step rows, {steps['request_id'].nunique()} requests, "
        f"{n_batch_steps} batched engine steps, {steps['actor_id'].nunique()} engine(s).",
        "",
        "Conventions: *mean acceptance length* = tokens per verify step, bonus token included; *draft acceptance "
        "rate* = accepted / drafted; *tokens/s* = emitted tokens over the decode steps' draft + verify + policy time "
        "(prefill excluded; each batched step's time is shared equally by its rows; with several engines the "
        "times add up, so this is per-engine throughput). Shares are of that time.",
        "",
        "## Overall",
        "",
        markdown_table(overall),
        "",
        "## By policy × compression",
        "",
        markdown_table(by_group),
        "",
        "## By policy × compression × task",
        "",
        markdown_table(by_task),
        "",
        "## Accepted length by tree budget",
        "",
        "Nodes verified per step (γ for a chain) against the tokens each step emitted, per compression level; the "
        "share of steps is the budget histogram (plotted below per policy).",
        "",
        markdown_table(budget_table(steps)),
        "",
        *signal_and_oracle_lines(corr, gap_view, overall_gap),
        "## Plots",
        "",
    ]
    captions = {
        "acceptance_by_position.png": "Acceptance by draft position",
        "acceptance_vs_signals.png": "Acceptance vs draft top-1 probability and entropy (bars: token counts)",
        "gamma_histogram.png": "Nodes verified per step (the budget), per policy and compression",
        "by_task.png": "Acceptance and tokens/s by task",
        "oracle_gap.png": "Observed vs hindsight-oracle tokens/s",
        "cost_breakdown.png": "Where decode time goes",
        "verify_cost.png": "Verify cost vs tokens verified (the oracle's cost model input)",
    }
    for name in plots:
        lines += [f"### {captions[name]}", "", f"![{captions[name]}]({name})", ""]
    if mismatched:
        lines += [f"Note: {mismatched} batched steps could not be told apart from the rows' shared timings "
                  "(row count ≠ batch_size); their time shares are approximate.", ""]
    return lines


def _json_number(value) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value
