"""Tokens per second of one engine (what each batch-job actor runs) at several batch sizes, side by side.

    python bench/batch_sizes.py --policy ar --max-new-tokens 64 --out bench/results/batch_sizes.md

The target and drafter are loaded once and shared; every batch size generates the same prompts. Runs are interleaved
(the order rotates each repeat, after one untimed warm-up per size) so drift in machine load hits every size alike;
the table reports medians and the ratio to batch size 1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from speckv.cli import add_engine_arguments, engine_config, sampling_defaults
from speckv.io import parse_row, read_input_lines

DEFAULT_PROMPTS = Path(__file__).resolve().parents[1] / "speckv" / "data" / "bench_mix.jsonl"


def load_prompts(path: Path, n: int, defaults) -> list:
    """``n`` prompts spread over the file (so every task in a mixed file is represented)."""
    lines = list(read_input_lines(path))
    step = max(1, len(lines) // n)
    return [parse_row(raw, no, defaults) for no, raw in lines[::step][:n]]


def run_once(engine, requests) -> tuple[int, float]:
    start = time.perf_counter()
    results = engine.generate(requests)
    wall = time.perf_counter() - start
    bad = [r.error for r in results if r.status != "ok"]
    if bad:
        raise RuntimeError(f"generation failed: {bad[:3]}")
    return sum(len(r.token_ids) for r in results), wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", default="1,4,8", help="comma-separated")
    parser.add_argument("--prompts", type=Path, default=DEFAULT_PROMPTS)
    parser.add_argument("--num-prompts", type=int, default=8, help="requests per run (every size gets the same)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="also write the Markdown report here")
    add_engine_arguments(parser)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.batch_sizes.split(",")]

    from speckv.engine import SpecEngine

    base = engine_config(args)
    first = SpecEngine(base.model_copy(update={"max_batch_size": max(sizes)}))
    engines = {b: SpecEngine(base.model_copy(update={"max_batch_size": b}), target=first.target,
                             tokenizer=first.tokenizer, drafter=first.drafter, device=first.device) for b in sizes}
    requests = load_prompts(args.prompts, args.num_prompts, sampling_defaults(args))
    for b in sizes:  # warm-up: allocator, kernels, caches
        run_once(engines[b], requests[: max(b, 1)])
    load_before = os.getloadavg()[0]  # other work on the machine shifts absolute numbers; ratios are interleaved
    runs: dict[int, list[tuple[int, float]]] = {b: [] for b in sizes}
    for r in range(args.repeats):
        order = sizes[r % len(sizes):] + sizes[: r % len(sizes)]
        for b in order:
            tokens, wall = run_once(engines[b], requests)
            runs[b].append((tokens, wall))
            print(f"repeat {r} batch {b}: {tokens} tokens in {wall:.2f} s = {tokens / wall:.1f} tok/s", file=sys.stderr)

    tok_s = {b: statistics.median(t / w for t, w in runs[b]) for b in sizes}
    command = "python bench/batch_sizes.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    lines = [
        f"Command: `{command}`",
        "",
        f"Engine: target `{base.target.source}` ({base.target.compression}), policy `{base.policy.name}`"
        + (f", drafter `{base.draft.kind}:{base.draft.source}`" if base.policy.max_gamma else "")
        + f"; {len(requests)} prompts from `{args.prompts.name}`, max_new_tokens {args.max_new_tokens}, "
          f"greedy; {args.repeats} interleaved repeats, medians.",
        f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, device {first.device.type}; 1-min load average "
        f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after.",
        "",
        "| batch size | tokens per run | median wall (s) | median tok/s | × batch 1 |",
        "|---:|---:|---:|---:|---:|",
    ]
    ref = tok_s[sizes[0]]
    for b in sizes:
        lines.append(f"| {b} | {statistics.median(t for t, _ in runs[b]):.0f} | "
                     f"{statistics.median(w for _, w in runs[b]):.2f} | {tok_s[b]:.1f} | {tok_s[b] / ref:.2f} |")
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
    print(json.dumps({"tok_s": tok_s}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
