"""`speckv analyze` and the hindsight oracle: exact oracle cases, a synthetic report, real generate → analyze."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from speckv import oracle
from speckv.costs import CostModel
from speckv.telemetry import steps_table

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SPECKV = Path(sys.executable).with_name("speckv")


def _row(**kw) -> dict:
    base = {"request_id": "r0", "task": "code", "step": 0, "policy": "fixed", "drafter": "lm", "batch_size": 1,
            "context_len": 100, "num_draft_tokens": 0, "num_accepted_tokens": 0, "num_emitted_tokens": 1,
            "draft_top1": [], "draft_entropy": [], "draft_accept": [], "draft_ms": 0.0, "verify_ms": 40.0,
            "decision_ms": 0.0, "max_tokens_verified": 1, "temperature": 0.0, "target_dtype": "bf16",
            "quantization": "none", "compression": "bf16", "device": "cpu", "gamma_max": 4, "accept_rate": 0.5,
            "lookup_rate": 0.5, "actor_id": "a0"}
    base.update(kw)
    n = len(base["draft_accept"])  # a chain: node i's parent is node i (the root is 0), drawn from the head
    chain = {"node_parent": list(range(n)), "node_prob": list(base["draft_top1"]), "node_rank": [0] * n,
             "node_source": [0] * n, "node_match": [0] * n, "node_value": [0.5] * n, "tree_depth": n,
             "draft_forwards": base["num_draft_tokens"]}
    return {**chain, **base}


def synthetic_steps(seed: int = 0, requests: int = 24, batch: int = 4) -> pa.Table:
    """Realistic telemetry: 2 policies × 2 compressions × 3 tasks, batched steps with ragged γ, acceptance that
    follows the draft's top-1 probability, verify cost rising with tokens verified."""
    rng = np.random.default_rng(seed)
    rows = []
    tasks = ["code", "math", "dialogue"]
    for policy in ("fixed", "confidence"):
        for compression, verify_base in (("bf16", 42.0), ("nf4", 55.0)):
            actor = f"{policy}-{compression}"
            for start in range(0, requests, batch):
                ids = [f"{policy}-{compression}-{i}" for i in range(start, start + batch)]
                ctx = {i: 60 + 5 * k for k, i in enumerate(ids)}
                for step in range(12):
                    gammas = {}
                    signals = {}
                    for i in ids:
                        top1 = np.clip(rng.beta(4, 2, size=4), 0.05, 0.999)
                        entropy = -np.log(top1) * 2.0 + rng.normal(0, 0.1, 4).clip(-0.05)
                        accept = rng.random(4) < 0.95 * top1
                        g = 4 if policy == "fixed" else int(max(0, np.argmax(np.append(top1 < 0.5, True))))
                        gammas[i], signals[i] = g, (top1[:g], entropy[:g], accept[:g])
                    k = max(gammas.values())
                    draft_ms = float(np.float32(3.0 * k * (1 + 0.05 * rng.random())))
                    verify_ms = float(np.float32(verify_base * (1 + 0.04 * k) * (1 + 0.05 * rng.random())))
                    for i in ids:
                        top1, entropy, accept = signals[i]
                        a = int(np.argmin(np.append(accept, False)))
                        rows.append(_row(
                            request_id=i, task=tasks[int(i.rsplit("-", 1)[1]) % 3], step=step, policy=policy,
                            batch_size=batch, context_len=ctx[i], num_draft_tokens=gammas[i], num_accepted_tokens=a,
                            num_emitted_tokens=a + 1, draft_top1=top1.tolist(), draft_entropy=entropy.tolist(),
                            draft_accept=accept.tolist(), draft_ms=draft_ms, verify_ms=verify_ms,
                            decision_ms=float(rng.uniform(0.01, 0.05)), max_tokens_verified=k + 1,
                            quantization="nf4" if compression == "nf4" else "none", compression=compression,
                            actor_id=actor))
                        ctx[i] += a + 1
    return steps_table(rows)


