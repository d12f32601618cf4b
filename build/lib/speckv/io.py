"""Input rows in, Parquet out — the one loader, writer and error formatter of ``speckv generate``, ``speckv
collect``, ``speckv bench``, the Ray batch job and the Serve app.

An input row is ``{"id"?, "prompt"}`` or ``{"id"?, "messages": [...]}`` with optional ``task``, ``max_new_tokens``,
``temperature``, ``top_p``, ``top_k``, ``seed``, ``stop``. A row that cannot be parsed or validated becomes an
output row with ``status="error"`` and a message saying what is wrong; nothing is dropped.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import ValidationError

from speckv.config import GenerationRequest, SamplingParams
from speckv.sequence import GenerationResult
from speckv.telemetry import outputs_table, steps_table

SAMPLING_KEYS = ("max_new_tokens", "temperature", "top_p", "top_k", "seed", "stop")
ROW_KEYS = {"id", "prompt", "messages", "task", *SAMPLING_KEYS}
#: key of the telemetry Parquet schema metadata that records the machine the steps ran on (speckv.report)
MACHINE_KEY = b"speckv.machine"


class InputError(ValueError):
    pass


def explain(exc: ValidationError, where: str = "") -> str:
    """A pydantic error as one line per problem: ``field.path: message`` (the one formatter everywhere)."""
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'value'}: {e['msg']}"
                         for e in exc.errors())
    return f"{where}: {problems}" if where else problems


def read_input_lines(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(line number from 1, raw row) for a JSONL file (raw = the line's text) or a Parquet file (raw = dict)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input file not found: {path}")
    if path.suffix == ".parquet":
        for i, row in enumerate(pq.read_table(path).to_pylist(), start=1):
            yield i, row
        return
    with open(path, encoding="utf-8") as handle:
        for i, line in enumerate(handle, start=1):
            if line.strip():
                yield i, line


def parse_row(raw: Any, line_no: int, defaults: SamplingParams | None = None) -> GenerationRequest:
    """Turn one raw input row into a request, or raise InputError with a message a user can act on."""
    if isinstance(raw, (str, bytes)):
        try:
            row = json.loads(raw.strip())
        except json.JSONDecodeError as exc:
            raise InputError(f"line {line_no}: not valid JSON ({exc.msg} at column {exc.colno})") from exc
    else:
        row = raw
    if not isinstance(row, dict):
        raise InputError(f"line {line_no}: expected a JSON object, got {type(row).__name__}")
    row = {k: v for k, v in row.items() if v is not None}
    unknown = set(row) - ROW_KEYS
    if unknown:
        raise InputError(f"line {line_no}: unknown field(s) {sorted(unknown)}; allowed: {sorted(ROW_KEYS)}")
    if "prompt" not in row and "messages" not in row:
        raise InputError(f"line {line_no}: missing 'prompt' (or 'messages')")
    if "prompt" in row and not isinstance(row["prompt"], str):
        raise InputError(f"line {line_no}: 'prompt' must be a string, got {type(row['prompt']).__name__}")
    sampling = (defaults or SamplingParams()).model_dump()
    sampling.update({k: row[k] for k in SAMPLING_KEYS if k in row})
    try:
        return GenerationRequest(id=str(row.get("id", line_no)), prompt=row.get("prompt"),
                                 messages=row.get("messages"), task=row.get("task"),
                                 sampling=SamplingParams(**sampling))
    except ValidationError as exc:
        raise InputError(explain(exc, f"line {line_no}")) from exc


def row_id(raw: Any, line_no: int) -> str:
    """Best-effort id of a row that failed to parse (its 'id' if readable, else the line number)."""
    try:
        row = json.loads(raw) if isinstance(raw, (str, bytes)) else raw
        if isinstance(row, dict) and row.get("id") is not None:
            return str(row["id"])
    except json.JSONDecodeError:
        pass
    return str(line_no)


def load_requests(paths: str | Path | list, defaults: SamplingParams | None = None, *, limit: int | None = None,
                  per_task: int | None = None, id_prefix: bool = False) -> tuple[list[GenerationRequest], list[dict]]:
    """Every prompt file's rows as requests, and an error row (OUTPUT_SCHEMA) for each line that is not one.

    ``limit``: the first N lines of each file; ``per_task``: the first N requests of each task; ``id_prefix``: ids
    become ``<file stem>:<line>`` (several files whose ids could clash)."""
    requests, errors = [], []
    for path in [paths] if isinstance(paths, (str, Path)) else paths:
        taken: dict[str | None, int] = {}
        for line_no, raw in list(read_input_lines(path))[:limit]:
            try:
                request = parse_row(raw, line_no, defaults)
            except InputError as exc:
                errors.append(error_row(row_id(raw, line_no), str(exc)))
                continue
            if per_task is not None:
                if taken.get(request.task, 0) >= per_task:
                    continue
                taken[request.task] = taken.get(request.task, 0) + 1
            if id_prefix:
                request = request.model_copy(update={"id": f"{Path(path).stem}:{line_no}"})
            requests.append(request)
    return requests, errors


def error_row(request_id: str, message: str, prompt: Any = None, policy: str = "", actor_id: str = "") -> dict:
    """An OUTPUT_SCHEMA row for an input that could not be generated."""
    result = GenerationResult(id=request_id, task=None, prompt=prompt if isinstance(prompt, str) else None,
                              status="error", error=message, policy=policy, actor_id=actor_id)
    return result.output_row()


def write_parts(results: list[GenerationResult | dict], out_dir: str | Path, name: str | None = None,
                machine: dict | None = None) -> str:
    """The one writer: a part of outputs (one row per result) and telemetry (their step rows) under
    ``out_dir/outputs`` and ``out_dir/telemetry``; ``machine`` (speckv.report.machine_record) goes into the
    telemetry file's schema metadata.

    Each file is written to a temporary name and renamed, so a reader never sees half a file; telemetry first, so
    an outputs part marks a finished part (resume keys on outputs)."""
    name = name or f"part-{uuid.uuid4().hex[:12]}"
    rows = [r if isinstance(r, dict) else r.output_row() for r in results]
    steps = [s for r in results if not isinstance(r, dict) for s in r.steps]
    meta = {MACHINE_KEY: json.dumps(machine).encode()} if machine else None
    out_dir = Path(out_dir)
    for sub, table in (("telemetry", steps_table(steps, meta)), ("outputs", outputs_table(rows))):
        target = out_dir / sub / f"{name}.parquet"
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".parquet.tmp")
        pq.write_table(table, tmp)
        tmp.replace(target)
    return name


def read_table(path: str | Path) -> pa.Table:
    """Read every finished Parquet part in a directory (or one file)."""
    path = Path(path)
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    if not files:
        raise FileNotFoundError(f"no Parquet files in {path}")
    return pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")


def machine_records(path: str | Path) -> list[dict]:
    """The machine records of every telemetry part under ``path`` (speckv.report.machine_record)."""
    path = Path(path)
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    records = []
    for f in files:
        meta = pq.read_schema(f).metadata or {}
        if MACHINE_KEY in meta:
            records.append(json.loads(meta[MACHINE_KEY]))
    return records
