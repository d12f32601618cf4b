"""``speckv bench``: budget policies side by side on the embedded pair, plus Hugging Face's assisted generation.

For each compression level one target and one set of drafters are loaded and shared by all methods; the methods
run interleaved over the same prompts — at batch 1 prompt by prompt (each prompt under every method back to back),
in a batch run by run — the order rotating, and the table quotes medians over repeats with each ratio's
paired-bootstrap 95 % interval (:mod:`speckv.bench.stats`). Methods (names compose):

* ``ar`` — plain decoding through the same engine; ``fixedN`` — a chain of N drafted tokens every step;
  ``treeDxKnN`` — a fixed tree (K children per node, D levels, the N most probable kept: EAGLE-2's rerank);
  ``lookupN`` — prompt lookup alone, up to N tokens; ``heuristic``, ``confidence``, ``entropy``, ``ema`` — the
  adaptive chains; ``learned`` — the learned selector with its default trees (4 children per node, as many nodes
  expanded per depth as pay), ``learned-treeK`` over trees of K children (``learned-tree1``: chains);
* ``…+lookup`` adds the prompt-lookup branch to a head method (``learned+lookup``: the hybrid); ``…@lm`` drafts with
  the independent draft LM instead of the EAGLE head;
* ``best fixed (hindsight)`` — the fastest fixed chain or tree, picked after the fact (every method's
  ``x_best_fixed`` is its paired ratio to it); ``oracle (replay)`` — from the widest fixed run's replayable
  telemetry: verify exactly the accepted path, timed with the engine's costs;
* ``hf_generate`` and ``hf_assisted`` — ``transformers`` ``generate()`` alone and with ``assistant_model=<the
  independent draft LM>``, one prompt at a time (batch 1, unquantized levels only).

Greedy. Levels: ``bf16``, ``fp32``, ``fp16``, ``int8``, ``nf4`` or ``auto`` (the dtype measured fastest here).
"""

from __future__ import annotations

import argparse
import csv
import re
import statistics
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from speckv.bench.stats import fmt_interval, ratio_interval
from speckv.config import EMBEDDED, DraftSpec, EngineConfig, PolicySpec, SamplingParams
from speckv.telemetry import RequestStats

DATA = Path(__file__).resolve().parents[1] / "data"
METHODS = ("ar", "fixed1", "fixed2", "fixed4", "fixed8", "heuristic", "confidence", "entropy", "ema", "learned",
           "fixed2@lm", "learned@lm")
_METHOD = re.compile(r"^(?P<base>ar|fixed(?P<g>\d+)|tree(?P<d>\d+)x(?P<k>\d+)n(?P<n>\d+)|lookup(?P<l>\d+)|heuristic|"
                     r"confidence|entropy|ema|learned(?:-tree(?P<lk>\d+))?)(?P<lookup>\+lookup)?(?P<lm>@lm)?$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--compressions", default="bf16", help="comma list: bf16,fp32,int8,nf4,auto (fp16 on CUDA)")
    parser.add_argument("--prompts", nargs="+", default=[str(DATA / "bench_mix.jsonl")])
    parser.add_argument("--per-task", type=int, default=6, help="prompts per task type")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--repeats", default="3",
                        help="interleaved repeats: one number, or one per --batch-sizes entry (a large batch finishes "
                             "in seconds, where one hiccup is several per cent: give it more)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma list of engine methods (module doc)")
    parser.add_argument("--baseline", default="fixed4", help="the method every ratio column is also taken against")
    parser.add_argument("--gamma-max", type=int, default=16, help="most nodes an adaptive method verifies per row")
    parser.add_argument("--no-hf", action="store_true", help="skip Hugging Face generate / assisted generation")
    parser.add_argument("--batch-sizes", default="1", help="comma list; HF rows only at batch size 1")
    parser.add_argument("--target", default=EMBEDDED)
    parser.add_argument("--output", default="bench/results", help="directory for NAME.md/.csv/.png")
    parser.add_argument("--name", default="policies", help="file stem of the results")
    parser.add_argument("--quick", action="store_true", help="CI-size run: 1 prompt per task, 12 tokens, 1 repeat")