def assert_pngs(report: Path, at_least: int) -> list[Path]:
    pngs = sorted(report.glob("*.png"))
    assert len(pngs) >= at_least, pngs
    for png in pngs:
        data = png.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000, png
        import matplotlib.image

        image = matplotlib.image.imread(png)
        assert image.shape[0] > 100 and image.shape[1] > 100
        assert image.std() > 0.01, f"{png} is blank"
    return pngs


def assert_readable_everywhere(telemetry_dir: Path, expected_rows: int) -> None:
    assert len(pd.read_parquet(telemetry_dir)) == expected_rows
    assert pq.read_table(telemetry_dir).num_rows == expected_rows
    try:
        import duckdb
    except ImportError:
        return
    query = f"select count(*), sum(num_emitted_tokens) from read_parquet('{telemetry_dir}/*.parquet')"
    ((n, emitted),) = duckdb.sql(query).fetchall()
    assert n == expected_rows and emitted > 0
    # list columns come through as lists too
    query = f"select max(len(draft_accept)), max(num_draft_tokens) from read_parquet('{telemetry_dir}/*.parquet')"
    ((longest, most_drafted),) = duckdb.sql(query).fetchall()
    assert longest == most_drafted  # one accept flag per drafted position, read back through duckdb


# ------------------------------------------------------------------------------------------ oracle: exact cases


def test_oracle_drafts_exactly_the_accepted_tokens():
    costs = CostModel(batch_sizes=[2], tokens=[1, 2, 3, 4, 5], verify_ms=[[40, 42, 44, 46, 48]], draft_ms=[5.0])
    steps = steps_table([
        # step 1: rows drafted 4 and 2, accepted 1 and 2 -> oracle drafts max(1, 2) = 2 forwards, verifies 3 tokens
        _row(request_id="a", batch_size=2, num_draft_tokens=4, num_accepted_tokens=1, num_emitted_tokens=2,
             draft_ms=20.0, verify_ms=48.0, max_tokens_verified=5, decision_ms=0.5),
        _row(request_id="b", batch_size=2, num_draft_tokens=2, num_accepted_tokens=2, num_emitted_tokens=3,
             draft_ms=20.0, verify_ms=48.0, max_tokens_verified=5, decision_ms=0.5),
        # step 2: nothing accepted -> the oracle does not draft at all
        _row(request_id="a", step=1, batch_size=2, num_draft_tokens=3, num_accepted_tokens=0, num_emitted_tokens=1,
             draft_ms=15.0, verify_ms=46.0, max_tokens_verified=4),
        _row(request_id="b", step=1, batch_size=2, num_draft_tokens=3, num_accepted_tokens=0, num_emitted_tokens=1,
             draft_ms=15.0, verify_ms=46.0, max_tokens_verified=4),
    ])
    replayed = oracle.time_shares(steps, costs)
    assert replayed["batch_step"].nunique() == 2
    assert replayed["oracle_ms"].tolist() == pytest.approx([(10 + 44) / 2] * 2 + [40 / 2] * 2)
    assert replayed["observed_ms"].tolist() == pytest.approx([34.5, 34.5, 30.5, 30.5])
    assert replayed["wasted_draft_tokens"].tolist() == [3, 0, 3, 3]
    gap = oracle.oracle_gap(steps, costs)
    assert gap["tokens"] == 7
    assert gap["observed_tok_s"] == pytest.approx(1e3 * 7 / 130)
    assert gap["oracle_tok_s"] == pytest.approx(1e3 * 7 / 94)
    assert gap["gap"] == pytest.approx(130 / 94 - 1)
    assert gap["wasted_draft_frac"] == pytest.approx(9 / 12)


def test_fit_costs_recovers_linear_verify_and_draft_cost():
    rows = []
    for s, (k, b) in enumerate([(k, b) for k in (0, 1, 2, 4, 6) for b in (1, 4)] * 3):
        for r in range(b):
            rows.append(_row(request_id=f"r{r}", step=s, batch_size=b, num_draft_tokens=k, max_tokens_verified=k + 1,
                             draft_ms=2.0 * b ** 0.5 * k + 1e-3 * s, verify_ms=40.0 + 10 * b + 3.0 * (k + 1),
                             gamma_max=8))
    model = oracle.fit_costs(steps_table(rows), gamma_max=8)
    assert model.tokens == list(range(1, 10))
    for b in (1, 4):
        assert model.draft(b) == pytest.approx(2.0 * b ** 0.5, rel=2e-2)
        for t in (1, 3, 7, 9):  # 9 is beyond the data: extended with the fitted slope
            assert model.verify(b, t) == pytest.approx(40 + 10 * b + 3.0 * t, rel=1e-6)


