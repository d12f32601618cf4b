"""Ray Data batch job: prompts (JSONL or Parquet) → a pool of SpecEngine actors → outputs and telemetry Parquet.

    ray start --head --num-cpus=2
    ray job submit --working-dir . -- python jobs/batch_generate.py --input "$PWD/prompts.jsonl" --output /data/out
    python jobs/batch_generate.py --input prompts.jsonl --output out/      # plain driver: a running cluster, else local

Writes ``OUT/outputs/*.parquet`` (one row per input line, ``telemetry.OUTPUT_SCHEMA``) and ``OUT/telemetry/*.parquet``
(one row per verify step, ``telemetry.STEP_SCHEMA``). Engine flags are ``speckv generate``'s; ``--config job.yaml``
gives the same settings as a flat YAML mapping (flag names, ``-`` or ``_``), and flags on the command line win.

How every input line ends up in the outputs exactly once:

* The driver scans the input once, cheaply: line numbers, ids (for resume and to catch duplicate ids), and each row
  as JSON text. Parsing and validation happen in the actors (``speckv.io.parse_row``), so a malformed line becomes a
  ``status=error`` row through the same path and the same writer as a good one.
* Each actor call writes its own part, ``outputs/<name>.parquet`` and ``telemetry/<name>.parquet``, where ``name``
  is a hash of the call's sorted ids, through ``speckv.io.write_parquet`` (temporary file + rename). When an actor
  dies, Ray restarts it and re-runs the call with the same rows (Ray Data's actor pool sets ``max_restarts`` and
  ``max_task_retries`` to -1), so a retry rewrites the same two files instead of adding new ones: nothing lost,
  nothing doubled. Writing through ``Dataset.write_parquet`` instead would need two datasets (outputs and steps have
  different row counts) and names its files per write task, so a retried write could leave a second copy.
* Re-running into the same directory resumes: ids already in ``outputs/`` (ok or error) are not sent again, so parts
  of a resumed run never share an id with earlier parts. At the end the driver re-reads ``outputs/`` and checks that
  every input line is there exactly once (exit status 1 if not).

Duplicate ids would make "done" ambiguous, so the second and later lines carrying an id become error rows with the
id ``<id>#line<N>``.

How the engine's batch stays full: each actor runs one engine loop (``speckv.loop.EngineLoop``, continuous
batching) and takes ``--calls-in-flight`` Ray Data calls at once (threads); every call hands its rows to the same
loop and waits for them, so rows of the next call join the running batch as rows of the last one finish, and the
batch holds at ``--batch-size`` until the input runs out (``--scheduling static`` keeps the old static batches, for
comparison). Progress: each actor prints rows done and tokens/s every 10 s (from model loading on), the driver a
line every 10 s, and the final summary names the machine and its measured verify costs (speckv.report).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import sys
import threading
import time
from collections import Counter
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from speckv.cli import add_engine_arguments, engine_config, sampling_defaults
from speckv.config import EMBEDDED, EngineConfig, SamplingParams
from speckv.io import InputError, error_row, explain, machine_records, parse_row, read_input_lines, row_id, write_parts

log = logging.getLogger("speckv.batch")

#: Test hook: a path; the first actor call to create this file (atomically) exits its process right after writing
#: its part, before returning, so tests can check that a retried call neither loses nor doubles rows.
CRASH_ONCE_ENV = "SPECKV_TEST_CRASH_ONCE"


class JobConfig(BaseModel):
    """Everything the job needs, validated before Ray starts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: str = Field(description="prompts: .jsonl or .parquet")
    output: str = Field(description="output directory (shared by all nodes on a multi-node cluster)")
    actors: int = Field(1, ge=1, le=4096, description="engines in the pool, one model copy each")
    rows_per_call: int | None = Field(None, ge=1, description="rows per actor call (one output part); default: the "
                                      "batch size")
    calls_in_flight: int = Field(3, ge=1, le=64, description="actor calls running at once on each actor, all feeding "
                                 "its one engine loop: enough rows to keep the batch full across calls")
    cpus_per_actor: float | None = Field(None, gt=0, description="default: the cluster's CPUs shared by the actors")
    gpus_per_actor: float | None = Field(None, ge=0, description="default: 1 when the cluster has GPUs, else 0")
    address: str | None = Field(None, description="Ray address; default: RAY_ADDRESS, a running cluster, or local")
    engine: EngineConfig
    sampling: SamplingParams

    @property
    def call_rows(self) -> int:
        return self.rows_per_call or self.engine.max_batch_size


class ConfigError(ValueError):
    """A bad flag, config file or input path: reported before any work starts."""