def method_config(name: str, gamma_max: int) -> tuple[PolicySpec, DraftSpec]:
    m = _METHOD.match(name)
    if m is None:
        raise ValueError(f"unknown method {name!r}: see `speckv bench --help` and speckv/bench/policies.py")
    base, lookup = m["base"], bool(m["lookup"])
    draft = DraftSpec(kind="lm" if m["lm"] else "eagle", lookup=lookup)
    if m["g"]:
        return PolicySpec(name="fixed", gamma=int(m["g"])), draft
    if m["d"]:
        return PolicySpec(name="fixed", gamma=int(m["n"]), tree_depth=int(m["d"]), tree_topk=int(m["k"])), draft
    if m["l"]:
        return PolicySpec(name="fixed", gamma=int(m["l"])), DraftSpec(kind="lookup")
    if base.startswith("learned"):
        return PolicySpec(name="learned", gamma=4, gamma_max=gamma_max,
                          tree_topk=int(m["lk"]) if m["lk"] else None), draft
    return PolicySpec(name=base, gamma=4, gamma_max=gamma_max), draft


def engine_runner(engine):
    """(run, summarize): ``run(requests)`` generates them and times it; ``summarize(parts)`` is the table's figures
    over any number of such runs."""
    def run(requests) -> tuple[list, float]:
        start = time.perf_counter()
        results = engine.generate(requests)
        return results, time.perf_counter() - start

    return run, engine_summary


def engine_summary(parts: list[tuple[list, float]]) -> dict:
    results = [r for rs, _ in parts for r in rs]
    wall = sum(w for _, w in parts)
    steps = [s for r in results for s in r.steps]
    tokens = sum(len(r.token_ids) for r in results)
    per_task: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for r in results:
        per_task[r.task][0] += len(r.token_ids)
        per_task[r.task][1] += r.wall_ms / 1e3
    decisions = sorted(s["decision_ms"] / s["num_decisions"] for s in steps) or [0.0]
    acceptance = RequestStats.of([r.summary for r in results])
    n_steps = acceptance.steps
    return {
        "tokens": tokens, "wall": wall, "tok_s": tokens / wall,
        "mean_acceptance_length": acceptance.summary()["mean_acceptance_length"] or float("nan"),
        "tokens_per_target_forward": tokens / (n_steps + len(results)),
        "mean_nodes": acceptance.drafted / n_steps if n_steps else float("nan"),
        # draft/verify times are per batched step; a step of B rows logs B rows
        "draft_share": sum(s["draft_ms"] / s["batch_size"] for s in steps) / 1e3 / wall,
        "verify_share": sum(s["verify_ms"] / s["batch_size"] for s in steps) / 1e3 / wall,
        "decision_ms_p50": decisions[len(decisions) // 2], "decision_ms_p99": decisions[int(len(decisions) * 0.99)],
        "per_task": {t: v[0] / v[1] for t, v in per_task.items() if v[1] > 0},
        "prompt_tokens": [len(r.token_ids) for r in results], "prompt_seconds": [r.wall_ms / 1e3 for r in results],
        "steps": steps, "outputs": [r.token_ids for r in results],
    }


def hf_runner(target, tokenizer, assistant=None):
    """(run, summarize) for ``transformers`` ``generate()``, one prompt at a time."""
    from speckv.engine import encode_request

    def run(requests) -> list[tuple[str, list[int], float]]:
        out = []
        for req in requests:
            ids = torch.tensor([encode_request(tokenizer, req)], device=target.device)
            start = time.perf_counter()
            with torch.inference_mode():
                gen = target.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                      max_new_tokens=req.sampling.max_new_tokens, assistant_model=assistant,
                                      pad_token_id=tokenizer.pad_token_id)
            out.append((req.task, gen[0, ids.shape[1] :].tolist(), time.perf_counter() - start))
        return out

    def summarize(parts) -> dict:
        rows = [row for part in parts for row in part]
        tokens, wall = sum(len(new) for _, new, _ in rows), sum(dt for _, _, dt in rows)
        per_task: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
        for task, new, dt in rows:
            per_task[task][0] += len(new)
            per_task[task][1] += dt
        return {"tokens": tokens, "wall": wall, "tok_s": tokens / wall, "outputs": [new for _, new, _ in rows],
                "prompt_tokens": [len(new) for _, new, _ in rows], "prompt_seconds": [dt for _, _, dt in rows],
                "per_task": {t: v[0] / v[1] for t, v in per_task.items()}}

    return run, summarize


