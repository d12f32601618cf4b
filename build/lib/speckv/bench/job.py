"""``speckv bench-job``: what one batch-job actor delivers, continuous against static batching, side by side.

    speckv bench-job --batch-size 8 --repeats 3 --name job_batching

Each batch-job actor runs one engine loop (:class:`speckv.loop.EngineLoop`) fed with every row of its calls; this
runs exactly that, in this process, over the job's default input (``speckv/data/job_prompts.jsonl``: the
question-style mix and the input-grounded tasks, whose replies end at EOS at very different lengths), once with
``scheduling=continuous`` (rows join as others finish: the batch holds at ``--batch-size``) and once with
``scheduling=static`` (a batch runs to its last row before the next starts: the v1 engine's draining tail), at the
same batch size, interleaved over ``--repeats`` rounds. Output tokens/s, the mean batch size of the engine's steps,
and the ratio with its paired-bootstrap interval over rounds. The Ray pipeline around the actors is the same for
both, so it is left out of the timing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from speckv.bench.stats import fmt_interval, ratio_interval
from speckv.cli import add_engine_arguments, engine_config, sampling_defaults

DATA = Path(__file__).resolve().parents[1] / "data"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", default=str(DATA / "job_prompts.jsonl"))
    parser.add_argument("--limit", type=int, default=None, help="first N rows of the input")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default="bench/results")
    parser.add_argument("--name", default="job_batching")
    add_engine_arguments(parser)
    parser.set_defaults(max_new_tokens=64)


def run(args: argparse.Namespace) -> int:
    from speckv.engine import SpecEngine
    from speckv.io import load_requests
    from speckv.loop import EngineLoop, wait_all
    from speckv.report import machine_record, where

    requests, _ = load_requests(args.input, sampling_defaults(args), limit=args.limit)
    config = engine_config(args)
    engine = SpecEngine(config)
    runs: dict[str, list[dict]] = {"continuous": [], "static": []}
    for rep in range(args.repeats):
        for mode in (["continuous", "static"] if rep % 2 == 0 else ["static", "continuous"]):
            engine.config = config.model_copy(update={"scheduling": mode})
            loop = EngineLoop(engine, max_pending=1 << 20)
            start = time.perf_counter()
            results = wait_all([loop.submit(r) for r in requests])
            wall = time.perf_counter() - start
            loop.close()
            steps = [s for r in results for s in r.steps]
            per_step = {(s["batch_step_id"]): s["batch_size"] for s in steps}
            runs[mode].append({"tokens": sum(len(r.token_ids) for r in results), "wall": wall,
                               "mean_batch": statistics.mean(per_step.values())})
            print(f"round {rep} {mode}: {runs[mode][-1]}", file=sys.stderr, flush=True)
    record = machine_record(engine)
    lines = [f"`speckv bench-job {' '.join(sys.argv[2:])}` — {len(requests)} rows of `{Path(args.input).name}`, "
             f"{args.max_new_tokens} new tokens at most, batch size {args.batch_size}, policy {args.policy}, "
             f"{args.repeats} interleaved rounds, {time.strftime('%Y-%m-%d')}; {where(record)}", "",
             "| scheduling | output tok/s (median) | mean rows per engine step | × static [95 % interval over rounds] |",
             "|---|---|---|---|"]
    c, s = runs["continuous"], runs["static"]
    ratio = ratio_interval(np.array([r["tokens"] for r in c], float), np.array([r["wall"] for r in c]),
                           np.array([r["tokens"] for r in s], float), np.array([r["wall"] for r in s]))
    for mode, reps in runs.items():
        tok_s = statistics.median(r["tokens"] / r["wall"] for r in reps)
        batch = statistics.median(r["mean_batch"] for r in reps)
        lines.append(f"| {mode} | {tok_s:.1f} | {batch:.2f} | {fmt_interval(*ratio) if mode == 'continuous' else '1'} |")
    text = "\n".join(lines) + "\n"
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.md").write_text(text)
    print(text)
    return 0
