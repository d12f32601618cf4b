"""``speckv collect``: replayable step telemetry and measured costs, per compression level.

Every step drafts the full γ_max (policy ``fixed``), so each row logs the draft's signals at every position and
whether the target accepted it. With greedy decoding that makes any γ ≤ γ_max replayable after the fact: a policy
that drafts k tokens would have accepted min(k, first rejection) — the signals at position i do not depend on k.
Costs (verify ms by batch × tokens, draft ms per token by batch) are measured on the same engine and saved beside.

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
    parser.add_argument("--prompts", nargs="+", default=[str(DATA / "policy_prompts.jsonl")],
                        help="prompt files (JSONL rows as for `speckv generate`); default: the selector's own prompts, "
                             "on topics the embedded draft head never trained on")
    parser.add_argument("--compressions", default=None,
                        help="comma list of bf16, fp16, fp32, int8, nf4 (default: bf16,int8,nf4 on CPU; "
                             "fp16,int8,nf4 on CUDA)")
    parser.add_argument("--target", default=EMBEDDED)
    parser.add_argument("--draft", default=EMBEDDED)
    parser.add_argument("--draft-kind", choices=["eagle", "lm"], default="eagle")
    parser.add_argument("--gamma-max", type=int, default=8, help=f"tokens drafted every step (≤ {GAMMA_LIMIT})")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N prompts of each file")
    parser.add_argument("--costs-only", action="store_true",
                        help="only (re-)measure the costs of each level into OUTPUT/costs (e.g. on the machine that "
                             "will run the policy); keep the telemetry already there")


def compression_spec(level: str, source: str) -> ModelSpec:
    if level in ("int8", "nf4"):
        dtype = "fp16" if torch.cuda.is_available() else "bf16"
        return ModelSpec(source=source, dtype=dtype, quantization=level)
    return ModelSpec(source=source, dtype=level)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from speckv.calibrate import calibrate
    from speckv.engine import SpecEngine
    from speckv.io import parse_row, read_input_lines, write_parquet

    levels = (args.compressions or ("fp16,int8,nf4" if torch.cuda.is_available() else "bf16,int8,nf4")).split(",")
    defaults = SamplingParams(max_new_tokens=args.max_new_tokens)
    requests = []
    for path in args.prompts:
        rows = list(read_input_lines(path))[: args.limit]
        requests += [parse_row(raw, i, defaults).model_copy(update={"id": f"{Path(path).stem}:{i}"}) for i, raw in rows]
    out = Path(args.output)
    (out / "costs").mkdir(parents=True, exist_ok=True)
    for level in levels:
        config = EngineConfig(target=compression_spec(level, args.target),
                              draft=DraftSpec(kind=args.draft_kind, source=args.draft),
                              policy=PolicySpec(name="fixed", gamma=args.gamma_max, gamma_max=args.gamma_max),
                              max_batch_size=args.batch_size)
        engine = SpecEngine(config, actor_id=f"collect-{level}")
        start = time.perf_counter()
        if args.costs_only:
            costs = calibrate(engine)
            (out / "costs" / f"{level}.json").write_text(costs.to_json())
            print(f"{level}: costs in {time.perf_counter() - start:.0f} s; verify(1,1)={costs.verify(1, 1):.1f} ms, "
                  f"verify(8,5)={costs.verify(8, 5):.1f} ms, draft(1)={costs.draft(1):.1f} ms")
            continue
        bar = tqdm(total=len(requests), desc=f"collect {level}", unit="req")
        results = []
        for i in range(0, len(requests), args.batch_size * 4):
            results += engine.generate(requests[i : i + args.batch_size * 4], lambda done, _tok: bar.update(done))
        bar.close()
        steps = [s for r in results for s in r.steps]
        write_parquet([r.output_row() for r in results], steps, out, name=level)
        costs = calibrate(engine)
        (out / "costs" / f"{level}.json").write_text(costs.to_json())
        print(f"{level}: {len(steps)} step records from {len(results)} prompts in {time.perf_counter() - start:.0f} s; "
              f"verify(1,1)={costs.verify(1, 1):.1f} ms, draft(1)={costs.draft(1):.1f} ms")
        del engine
    return 0