def run(args: argparse.Namespace) -> int:
    from speckv.io import load_requests
    from speckv.models import load_tokenizer
    from speckv.report import summary_lines

    if args.quick:
        args.per_task, args.max_new_tokens, args.repeats = 1, 12, "1"
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    repeats = [int(r) for r in args.repeats.split(",")]
    if len(repeats) == 1:
        repeats *= len(batch_sizes)
    if len(repeats) != len(batch_sizes) or min(repeats) < 1:
        raise SystemExit(f"--repeats: give one number or one per batch size ({len(batch_sizes)}), each >= 1")
    configs = {m: method_config(m, args.gamma_max) for m in args.methods.split(",")}  # bad names fail before loading
    requests, _ = load_requests(args.prompts, SamplingParams(max_new_tokens=args.max_new_tokens), per_task=args.per_task)
    tokenizer = load_tokenizer(args.target)
    table, machines = [], {}
    for level in args.compressions.split(","):
        rows, machines[level] = bench_level(level, args, configs, requests, tokenizer, list(zip(batch_sizes, repeats)))
        table += rows
    write_outputs(table, args, len(requests), machines)
    for level, record in machines.items():
        learned = [r["mean_nodes"] for r in table if r["compression"] == level and r["method"].startswith("learned")]
        print(f"{level}: " + "\n  ".join(summary_lines(record, min(learned) if learned else None)))
    return 0


def bench_level(level: str, args, configs: dict, requests, tokenizer, plan: list[tuple[int, int]]):
    """One compression level: its target and drafters loaded once, every method at every (batch, repeats) of
    ``plan``, interleaved; returns its table rows and the machine record."""
    from speckv.collect import compression_spec
    from speckv.drafters.lookup import LookupDrafter
    from speckv.engine import SpecEngine
    from speckv.report import machine_record

    hf = not args.no_hf and compression_spec(level, args.target).quantization == "none"
    lm = hf or any(d.kind == "lm" for _, d in configs.values())
    spec, target, device, heads, assistant = load_level(level, args.target, max(b for b, _ in plan), lm)
    lookup = LookupDrafter()

    rows, record = [], None
    for batch, batch_repeats in plan:
        engines = {m: SpecEngine(EngineConfig(target=spec, policy=pol, draft=draft, max_batch_size=batch),
                                 target=target, tokenizer=tokenizer, drafter=drafter_for(draft, heads, lookup),
                                 device=device, actor_id=f"bench-{level}-{batch}") for m, (pol, draft) in configs.items()}
        runners = {m: engine_runner(e) for m, e in engines.items()}
        if hf and batch == 1:
            runners["hf_generate"] = hf_runner(target, tokenizer)
            runners["hf_assisted"] = hf_runner(target, tokenizer, assistant)
        runs = interleave(runners, requests, batch, batch_repeats, f"bench {level} batch {batch}")
        measured = next((e for e in engines.values() if e.costs is not None), None)
        record = machine_record(measured or next(iter(engines.values())))
        rows += summarize_level(level, batch, runs, configs, measured, args.baseline)
    return rows, record


def load_level(level: str, source: str, batch: int, lm: bool = False):
    """What every method of a compression level shares: the target's resolved spec (for batches up to ``batch``),
    the target, its device, the drafters by kind (the EAGLE head; with ``lm`` the independent draft LM too) and that
    LM as a ``transformers`` model (Hugging Face's assistant; None without ``lm``)."""
    from speckv.collect import compression_spec
    from speckv.drafters.draft_lm import DraftLM, draft_lm_dir
    from speckv.drafters.eagle import EagleDrafter, default_eagle_path
    from speckv.models import load_causal_lm, resolve_spec

    spec = resolve_spec(compression_spec(level, source), batch)
    target, device = load_causal_lm(spec)
    heads, assistant = {"eagle": EagleDrafter.load(default_eagle_path(), target, device)}, None
    if lm:  # shared by HF's assisted generation and this engine's "@lm" methods
        assistant, _ = load_causal_lm(spec.model_copy(update={"source": str(draft_lm_dir()), "quantization": "none"}))
        heads["lm"] = DraftLM(assistant, device, target.config.vocab_size)
    return spec, target, device, heads, assistant