# ---------------------------------------------------------------------------------------------------- configuration


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batch_generate.py",
        description="Generate completions for a JSONL/Parquet prompt file on a Ray actor pool. Writes "
                    "OUT/outputs/*.parquet (one row per input line) and OUT/telemetry/*.parquet (one row per verify "
                    "step); re-running into the same OUT resumes.")
    parser.add_argument("--config", default=None, help="YAML file of the same settings (keys = flag names)")
    parser.add_argument("--input", default=None, help="prompts: .jsonl or .parquet (same rows as `speckv generate`)")
    parser.add_argument("--output", default=None, help="output directory; absolute under `ray job submit`")
    job = parser.add_argument_group("ray")
    job.add_argument("--actors", type=int, default=1, help="actor pool size (one engine each)")
    job.add_argument("--rows-per-call", type=int, default=None, help="rows per actor call; default --batch-size")
    job.add_argument("--calls-in-flight", type=int, default=3,
                     help="calls running at once on each actor, feeding its one engine loop (default 3)")
    job.add_argument("--cpus-per-actor", type=float, default=None,
                     help="fractional allowed; default: cluster CPUs / actors")
    job.add_argument("--gpus-per-actor", type=float, default=None, help="default: 1 if the cluster has GPUs, else 0")
    job.add_argument("--address", default=None, help="Ray cluster address ('local' for a fresh local instance)")
    add_engine_arguments(parser)
    return parser


def _file_schema(parser: argparse.ArgumentParser) -> type[BaseModel]:
    """A pydantic model of the YAML config file, derived from the flags so the two never drift apart."""
    fields: dict[str, Any] = {}
    for action in parser._actions:
        if action.dest in ("help", "config"):
            continue
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            kind: Any = bool
        else:
            kind = Literal[tuple(action.choices)] if action.choices else (action.type or str)
        fields[action.dest] = (kind | None, None)
    return create_model("JobFile", __config__=ConfigDict(extra="forbid"), **fields)


def load_config(argv: list[str] | None = None) -> JobConfig:
    """Flags, merged over the YAML config file when there is one; raises ConfigError with every problem."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of settings, got {type(raw).__name__}")
        try:
            from_file = _file_schema(parser).model_validate({str(k).replace("-", "_"): v for k, v in raw.items()})
        except ValidationError as exc:
            raise ConfigError(explain(exc, f"{path}")) from None
        # flags typed on the command line win over the file: parse again with every default unset to find them
        bare = build_parser()
        for action in bare._actions:
            action.default = None
        typed = {k for k, v in vars(bare.parse_args(argv)).items() if v is not None}
        for key, value in from_file.model_dump(exclude_unset=True).items():
            if key not in typed:
                setattr(args, key, value)
    missing = [f"--{name} (or '{name}:' in --config)" for name in ("input", "output") if not getattr(args, name)]
    if missing:
        raise ConfigError(f"required: {', '.join(missing)}")
    try:
        return JobConfig(input=args.input, output=args.output, actors=args.actors, rows_per_call=args.rows_per_call,
                         calls_in_flight=args.calls_in_flight, cpus_per_actor=args.cpus_per_actor,
                         gpus_per_actor=args.gpus_per_actor, address=args.address, engine=engine_config(args),
                         sampling=sampling_defaults(args))
    except ValidationError as exc:
        raise ConfigError(explain(exc, "invalid settings")) from None


def check_paths(config: JobConfig) -> tuple[Path, Path]:
    """Input readable, output usable, local model paths present — before Ray or any model is started."""
    in_path, out_path = Path(config.input).expanduser(), Path(config.output).expanduser()
    if not in_path.is_file():
        raise ConfigError(f"input file not found: {in_path.resolve()}")
    if in_path.suffix not in (".jsonl", ".json", ".parquet"):
        raise ConfigError(f"input must be .jsonl or .parquet, got {in_path.name}")
    if not out_path.is_absolute() and _in_uploaded_working_dir():
        raise ConfigError(f"--output {config.output!r} is relative: under `ray job submit --working-dir` it would land "
                          "in Ray's temporary copy of the working directory; give an absolute path")
    if out_path.exists() and not out_path.is_dir():
        raise ConfigError(f"output {out_path} exists and is not a directory")
    sources = [("target", config.engine.target.source)]
    if config.engine.policy.name != "ar":
        sources.append(("draft", config.engine.draft.source))
    for name, source in sources:
        looks_local = source.startswith(("/", ".", "~")) or source.endswith(".gguf")
        if source != EMBEDDED and looks_local and not Path(source).expanduser().exists():
            raise ConfigError(f"{name} {source!r} does not exist")
    return in_path.resolve(), out_path.resolve()


def _in_uploaded_working_dir() -> bool:
    job_config = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}"))
    return bool(job_config.get("runtime_env", {}).get("working_dir"))


# ---------------------------------------------------------------------------------------------------- input and resume


def scan_input(path: Path) -> list[dict]:
    """One item per input row: line number, id, the row as JSON text, and an error known before parsing (duplicates)."""
    items, first_line = [], {}
    for line_no, raw in read_input_lines(path):
        text = raw if isinstance(raw, str) else json.dumps(raw, default=str)  # Parquet rows travel as JSON text too
        rid, error = row_id(text, line_no), ""
        if rid in first_line:
            error = f"line {line_no}: duplicate id {rid!r} (first used on line {first_line[rid]}); ids must be unique"
            rid = f"{rid}#line{line_no}"
        first_line.setdefault(rid, line_no)
        items.append({"line": line_no, "id": rid, "raw": text, "error": error})
    return items


def done_ids(out_dir: Path) -> Counter:
    """Ids already written under ``out_dir/outputs`` (ok or error), with how often each occurs."""
    counts: Counter = Counter()
    for part in sorted((out_dir / "outputs").glob("*.parquet")):
        counts.update(pq.read_table(part, columns=["id"]).column("id").to_pylist())
    return counts


def remove_stale_tmp(out_dir: Path) -> None:
    """A process killed mid-write leaves ``*.parquet.tmp``; nothing reads them, so clear them before a (re)run."""
    for sub in ("outputs", "telemetry"):
        for tmp in (out_dir / sub).glob("*.parquet.tmp"):
            tmp.unlink(missing_ok=True)


def part_name(ids: list[str]) -> str:
    """Deterministic in the call's rows: a retried call overwrites its own part instead of adding one."""
    return "part-" + hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:20]


