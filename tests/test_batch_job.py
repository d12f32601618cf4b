"""End to end on a real local Ray cluster: the batch job submitted through the Jobs API, good and malformed rows, one
actor killed mid-job, then a resume — every input line must be in the outputs exactly once."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from speckv.io import read_table

REPO = Path(__file__).resolve().parents[1]
JOB = "jobs/batch_generate.py"
ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "RAY_DEDUP_LOGS": "0"}

GOOD = {f"g{i}": f"Write a short poem about the number {i}." for i in range(6)}
#: malformed lines, keyed by the id the job must give them, with a phrase their error message must contain
BAD_LINES = [
    ("7", "{not json", "not valid JSON"),
    ("noprompt", json.dumps({"id": "noprompt"}), "missing 'prompt'"),
    ("empty", json.dumps({"id": "empty", "prompt": "   "}), "'prompt' is empty"),
    ("notstr", json.dumps({"id": "notstr", "prompt": 5}), "'prompt' must be a string"),
    ("badparam", json.dumps({"id": "badparam", "prompt": "hi", "max_new_tokens": 0}), "max_new_tokens"),
    ("long", json.dumps({"id": "long", "prompt": "word " * 1500}), "context allows at most"),
    ("g0#line13", json.dumps({"id": "g0", "prompt": "again"}), "duplicate id 'g0'"),
    ("14", "[1, 2]", "expected a JSON object"),
]


def write_input(path: Path) -> dict[str, str | None]:
    """The input file; returns id -> expected error phrase (None for rows that must generate)."""
    lines = [json.dumps({"id": rid, "prompt": prompt, "max_new_tokens": 6}) for rid, prompt in GOOD.items()]
    lines += [raw for _, raw, _ in BAD_LINES]
    path.write_text("\n".join(lines) + "\n\n")  # a trailing blank line is not a row
    return {**{rid: None for rid in GOOD}, **{rid: phrase for rid, _, phrase in BAD_LINES}}


def job_args(tiny_pair_dirs, input_path: Path, out: Path) -> list[str]:
    target, draft = tiny_pair_dirs
    return ["--input", str(input_path), "--output", str(out), "--target", str(target), "--draft", str(draft),
            "--draft-kind", "lm", "--dtype", "fp32", "--policy", "fixed", "--gamma", "2", "--max-new-tokens", "6",
            "--actors", "2", "--batch-size", "2", "--rows-per-call", "3"]


def check_exactly_once(out: Path, expected: dict[str, str | None]) -> None:
    outputs = read_table(out / "outputs").to_pylist()
    counts = Counter(r["id"] for r in outputs)
    assert counts == Counter(list(expected)), f"ids written != input ids: {counts}"
    for row in outputs:
        phrase = expected[row["id"]]
        if phrase is None:
            assert row["status"] == "ok", row
            assert row["token_ids"] and row["finish_reason"] in ("stop", "length")
            assert row["num_spec_steps"] >= 1 and row["actor_id"]
        else:
            assert row["status"] == "error" and phrase in row["error"], row
    steps = read_table(out / "telemetry").to_pylist()
    keys = Counter((s["request_id"], s["step"]) for s in steps)
    assert max(keys.values()) == 1, "a verify step was written twice"
    per_request = Counter(s["request_id"] for s in steps)
    assert per_request == {r["id"]: r["num_spec_steps"] for r in outputs if r["status"] == "ok"}


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths must stay under 107 bytes
    ctx = ray.init(address="local", num_cpus=2, include_dashboard=True, dashboard_port=0, _temp_dir=temp,
                   log_to_driver=False)
    try:
        yield ctx
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def killed_run(ray_cluster, tiny_pair_dirs, tmp_path_factory):
    """The job submitted through the Jobs API with one actor exiting right after its first write."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    root = tmp_path_factory.mktemp("batch_job")
    expected = write_input(root / "prompts.jsonl")
    out, marker = root / "out", root / "crashed"
    client = JobSubmissionClient(f"http://{ray_cluster.dashboard_url}")
    job = client.submit_job(
        entrypoint=shlex.join([sys.executable, JOB, *job_args(tiny_pair_dirs, root / "prompts.jsonl", out)]),
        runtime_env={"working_dir": str(REPO), "env_vars": {**ENV, "SPECKV_TEST_CRASH_ONCE": str(marker)}},
    )
    deadline = time.monotonic() + 300
    while (status := client.get_job_status(job)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.monotonic() < deadline, "batch job did not finish in 300 s"
        time.sleep(1)
    logs = client.get_job_logs(job)
    assert status == JobStatus.SUCCEEDED, f"{client.get_job_info(job).message}\n{logs[-4000:]}"
    return root, out, expected, marker, logs


def test_job_survives_a_killed_actor_exactly_once(killed_run):
    root, out, expected, marker, logs = killed_run
    assert marker.exists(), "the actor never crashed: the retry path went untested"
    check_exactly_once(out, expected)
    assert "rows/s" in logs and "tok/s" in logs  # progress line
    assert "loading the engine" in logs and "ready:" in logs  # each actor says what it is doing from the start
    assert f"{len(expected)} input rows" in logs
    assert "machine: " in logs and "CPU capability usage" in logs  # the final summary names the machine


def test_rerun_resumes_without_regenerating(killed_run, ray_cluster, tiny_pair_dirs):
    """Drop two parts (as if the job had been stopped), rerun as a plain `python` driver: only those rows come back."""
    root, first_out, expected, _, _ = killed_run
    out = root / "resumed"
    shutil.copytree(first_out, out)
    parts = sorted((out / "outputs").glob("*.parquet"))
    dropped = parts[:2]
    dropped_ids = {i for p in dropped for i in pq.read_table(p, columns=["id"]).column("id").to_pylist()}
    for part in dropped:
        part.unlink()
        (out / "telemetry" / part.name).unlink()
    kept = {p.name: p.stat().st_mtime_ns for p in (out / "outputs").glob("*.parquet")}
    cmd = [sys.executable, JOB, *job_args(tiny_pair_dirs, root / "prompts.jsonl", out),
           "--address", ray_cluster.address_info["gcs_address"]]
    env = {**os.environ, **ENV}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"resuming: {len(expected) - len(dropped_ids)} of {len(expected)} rows already" in proc.stderr
    assert {p.name: p.stat().st_mtime_ns for p in (out / "outputs").glob("*.parquet") if p.name in kept} == kept
    check_exactly_once(out, expected)
    # a third run has nothing left to do and does not start Ray at all
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and f"{len(expected)} of {len(expected)} rows already" in proc.stderr
    check_exactly_once(out, expected)


@pytest.mark.parametrize(
    ("extra", "config", "message"),
    [
        (["--policy", "fixed", "--gamma", "40"], None, "gamma: Input should be less than or equal to 32"),
        (["--target", "./no/such/model"], None, "target './no/such/model' does not exist"),
        ([], {"batch_size": 0}, "max_batch_size: Input should be greater than or equal to 1"),
        ([], {"policy": "best", "colour": "red"}, "colour: Extra inputs are not permitted"),
    ],
)
def test_bad_config_fails_before_any_work(tmp_path, extra, config, message):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "hi"}) + "\n")
    out = tmp_path / "out"
    args = [sys.executable, JOB, "--input", str(prompts), "--output", str(out), *extra]
    if config is not None:
        (tmp_path / "job.yaml").write_text(json.dumps(config))  # JSON is YAML
        args += ["--config", str(tmp_path / "job.yaml")]
    proc = subprocess.run(args, cwd=REPO, env={**os.environ, **ENV}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "batch_generate: error" in proc.stderr and message in proc.stderr
    assert not out.exists() and "Ray instance" not in proc.stderr  # nothing started, nothing written


def test_flags_on_the_command_line_win_over_the_config_file(tmp_path):
    sys.path.insert(0, str(REPO / "jobs"))
    try:
        import batch_generate
    finally:
        sys.path.pop(0)
    (tmp_path / "job.yaml").write_text("input: a.jsonl\noutput: /tmp/out\nbatch-size: 2\npolicy: ar\nactors: 3\n")
    config = batch_generate.load_config(["--config", str(tmp_path / "job.yaml"), "--batch-size", "8"])
    assert config.engine.max_batch_size == 8 and config.engine.policy.name == "ar" and config.actors == 3
    assert config.input == "a.jsonl" and config.call_rows == 8  # one call: a batch of the flag's size, not 2