def test_fit_costs_is_flat_when_only_one_width_was_seen():
    rows = [_row(step=s, num_draft_tokens=4, max_tokens_verified=5, draft_ms=12.0, verify_ms=50.0 + s % 3)
            for s in range(9)]
    model = oracle.fit_costs(steps_table(rows))
    assert model.verify(1, 1) == pytest.approx(51.0) and model.verify(1, 5) == pytest.approx(51.0)
    assert model.draft(1) == pytest.approx(3.0)


def test_fit_costs_prices_draft_forwards_by_the_rows_they_feed():
    def forward(x):  # ms of a draft forward feeding x rows (batch × nodes a row)
        return 2.0 + 0.5 * x

    rows, shapes = [], [(2, [1]), (2, [1, 3]), (2, [1, 3, 3]), (2, [1, 2]), (4, [1]), (4, [1, 3])] * 2
    for s, (b, widths) in enumerate(shapes):
        for r in range(b):
            rows.append(_row(request_id=f"r{r}", step=s, batch_step_id=s, batch_size=b, num_draft_tokens=sum(widths),
                             draft_forwards=len(widths), draft_widths=widths, max_tokens_verified=2, verify_ms=40.0,
                             draft_ms=sum(forward(b * w) for w in widths)))
    steps = steps_table(rows)
    model = oracle.fit_costs(steps)
    for b, w in ((2, 1), (2, 3), (4, 1), (4, 3), (2, 2), (3, 2), (8, 4)):
        assert model.draft(b, w) == pytest.approx(forward(b * w), rel=1e-6)
    modelled = oracle.time_shares(steps).groupby("batch_step")["modelled_ms"].sum()
    assert modelled.to_numpy() == pytest.approx([40.0 + sum(forward(b * w) for w in ws) for b, ws in shapes])
    unlogged = oracle.fit_costs(steps.drop_columns(["draft_widths"]))  # older telemetry: forwards of one node a row
    assert unlogged.draft(2) < model.draft(2, 3) and unlogged.draft(2) > model.draft(2)
    one_shape = oracle.fit_costs(steps_table([r for r in rows if r["draft_widths"] == [1, 3, 3]]))
    assert one_shape.draft(2, 1) == pytest.approx(one_shape.draft(2, 3))  # nothing separates per forward from per row


def test_ar_telemetry_has_no_gap():
    rows = [_row(step=s, verify_ms=40.0 + s, policy="ar") for s in range(5)]
    gap = oracle.oracle_gap(steps_table(rows))
    assert gap["wasted_draft_frac"] != gap["wasted_draft_frac"]  # nothing drafted: NaN
    assert gap["oracle_tok_s"] == pytest.approx(gap["modelled_tok_s"])


def test_step_ids_split_rows_by_shared_timings():
    table = synthetic_steps(requests=8)
    frame = table.to_pandas()
    ids = oracle.step_ids(frame)
    sizes = frame.groupby(ids)["batch_size"].agg(["size", "max"])
    assert (sizes["size"] == sizes["max"]).all()


# ------------------------------------------------------------------------------------------ the report