# ---------------------------------------------------------------------------------------------------- the actor


class GenerateBatch:
    """One engine loop per actor, loaded once; each call hands its rows to the loop and writes one part.

    Several calls run at once (``calls_in_flight`` threads), so the loop's batch stays full across them."""

    def __init__(self, config_json: str, out_dir: str, threads: int) -> None:
        import ray

        from speckv.engine import SpecEngine
        from speckv.loop import EngineLoop
        from speckv.report import machine_record

        config = JobConfig.model_validate_json(config_json)
        engine_cfg = config.engine
        if engine_cfg.threads is None:
            engine_cfg = engine_cfg.model_copy(update={"threads": threads})
        actor = ray.get_runtime_context().get_actor_id() or "local"
        self.actor_id = f"{actor[:8]}-pid{os.getpid()}"
        self.progress = ActorProgress(self.actor_id)
        self.progress.say("loading the engine (first run on a machine: GGUF conversion, dtype and cost measurement)")
        self.engine = SpecEngine(engine_cfg, actor_id=self.actor_id)
        self.machine = machine_record(self.engine)
        self.loop = EngineLoop(self.engine, max_pending=1 << 20)
        self.progress.say(f"ready: {self.machine['target_dtype']} target, {self.machine['cpu_capability']}")
        self.progress.begin()
        self.defaults = config.sampling
        self.policy = config.engine.policy.name
        self.out_dir = Path(out_dir)

    def __call__(self, batch: pa.Table) -> pa.Table:
        items = batch.to_pylist()
        parts: dict[str, object] = {}  # id -> its GenerationResult, or an error row
        requests = []
        for item in items:
            if item["error"]:
                parts[item["id"]] = self._error(item, item["error"])
                continue
            try:
                requests.append(parse_row(item["raw"], item["line"], self.defaults))
            except InputError as exc:
                parts[item["id"]] = self._error(item, str(exc))
        line_of = {item["id"]: item["line"] for item in items}
        for result in self._generate(requests):
            if result.status == "error":  # the engine's own checks (over-long prompt, ...) say which line, too
                result.error = f"line {line_of[result.id]}: {result.error}"
            parts[result.id] = result
        ordered = [parts[item["id"]] for item in items]
        name = part_name([item["id"] for item in items])
        write_parts(ordered, self.out_dir, name, machine=self.machine)
        self._maybe_crash()
        rows = [p if isinstance(p, dict) else p.output_row() for p in ordered]
        return pa.table({
            "id": [r["id"] for r in rows],
            "status": [r["status"] for r in rows],
            "num_generated_tokens": [int(r.get("num_generated_tokens") or 0) for r in rows],
            "part": [name] * len(rows),
        })

    def _generate(self, requests: list) -> list:
        """Every request through the actor's engine loop. A request the engine refuses (over-long prompt) is an
        error row; if the engine itself fails (a bug, out of memory), a fresh loop retries each row alone, so one
        bad row costs only itself."""
        from speckv.engine import GenerationResult, RequestError
        from speckv.loop import EngineLoop, wait_all

        def submit(request):
            try:
                return self.loop.submit(request)
            except RequestError as exc:
                failed = Future()
                failed.set_result(GenerationResult(id=request.id, task=request.task, prompt=request.prompt or "",
                                                   status="error", error=str(exc), policy=self.policy,
                                                   actor_id=self.actor_id))
                return failed

        results = wait_all([submit(r) for r in requests], self.progress.finished)
        if self.loop.fault is None:
            return results
        log.warning("engine fault (%s): retrying this call's rows one by one", self.loop.fault)
        self.engine.reset()
        self.loop = EngineLoop(self.engine, max_pending=1 << 20)
        retried = []
        for request, result in zip(requests, results):
            if result.status == "error" and (result.error or "").startswith("engine error"):
                result = wait_all([submit(request)])[0]
                if self.loop.fault is not None:
                    self.engine.reset()
                    self.loop = EngineLoop(self.engine, max_pending=1 << 20)
            retried.append(result)
        return retried

    def _error(self, item: dict, message: str) -> dict:
        try:
            row = json.loads(item["raw"])
        except json.JSONDecodeError:
            row = None
        prompt = row.get("prompt") if isinstance(row, dict) else None
        return error_row(item["id"], message, prompt=prompt, policy=self.policy, actor_id=self.actor_id)

    @staticmethod
    def _maybe_crash() -> None:
        marker = os.environ.get(CRASH_ONCE_ENV)
        if not marker:
            return
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
        os._exit(1)  # like a killed process: no cleanup, no exception for Ray to report


