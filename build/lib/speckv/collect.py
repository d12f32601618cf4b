"""``speckv collect``: replayable step telemetry and measured costs, per compression level.

Every step verifies a wide fixed tree (``--tree-topk`` children per node, ``--tree-depth`` levels, the ``--nodes``
most probable kept, EAGLE-2's rerank) plus the prompt-lookup branch, greedily. Greedy telemetry records for every
node whether the target agreed with it given its parent, so every narrower budget — any chain, any smaller tree,
the learned rule, the oracle — is replayable after the fact (:func:`speckv.oracle.replay_trees`). Costs (verify ms
by batch × tokens, draft ms per forward by batch) are measured on the same engine and saved beside.

Layout of ``--output DIR``::

    DIR/telemetry/<compression>.parquet   one row per verify step (telemetry.STEP_SCHEMA)
    DIR/outputs/<compression>.parquet     one row per prompt
    DIR/costs/<compression>.json          costs.CostModel
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from speckv.config import EMBEDDED, GAMMA_LIMIT, DraftSpec, EngineConfig, ModelSpec, PolicySpec, SamplingParams

DATA = Path(__file__).resolve().parent / "data"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", required=True, help="directory for telemetry/, outputs/ and costs/")
    parser.add_argument("--prompts", nargs="+",
                        default=[str(DATA / "policy_prompts.jsonl"), str(DATA / "policy_grounded.jsonl")],
                        help="prompt files (JSONL rows as for `speckv generate`); default: the selector's own prompts, "
                             "question-style and input-grounded, on topics the embedded draft head never trained on")
    parser.add_argument("--compressions", default=None,
                        help="comma list of bf16, fp16, fp32, int8, nf4 (default: bf16,int8,nf4 on CPU; "
                             "fp16,int8,nf4 on CUDA)")
    parser.add_argument("--target", default=EMBEDDED)
    parser.add_argument("--draft", default=EMBEDDED)
    parser.add_argument("--draft-kind", choices=["eagle", "lm"], default="eagle")
    parser.add_argument("--nodes", type=int, default=24, help=f"nodes verified every step (≤ {GAMMA_LIMIT})")
    parser.add_argument("--tree-topk", type=int, default=4, help="children per expanded node")
    parser.add_argument("--tree-depth", type=int, default=8, help="draft levels")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N prompts of each file")
    parser.add_argument("--costs-only", action="store_true",
                        help="only (re-)measure the costs of each level into OUTPUT/costs (e.g. on the machine that "
                             "will run the policy); keep the telemetry already there")


def compression_spec(level: str, source: str) -> ModelSpec:
    """A compression level as a target spec: a dtype, or a bitsandbytes quantization (fp16 compute on CUDA,
    the measured best dtype on CPU)."""
    if level in ("int8", "nf4"):
        return ModelSpec(source=source, dtype="fp16" if torch.cuda.is_available() else "auto", quantization=level)
    return ModelSpec(source=source, dtype=level)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from speckv.costs import calibrate
    from speckv.engine import SpecEngine
    from speckv.io import load_requests, write_parts
    from speckv.report import machine_record

    levels = (args.compressions or ("fp16,int8,nf4" if torch.cuda.is_available() else "bf16,int8,nf4")).split(",")
    requests, _ = load_requests(args.prompts, SamplingParams(max_new_tokens=args.max_new_tokens), limit=args.limit,
                                id_prefix=True)
    out = Path(args.output)
    (out / "costs").mkdir(parents=True, exist_ok=True)
    for level in levels:
        config = EngineConfig(target=compression_spec(level, args.target),
                              draft=DraftSpec(kind=args.draft_kind, source=args.draft, lookup=True),
                              policy=PolicySpec(name="fixed", gamma=args.nodes, tree_topk=args.tree_topk,
                                                tree_depth=args.tree_depth),
                              max_batch_size=args.batch_size)
        engine = SpecEngine(config, actor_id=f"collect-{level}")
        start = time.perf_counter()
        if not args.costs_only:
            bar = tqdm(total=len(requests), desc=f"collect {level}", unit="req")
            results = engine.generate(requests, lambda done, _tok: bar.update(done))
            bar.close()
            write_parts(results, out, name=level, machine=machine_record(engine))
        costs = calibrate(engine)
        (out / "costs" / f"{level}.json").write_text(costs.to_json())
        steps = sum(r.summary.get("num_spec_steps") or 0 for r in results) if not args.costs_only else 0
        print(f"{level}: {steps} step records in {time.perf_counter() - start:.0f} s; verify(1,1)="
              f"{costs.verify(1, 1):.1f} ms, verify(1,9)={costs.verify(1, 9):.1f} ms, draft(1)={costs.draft(1):.1f} ms")
        del engine
    return 0
