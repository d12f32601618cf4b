"""Load benchmark of the Serve app: throughput and p50/p95 latency at 1, 8 and 32 concurrent clients, with
dynamic batching on and off side by side in one run.

    .venv/bin/python bench/serve_load.py --out bench/results/serve_load.md

Starts its own Ray (2 CPUs) and Serve on loopback with two apps over the same engine config: ``batched``
(``@serve.batch`` gathers up to ``--batch-size`` requests into one ``engine.generate`` call) and ``unbatched``
(``max_batch_size: 1``: one request per engine call, requests served one after another). For every concurrency
level the two apps are measured back to back (unbatched first), so slow drift in machine load hits both alike.
Each client sends chat completions (greedy, at most ``--max-tokens`` new tokens; EOS may end a reply early) for
distinct prompts from ``speckv/data/bench_mix.jsonl`` until the level's request count is reached.
Throughput counts completion tokens; latency is per request, client side, over HTTP.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `deploy` is a top-level folder, not an installed package


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", default="embedded")
    p.add_argument("--dtype", default="bf16", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--draft", default="embedded")
    p.add_argument("--draft-kind", default="eagle", choices=["eagle", "lm"])
    p.add_argument("--policy", default="learned", help="γ-policy; ar = plain batched decoding, no draft")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--requests", type=int, nargs="+", default=[8, 16, 64],
                   help="requests per concurrency level (one number per --clients entry)")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=32, help="serve.batch max_batch_size of the batched app")
    p.add_argument("--batch-wait", type=float, default=0.02, help="serve.batch batch_wait_timeout_s")
    p.add_argument("--threads", type=int, default=2, help="torch threads per replica")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "serve_load.md"))
    args = p.parse_args(argv)
    if len(args.requests) != len(args.clients):
        p.error("--requests needs one count per --clients entry")
    return args


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_prompts() -> list[str]:
    path = REPO / "speckv" / "data" / "bench_mix.jsonl"
    return [json.loads(line)["prompt"] for line in path.read_text().splitlines() if line.strip()]


def run_level(client, model: str, prompts: list[str], clients: int, n_requests: int, max_tokens: int) -> dict:
    """n_requests chat completions from `clients` threads; returns latency and throughput figures."""
    lock, next_index = threading.Lock(), [0]
    latencies, tokens, accepted, drafted = [], [0], [0], [0]

    def worker() -> None:
        while True:
            with lock:
                i = next_index[0]
                if i >= n_requests:
                    return
                next_index[0] += 1
            start = time.perf_counter()
            resp = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": prompts[i % len(prompts)]}],
                max_tokens=max_tokens, temperature=0)
            elapsed = time.perf_counter() - start
            spec = resp.model_extra["metrics"]["speculative_decoding"]
            with lock:
                latencies.append(elapsed)
                tokens[0] += resp.usage.completion_tokens
                accepted[0] += spec["num_accepted_tokens"]
                drafted[0] += spec["num_draft_tokens"]

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(worker) for _ in range(clients)]:
            future.result()
    wall = time.perf_counter() - start
    latencies.sort()
    return {
        "requests": n_requests, "wall_s": wall, "tokens": tokens[0],
        "req_s": n_requests / wall, "tok_s": tokens[0] / wall,
        "p50_s": statistics.median(latencies),
        "p95_s": latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))],
        "acceptance": accepted[0] / drafted[0] if drafted[0] else None,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import openai
    import ray
    from ray import serve

    from deploy.app import SpecKVServer

    engine = {
        "target": {"source": args.target, "dtype": args.dtype},
        "draft": {"kind": args.draft_kind, "source": args.draft},
        "policy": {"name": args.policy},
        "max_batch_size": max(args.batch_size, 1),
        "threads": args.threads,
    }
    modes = {"unbatched": 1, "batched": args.batch_size}
    port = _free_port()
    load_before = os.getloadavg()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})  # replicas import `deploy` from here
    rows = []
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        for mode, size in modes.items():
            app = SpecKVServer.options(
                name=f"SpecKVServer-{mode}", max_ongoing_requests=2 * max(args.clients + [size]),
                max_queued_requests=-1, ray_actor_options={"num_cpus": 0.5},
                user_config={"max_batch_size": size, "batch_wait_timeout_s": args.batch_wait if size > 1 else 0.0},
            ).bind({"model_name": "speckv", "engine": engine})
            serve.run(app, name=mode, route_prefix=f"/{mode}")
        prompts = load_prompts()
        clients = {mode: openai.OpenAI(base_url=f"http://127.0.0.1:{port}/{mode}/v1", api_key="unused",
                                       timeout=600, max_retries=0) for mode in modes}
        for mode in modes:  # warm-up: first-call costs (allocator, kernels) out of the figures
            run_level(clients[mode], "speckv", prompts, 2, 2, args.max_tokens)
        for n_clients, n_requests in zip(args.clients, args.requests):
            for mode in modes:
                figures = run_level(clients[mode], "speckv", prompts, n_clients, n_requests, args.max_tokens)
                rows.append({"mode": mode, "clients": n_clients, **figures})
                print(f"{mode:>9} clients={n_clients:>2} {figures['tok_s']:7.1f} tok/s  p50 {figures['p50_s']:.2f} s"
                      f"  p95 {figures['p95_s']:.2f} s", file=sys.stderr, flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    write_report(args, rows, load_before, os.getloadavg(), argv)
    return 0


def write_report(args, rows: list[dict], load_before, load_after, argv: list[str] | None) -> None:
    by_key = {(r["mode"], r["clients"]): r for r in rows}
    command = " ".join(["python bench/serve_load.py", *(argv if argv is not None else sys.argv[1:])])
    lines = [
        "# Serve load benchmark: dynamic batching on vs off",
        "",
        "```",
        command,
        "```",
        "",
        f"Target `{args.target}` ({args.dtype}), "
        + ("no draft (policy `ar`: plain batched decoding); " if args.policy == "ar" else
           f"draft `{args.draft}` ({args.draft_kind}), policy `{args.policy}`; ")
        + f"chat completions, greedy, max_tokens {args.max_tokens}; one replica per mode (num_cpus 0.5, "
        f"{args.threads} torch threads); batched: `@serve.batch(max_batch_size={args.batch_size}, "
        f"batch_wait_timeout_s={args.batch_wait})`, unbatched: max_batch_size 1. Modes measured back to back per "
        f"level. Machine: {os.cpu_count()} CPUs, load average {load_before[0]:.1f} before / {load_after[0]:.1f} after "
        "(other jobs share the machine).",
        "",
        "| clients | mode | requests | req/s | tok/s | p50 latency (s) | p95 latency (s) | draft acceptance | "
        "throughput batched / unbatched |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = ""
        if r["mode"] == "batched" and ("unbatched", r["clients"]) in by_key:
            ratio = f"{r['tok_s'] / by_key[('unbatched', r['clients'])]['tok_s']:.2f}×"
        acc = "–" if r["acceptance"] is None else f"{r['acceptance']:.2f}"
        lines.append(f"| {r['clients']} | {r['mode']} | {r['requests']} | {r['req_s']:.2f} | {r['tok_s']:.1f} | "
                     f"{r['p50_s']:.2f} | {r['p95_s']:.2f} | {acc} | {ratio} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