class ActorProgress:
    """Rows done and tokens/s of one actor, on its log (Ray forwards it to the driver) every ``every_s``."""

    def __init__(self, actor_id: str, every_s: float = 10.0) -> None:
        self.actor_id, self.every_s = actor_id, every_s
        self.rows = self.tokens = 0
        self.start_time = time.perf_counter()
        self._lock = threading.Lock()

    def say(self, message: str) -> None:
        print(f"[actor {self.actor_id}] {message}", file=sys.stderr, flush=True)

    def finished(self, result) -> None:
        with self._lock:
            self.rows += 1
            self.tokens += len(result.token_ids)

    def begin(self) -> None:
        """Report every ``every_s`` from now on (generation time: model loading is over)."""
        self.start_time = time.perf_counter()
        threading.Thread(target=self._report, daemon=True).start()

    def _report(self) -> None:
        while True:
            time.sleep(self.every_s)
            wall = time.perf_counter() - self.start_time
            self.say(f"{self.rows} rows done, {self.tokens} tokens, {self.tokens / wall:.1f} tok/s")


# ---------------------------------------------------------------------------------------------------- driver


class Progress:
    """Rows and tokens per second on stderr: as blocks arrive, and every ``every_s`` even when none does."""

    def __init__(self, total: int, every_s: float = 10.0) -> None:
        self.total, self.every_s = total, every_s
        self.seen: set[str] = set()
        self.errors = self.tokens = 0
        self.start = self.last = time.perf_counter()
        self._lock = threading.Lock()
        self._done = threading.Event()
        threading.Thread(target=self._heartbeat, daemon=True).start()

    def update(self, block: pa.Table) -> None:
        with self._lock:
            for rid, status, tokens in zip(*(block.column(c).to_pylist()
                                             for c in ("id", "status", "num_generated_tokens"))):
                if rid in self.seen:  # a retried call's rows, already counted
                    continue
                self.seen.add(rid)
                self.errors += status != "ok"
                self.tokens += tokens

    def report(self, final: bool = False) -> None:
        with self._lock:
            self.last = time.perf_counter()
            wall = max(self.last - self.start, 1e-9)
            print(f"[batch_generate] {'done' if final else 'progress'}: {len(self.seen)}/{self.total} rows "
                  f"({self.errors} errors) | {len(self.seen) / wall:.2f} rows/s | {self.tokens} tokens, "
                  f"{self.tokens / wall:.1f} tok/s | {wall:.0f} s", file=sys.stderr, flush=True)
        if final:
            self._done.set()

    def _heartbeat(self) -> None:
        while not self._done.wait(self.every_s):
            self.report()