def drafter_for(draft: DraftSpec, heads: dict, lookup):
    """The drafter a method's ``DraftSpec`` names, out of loaded ``heads`` (by kind) and one ``LookupDrafter``."""
    from speckv.drafters import Drafters

    if draft.kind == "lookup":
        return lookup
    return Drafters([heads[draft.kind], lookup]) if draft.lookup else heads[draft.kind]


def interleave(runners: dict, requests, batch: int, repeats: int, desc: str) -> dict[str, list[dict]]:
    """Every runner (``(run, summarize)``, as :func:`engine_runner` makes) over ``requests``, ``repeats`` times: one
    summary per runner per repeat. At batch 1 every prompt runs under every method back to back, so the paired
    interval over prompts sees drift hit both sides alike; in a batch the methods take turns over the whole prompt
    set. The order rotates (per prompt and repeat) so that no method is always first."""
    from tqdm import tqdm

    names = list(runners)
    units = [[r] for r in requests] if batch == 1 else [requests]
    runs: dict[str, list[dict]] = defaultdict(list)
    with tqdm(total=repeats * len(names) * len(units), desc=desc, unit="run") as bar:
        for rep in range(repeats):
            parts = defaultdict(list)
            for i, unit in enumerate(units):
                k = (rep + i) % len(names)
                for name in names[k:] + names[:k]:
                    parts[name].append(runners[name][0](unit))
                    bar.update(1)
            for name in names:
                runs[name].append(runners[name][1](parts[name]))
    return runs


def summarize_level(level, batch, runs, configs, engine, baseline) -> list[dict]:
    import pandas as pd

    from speckv.oracle import replay_trees, tree_arrays

    rows = []
    for name, reps in runs.items():
        first = reps[0]
        row = {"compression": level, "batch": batch, "method": name,
               "tok_s": statistics.median(r["tok_s"] for r in reps)}
        for key in ("mean_acceptance_length", "tokens_per_target_forward", "mean_nodes", "draft_share",
                    "verify_share", "decision_ms_p50", "decision_ms_p99"):
            row[key] = statistics.median(r[key] for r in reps) if key in first else float("nan")
        for task in first["per_task"]:
            row[f"tok_s_{task}"] = statistics.median(r["per_task"][task] for r in reps)
        rows.append(row)
    fixed = [r for r in rows if configs.get(r["method"], (PolicySpec(),))[0].name == "fixed"]
    if fixed:
        best = max(fixed, key=lambda r: r["tok_s"])
        rows.append({**best, "method": f"best fixed (hindsight: {best['method']})"})
    widest = max(fixed, key=lambda r: configs[r["method"]][0].gamma, default=None)
    if widest is not None and engine is not None and engine.costs is not None:
        steps = pd.DataFrame(runs[widest["method"]][0]["steps"]).query("num_draft_tokens > 0")
        if len(steps):
            pol = configs[widest["method"]][0]
            arr = tree_arrays(steps.reset_index(drop=True))
            kind = "chain" if pol.topk == 1 else "tree"
            costs = engine.costs.calibrated
            est = {p: replay_trees(arr, costs, batch, p, nodes=pol.gamma)["tokens_per_s"] for p in (kind, "oracle")}
            rows.append({"compression": level, "batch": batch, "method": f"oracle (replay of {widest['method']})",
                         "tok_s": widest["tok_s"] * est["oracle"] / est[kind]})
    by_method = {r["method"]: r for r in rows}
    for r in rows:
        if fixed and r["method"] in runs:  # against the fastest fixed shape of this run (picked in hindsight)
            r["x_best_fixed"] = fmt_interval(*paired(runs[r["method"]], runs[best["method"]], batch))
        for ref in dict.fromkeys((baseline, "ar")):
            if ref in runs and r["method"] in runs:
                r[f"x_{ref}"] = fmt_interval(*paired(runs[r["method"]], runs[ref], batch))
            elif ref in by_method:
                r[f"x_{ref}"] = f"{r['tok_s'] / by_method[ref]['tok_s']:.2f}"
    reference = runs["hf_generate"][0]["outputs"] if "hf_generate" in runs else runs.get("ar", [{}])[0].get("outputs")
    for r in rows:
        outputs = runs.get(r["method"], [{}])[0].get("outputs")
        if reference is not None and outputs is not None:  # share of prompts whose greedy output is the target's own
            r["same_as_plain"] = sum(a == b for a, b in zip(outputs, reference)) / len(reference)
    return rows


