"""Input rows in, Parquet out — shared by ``speckv generate``, the Ray batch job and the Serve app.

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
from speckv.telemetry import outputs_table, steps_table

SAMPLING_KEYS = ("max_new_tokens", "temperature", "top_p", "top_k", "seed", "stop")
ROW_KEYS = {"id", "prompt", "messages", "task", *SAMPLING_KEYS}


class InputError(ValueError):
    pass


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
        return GenerationRequest(
            id=str(row.get("id", line_no)),
            prompt=row.get("prompt"),
            messages=row.get("messages"),
            task=row.get("task"),
            sampling=SamplingParams(**sampling),
        )
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'row'}: {e['msg']}" for e in exc.errors())
        raise InputError(f"line {line_no}: {problems}") from exc


def row_id(raw: Any, line_no: int) -> str:
    """Best-effort id of a row that failed to parse (its 'id' if readable, else the line number)."""
    try:
        row = json.loads(raw) if isinstance(raw, (str, bytes)) else raw
        if isinstance(row, dict) and row.get("id") is not None:
            return str(row["id"])
    except json.JSONDecodeError:
        pass
    return str(line_no)


def error_row(request_id: str, message: str, prompt: Any = None, policy: str = "", actor_id: str = "") -> dict:
    """An OUTPUT_SCHEMA row for an input that could not be generated."""
    return {
        "id": request_id,
        "prompt": prompt if isinstance(prompt, str) else None,
        "text": None,
        "token_ids": [],
        "num_generated_tokens": 0,
        "finish_reason": "error",
        "status": "error",
        "error": message,
        "policy": policy,
        "actor_id": actor_id,
    }


def write_parquet(rows: list[dict], steps: list[dict], out_dir: str | Path, name: str | None = None) -> str:
    """Write one part of outputs and telemetry under ``out_dir/outputs`` and ``out_dir/telemetry``.

    Each part is written to a temporary name and renamed, so a reader never sees half a file; telemetry first, so
    an outputs part marks a finished part (resume keys on outputs).
    """
    name = name or f"part-{uuid.uuid4().hex[:12]}"
    out_dir = Path(out_dir)
    for sub, table in (("telemetry", steps_table(steps)), ("outputs", outputs_table(rows))):
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