def run_pipeline(config: JobConfig, items: list[dict], out_dir: Path) -> Progress:
    import ray

    ray.init(address=config.address, log_to_driver=True)
    resources = ray.cluster_resources()
    gpus = config.gpus_per_actor
    if gpus is None:
        gpus = 1.0 if resources.get("GPU", 0) >= 1 else 0.0
    cpus = config.cpus_per_actor
    if cpus is None:  # share the cluster's CPUs; quarter steps keep a 2-core machine schedulable
        cpus = max(0.25, math.floor(4 * resources.get("CPU", 1) / config.actors) / 4)
    threads = max(1, int(cpus))
    for name, need, have in (("CPU", cpus, resources.get("CPU", 0)), ("GPU", gpus, resources.get("GPU", 0))):
        if need * config.actors > have:  # an autoscaling cluster may add nodes; a fixed one would wait forever
            log.warning("%d actors × %.2f %s exceed the cluster's %.2f %s: some actors will wait for resources",
                        config.actors, need, name, have, name)
    log.info("%d actor(s) × %.2f CPU, %.2f GPU, %d torch thread(s); %d rows per call", config.actors, cpus, gpus,
             threads, config.call_rows)
    blocks = max(1, math.ceil(len(items) / config.call_rows))
    ds = ray.data.from_items(items, override_num_blocks=blocks)
    ds = ds.map_batches(
        GenerateBatch,
        fn_constructor_kwargs={"config_json": config.model_dump_json(), "out_dir": str(out_dir), "threads": threads},
        batch_size=config.call_rows,
        batch_format="pyarrow",
        # several calls at once per actor, all feeding its one engine loop (GenerateBatch's docstring)
        compute=ray.data.ActorPoolStrategy(size=config.actors, max_concurrent_calls_per_actor=config.calls_in_flight,
                                           enable_true_multi_threading=True),
        num_cpus=cpus,
        num_gpus=gpus,
    )
    progress = Progress(len(items))
    for block in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        progress.update(block)
    progress.report(final=True)
    return progress


def machine_summary(out_dir: Path) -> list[str]:
    """Where the job ran and what that machine allows (speckv.report), from the telemetry it wrote."""
    from speckv.report import summary_lines

    records = machine_records(out_dir / "telemetry") if (out_dir / "telemetry").is_dir() else []
    if not records:
        return []
    nodes = steps = 0
    for part in sorted((out_dir / "telemetry").glob("*.parquet")):
        column = pq.read_table(part, columns=["num_draft_tokens"]).column("num_draft_tokens")
        nodes, steps = nodes + sum(column.to_pylist()), steps + len(column)
    return summary_lines(records[-1], nodes / steps if steps else None)


def account(items: list[dict], out_dir: Path) -> tuple[dict, list[str], list[str]]:
    """Status counts over the whole output directory, and input ids missing from it or present more than once."""
    present = done_ids(out_dir)
    expected = [item["id"] for item in items]
    missing = [i for i in expected if present[i] == 0]
    doubled = [i for i in expected if present[i] > 1]
    statuses: Counter = Counter()
    for part in sorted((out_dir / "outputs").glob("*.parquet")):
        statuses.update(pq.read_table(part, columns=["status"]).column("status").to_pylist())
    return dict(statuses), missing, doubled


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(argv)
        in_path, out_dir = check_paths(config)
        items = scan_input(in_path)
    except (ConfigError, InputError, FileNotFoundError, OSError) as exc:
        print(f"batch_generate: error: {exc}", file=sys.stderr)
        return 2
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(out_dir)
    already = done_ids(out_dir)
    todo = [item for item in items if item["id"] not in already]
    if len(todo) < len(items):
        print(f"[batch_generate] resuming: {len(items) - len(todo)} of {len(items)} rows already in {out_dir}/outputs",
              file=sys.stderr)
    if todo:
        import ray

        try:
            run_pipeline(config, todo, out_dir)
        except ray.exceptions.RayError as exc:  # an actor that cannot start (bad model, missing drafter weights), ...
            cause = [line for line in str(exc).splitlines() if line.strip()][-1]
            print(f"{exc}\nbatch_generate: error: the pipeline failed: {cause}\nRows already written are kept; fix "
                  f"the cause and rerun into {out_dir} to resume.", file=sys.stderr)
            return 1
    statuses, missing, doubled = account(items, out_dir)
    print(f"[batch_generate] {len(items)} input rows -> {out_dir}/outputs: {statuses.get('ok', 0)} ok, "
          f"{statuses.get('error', 0)} error; telemetry in {out_dir}/telemetry", file=sys.stderr)
    for line in machine_summary(out_dir):
        print(f"[batch_generate] {line}", file=sys.stderr)
    if missing or doubled:
        print(f"[batch_generate] error: {len(missing)} rows missing {missing[:5]}, {len(doubled)} rows written more "
              f"than once {doubled[:5]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