def paired(a: list[dict], b: list[dict], batch: int) -> tuple[float, float, float]:
    """A's tokens/s over B's with its paired-bootstrap interval: units are prompts at batch 1 (each prompt's median
    time over repeats), repeats otherwise."""
    if batch == 1:
        def per_prompt(reps):
            return (np.array(reps[0]["prompt_tokens"], float),
                    np.median(np.array([r["prompt_seconds"] for r in reps]), axis=0))

        return ratio_interval(*per_prompt(a), *per_prompt(b))
    n = min(len(a), len(b))
    return ratio_interval(np.array([r["tokens"] for r in a[:n]], float), np.array([r["wall"] for r in a[:n]]),
                          np.array([r["tokens"] for r in b[:n]], float), np.array([r["wall"] for r in b[:n]]))


def write_outputs(table: list[dict], args, n_prompts: int, machines: dict) -> None:
    from speckv.report import where

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    refs = [f"x_{r}" for r in dict.fromkeys((args.baseline, "ar"))]
    cols = ["compression", "batch", "method", "tok_s", *refs, "x_best_fixed", "mean_acceptance_length",
            "tokens_per_target_forward", "mean_nodes", "draft_share", "verify_share", "decision_ms_p50",
            "decision_ms_p99", "same_as_plain"]
    tasks = sorted({k for r in table for k in r if k.startswith("tok_s_")})
    with open(out / f"{args.name}.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=cols + tasks, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(table)

    def fmt(v):
        if isinstance(v, float):
            return "—" if v != v else f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"
        return str(v)

    lines = [f"`speckv bench {' '.join(_argv())}` — {n_prompts} prompts ({args.per_task} per task), "
             f"{args.max_new_tokens} new tokens, greedy, median of interleaved repeats ({args.repeats} by batch size "
             f"{args.batch_sizes}), {time.strftime('%Y-%m-%d')}", ""]
    lines += [f"- `{level}`: {where(record)}" for level, record in machines.items()]
    lines += ["", "| " + " | ".join(cols + tasks) + " |", "|" + "---|" * (len(cols) + len(tasks))]
    for r in table:
        lines.append("| " + " | ".join(fmt(r.get(c, float("nan"))) for c in cols + tasks) + " |")
    lines += ["", "`x_…`: tokens/s over that method's, with the paired-bootstrap 95 % interval (batch 1: over prompts; "
              "larger batches: over repeats); `x_best_fixed`: over the fastest fixed chain or tree of the same run, "
              "picked after the fact (which favours it). `same_as_plain`: share of prompts whose greedy output equals plain "
              "decoding's (`hf_generate`, else `ar`) token for token. fp32 parity is exact (tests); in bf16 (int8 and "
              "nf4 compute in it too) a multi-token verify forward rounds differently from one-token forwards, so "
              "near-tied argmaxes can flip — in a batch, in any row from one drafted step on (that step rounds every "
              "row's root, and writes its cache entry, in a wider forward)."]
    (out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4))
    labels = [f"{r['compression']} b{r['batch']}\n{r['method']}" for r in table]
    ax.bar(range(len(table)), [r["tok_s"] for r in table], color="tab:blue")
    ax.set_xticks(range(len(table)), labels, rotation=75, fontsize=7)
    ax.set_ylabel("tokens/s")
    ax.set_title("speckv bench: tokens/s by method")
    fig.tight_layout()
    fig.savefig(out / f"{args.name}.png", dpi=110)


def _argv() -> list[str]:
    import sys

    return sys.argv[2:] if len(sys.argv) > 1 and sys.argv[1] == "bench" else sys.argv[1:]