def test_report_from_synthetic_telemetry(tmp_path):
    from speckv.cli import main

    telemetry = tmp_path / "run" / "telemetry"
    telemetry.mkdir(parents=True)
    table = synthetic_steps()
    half = table.num_rows // 2
    pq.write_table(table.slice(0, half), telemetry / "part-00000.parquet")
    pq.write_table(table.slice(half), telemetry / "part-00001.parquet")
    assert_readable_everywhere(telemetry, table.num_rows)

    report = tmp_path / "report"
    assert main(["analyze", str(tmp_path / "run"), "--output", str(report)]) == 0  # parent dir is accepted too
    index = (report / "index.md").read_text()
    pngs = assert_pngs(report, 6)
    for png in pngs:
        assert f"]({png.name})" in index
    for heading in ("By policy × compression × task", "Hindsight oracle", "Pearson r =",
                    "Accepted length by tree budget"):
        assert heading in index
    summary = json.loads((report / "summary.json").read_text())
    corr = summary["correlation"]
    assert math.isfinite(corr["top1_pearson"]) and corr["top1_pearson"] > 0.2  # acceptance follows top-1 by design
    assert math.isfinite(corr["entropy_pearson"]) and corr["entropy_pearson"] < 0
    assert summary["oracle"]["gap"] > 0 and summary["oracle"]["oracle_tok_s"] > summary["oracle"]["observed_tok_s"]
    assert summary["overall"]["steps"] == table.num_rows
    # every policy × compression × task group gets a table row
    assert index.count("| confidence | nf4 | math |") == 1


def test_no_telemetry_is_a_clear_error(tmp_path, capsys):
    from speckv.cli import main

    (tmp_path / "empty").mkdir()
    assert main(["analyze", str(tmp_path / "empty"), "--output", str(tmp_path / "r")]) == 2
    assert "no telemetry" in capsys.readouterr().err
    pq.write_table(steps_table([]), tmp_path / "empty" / "part-0.parquet")
    assert main(["analyze", str(tmp_path / "empty"), "--output", str(tmp_path / "r")]) == 2
    assert "no telemetry rows" in capsys.readouterr().err
    assert main(["analyze", str(tmp_path / "missing"), "--output", str(tmp_path / "r")]) == 2


def test_generate_then_analyze(tmp_path, tiny_pair_dirs):
    """The real path: `speckv generate` with tiny models writes telemetry that `speckv analyze` turns into a report."""
    target, draft = tiny_pair_dirs
    prompts = tmp_path / "prompts.jsonl"
    tasks = ["code", "math", "dialogue"]
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Write item number {i} of a short list about "
                                                                    f"{tasks[i % 3]}.", "task": tasks[i % 3]}) + "\n"
                               for i in range(6)))
    out = tmp_path / "gen"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    subprocess.run([str(SPECKV), "generate", "--input", str(prompts), "--output", str(out), "--target", str(target),
                    "--draft", str(draft), "--draft-kind", "lm", "--dtype", "fp32", "--policy", "fixed", "--gamma",
                    "3", "--max-new-tokens", "16", "--batch-size", "3", "--threads", "1", "--no-lookup"],
                   check=True, env=env, capture_output=True, timeout=300)
    rows = pq.read_table(out / "telemetry").num_rows
    assert rows > 0
    assert_readable_everywhere(out / "telemetry", rows)

    report = tmp_path / "report"
    done = subprocess.run([str(SPECKV), "analyze", str(out / "telemetry"), "--output", str(report)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (report / "index.md").is_file()
    assert_pngs(report, 3)
    summary = json.loads((report / "summary.json").read_text())
    assert summary["rows"] == rows
    assert all(math.isfinite(v) for v in summary["oracle"].values() if v is not None)
    positions = summary["correlation"]
    assert positions["n_tokens"] > 0
    # the correlation is finite whenever the draft both hit and missed (it does with this related tiny pair)
    frame = pd.read_parquet(out / "telemetry")
    flags = np.concatenate([np.asarray(f, bool) for f in frame["draft_accept"]])
    if 0 < flags.mean() < 1:
        assert math.isfinite(positions["top1_pearson"]) and math.isfinite(positions["entropy_pearson"])


def test_telemetry_files_accepts_parts_dir_parent_nested_and_file(tmp_path):
    from speckv.analyze import telemetry_files

    part = tmp_path / "out" / "telemetry" / "actor=1" / "part-0.parquet"
    part.parent.mkdir(parents=True)
    pq.write_table(steps_table([_row()]), part)
    (tmp_path / "out" / "outputs").mkdir()
    pq.write_table(pa.table({"id": ["x"]}), tmp_path / "out" / "outputs" / "part-0.parquet")
    for given in (tmp_path / "out", tmp_path / "out" / "telemetry", part):
        assert telemetry_files(given)[1] == [part]
