"""``speckv bench-serve``: the Serve app under open-loop load, through the real ``openai`` client, streaming.

    speckv bench-serve --rates 0.5,1,2 --duration 60 --baseline-repo ../old-checkout --name serve_load

Starts ``serve run deploy/serve_config.yaml`` (the shipped config: embedded pair, CPU) from this checkout, and — with
``--baseline-repo`` — from another checkout too (e.g. the commit before the engine loop, whose replica gathers
requests with ``@serve.batch`` and streams replies only once finished), one after the other on the same port.
Against each it runs:

* two latency scenarios on an idle server: a 96-token reply's time to first streamed token as a share of the reply's
  time; and a 6-token request sent 1.5 s after a 160-token one, its completion time as a share of the long one's
  remaining time (iteration-level scheduling lets it in at once; a static batch makes it wait);
* open-loop load per rate: Poisson arrivals (requests/s), ``max_tokens`` drawn from 8–128, chat completions of the
  benchmark prompts, streamed; TTFT p50/p99, TPOT p50, output tokens/s, completed and failed requests.

Servers and load run on this machine: on 2 cores the load generator competes with the replica a little, alike for
both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "speckv" / "data"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rates", default="0.5,1,2", help="Poisson arrival rates, requests/s")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of arrivals per rate")
    parser.add_argument("--min-tokens", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--baseline-repo", default=None, help="another checkout to measure the same way, after this")
    parser.add_argument("--config", default="deploy/serve_config.yaml", help="Serve config, relative to each repo")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="bench/results")
    parser.add_argument("--name", default="serve_load")


class Server:
    """``serve run CONFIG`` from ``repo`` in its own process group, until stopped."""

    def __init__(self, repo: Path, config: str, port: int, log: Path) -> None:
        self.repo, self.port = repo, port
        env = {**os.environ, "PYTHONPATH": str(repo), "RAY_DEDUP_LOGS": "0"}
        serve = Path(sys.executable).with_name("serve")
        self.log = open(log, "w")
        self.proc = subprocess.Popen([str(serve), "run", config], cwd=repo, env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, client, model: str, timeout: float = 900.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve run exited with {self.proc.returncode}; see {self.log.name}")
            try:
                client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
                return
            except Exception:  # noqa: BLE001 — not up yet (connection refused, 503 while deploying)
                time.sleep(3)
        raise TimeoutError(f"the server did not answer within {timeout:.0f} s")

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
        subprocess.run([str(Path(sys.executable).with_name("ray")), "stop", "--force"], capture_output=True)
        self.log.close()


def stream_chat(client, model: str, prompt: str, max_tokens: int) -> dict:
    """One streamed chat completion: when it was sent, when its first text and its end arrived, its tokens."""
    sent = time.perf_counter()
    first = None
    chunks = 0
    try:
        stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                                max_tokens=max_tokens, temperature=0, stream=True,
                                                stream_options={"include_usage": True})
        tokens = 0
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                chunks += 1
                first = first or time.perf_counter()
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        return {"sent": sent, "first": first, "end": time.perf_counter(), "tokens": tokens, "chunks": chunks,
                "ok": True}
    except Exception as exc:  # noqa: BLE001 — a failed request is a figure of this benchmark
        return {"sent": sent, "first": first, "end": time.perf_counter(), "tokens": 0, "chunks": chunks, "ok": False,
                "error": f"{type(exc).__name__}: {exc}"[:200]}


def scenarios(client, model: str, prompts: list[str]) -> dict:
    idle = stream_chat(client, model, prompts[0], 96)
    results: dict[str, dict] = {}

    def long_one() -> None:
        results["long"] = stream_chat(client, model, prompts[1], 160)

    thread = threading.Thread(target=long_one)
    thread.start()
    time.sleep(1.5)
    results["short"] = stream_chat(client, model, prompts[2], 6)
    thread.join()
    long_, short = results["long"], results["short"]
    remaining = long_["end"] - short["sent"]
    return {
        "idle_ttft_s": idle["first"] - idle["sent"], "idle_reply_s": idle["end"] - idle["sent"],
        "idle_ttft_share": (idle["first"] - idle["sent"]) / (idle["end"] - idle["sent"]),
        "idle_chunks": idle["chunks"], "idle_tokens": idle["tokens"],
        "short_s": short["end"] - short["sent"], "long_remaining_s": remaining,
        "short_share_of_long_remaining": (short["end"] - short["sent"]) / remaining,
        "long_tokens": long_["tokens"], "short_tokens": short["tokens"],
    }


def load(client, model: str, prompts: list[str], rate: float, duration: float, lo: int, hi: int, seed: int) -> dict:
    rng = random.Random(seed)
    arrivals, t = [], 0.0
    while True:
        t += rng.expovariate(rate)
        if t > duration:
            break
        arrivals.append((t, rng.choice(prompts), rng.randint(lo, hi)))
    out: list[dict] = []
    threads = []
    start = time.perf_counter()
    for at, prompt, max_tokens in arrivals:  # open loop: a request leaves at its time whatever the others do
        delay = start + at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        th = threading.Thread(target=lambda p=prompt, m=max_tokens: out.append(stream_chat(client, model, p, m)))
        th.start()
        threads.append(th)
    for th in threads:
        th.join()
    wall = max(r["end"] for r in out) - start
    ok = [r for r in out if r["ok"] and r["first"] is not None]
    ttft = sorted(r["first"] - r["sent"] for r in ok)
    tpot = sorted((r["end"] - r["first"]) / (r["tokens"] - 1) for r in ok if r["tokens"] > 1)

    def pct(xs: list[float], q: float) -> float:
        return xs[min(int(q * len(xs)), len(xs) - 1)] if xs else float("nan")

    return {"rate": rate, "requests": len(out), "completed": len(ok), "failed": len(out) - len(ok),
            "ttft_p50_s": pct(ttft, 0.5), "ttft_p99_s": pct(ttft, 0.99), "tpot_p50_s": pct(tpot, 0.5),
            "output_tok_s": sum(r["tokens"] for r in ok) / wall, "wall_s": wall,
            "errors": sorted({r.get("error", "") for r in out if not r["ok"]})[:3]}


def run(args: argparse.Namespace) -> int:
    import openai
    import yaml

    rows = [json.loads(line) for line in (DATA / "bench_mix.jsonl").read_text().splitlines() if line]
    prompts = [r["prompt"] for r in rows]
    # the scenarios: long replies from continuation prompts, the short request a maths question
    longs = [r["prompt"] for r in rows if r.get("task") == "continuation"]
    shorts = [r["prompt"] for r in rows if r.get("task") == "math"]
    scenario_prompts = [longs[0], longs[1], shorts[0], prompts[3]]
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    sides = [("this", REPO)] + ([("baseline", Path(args.baseline_repo).resolve())] if args.baseline_repo else [])
    report = {}
    for side, repo in sides:
        config = yaml.safe_load((repo / args.config).read_text())
        model = config["applications"][0]["args"]["model_name"]
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{args.port}/v1", api_key="unused", timeout=600,
                               max_retries=0)
        server = Server(repo, args.config, args.port, out_dir / f"{args.name}_{side}_server.log")
        try:
            server.wait_ready(client, model)
            stream_chat(client, model, scenario_prompts[3], 32)  # warm-up
            report[side] = {"repo": str(repo), "scenarios": scenarios(client, model, scenario_prompts),
                            "load": [load(client, model, prompts, float(r), args.duration, args.min_tokens,
                                          args.max_tokens, args.seed) for r in args.rates.split(",")]}
            print(json.dumps({side: report[side]}, indent=2), flush=True)
        finally:
            server.stop()
    (out_dir / f"{args.name}.json").write_text(json.dumps(report, indent=2))
    (out_dir / f"{args.name}.md").write_text(format_report(report, args))
    print(format_report(report, args))
    return 0


def format_report(report: dict, args) -> str:
    from speckv.hardware import cpu_capability, cpu_name

    lines = [f"`speckv bench-serve {' '.join(sys.argv[2:])}` — {time.strftime('%Y-%m-%d')}, {cpu_name()} "
             f"(CPU capability usage: {cpu_capability()}); servers from `{args.config}`", "",
             "| side | idle 96-token reply: TTFT s / reply s (share) | 6-token request 1.5 s after a 160-token one: "
             "its s / the long one's remaining s (share) |", "|---|---|---|"]
    for side, r in report.items():
        s = r["scenarios"]
        lines.append(f"| {side} | {s['idle_ttft_s']:.2f} / {s['idle_reply_s']:.2f} ({s['idle_ttft_share']:.0%}) | "
                     f"{s['short_s']:.2f} / {s['long_remaining_s']:.2f} ({s['short_share_of_long_remaining']:.0%}) |")
    lines += ["", "| side | rate (req/s) | requests | completed | failed | TTFT p50 s | TTFT p99 s | TPOT p50 ms | "
              "output tok/s |", "|---|---|---|---|---|---|---|---|---|"]
    for side, r in report.items():
        for row in r["load"]:
            lines.append(f"| {side} | {row['rate']:g} | {row['requests']} | {row['completed']} | {row['failed']} | "
                         f"{row['ttft_p50_s']:.2f} | {row['ttft_p99_s']:.2f} | {1e3 * row['tpot_p50_s']:.0f} | "
                         f"{row['output_tok_s']:.1f} |")
    if len(report) == 2:
        this, base = report["this"]["load"], report["baseline"]["load"]
        lines += ["", "| rate | TTFT p99: baseline ÷ this | output tok/s: this ÷ baseline |", "|---|---|---|"]
        for a, b in zip(this, base):
            lines.append(f"| {a['rate']:g} | {b['ttft_p99_s'] / a['ttft_p99_s']:.1f}× | "
                         f"{a['output_tok_s'] / b['output_tok_s']:.2f} |")
    return "\n".join(lines) + "\n"
