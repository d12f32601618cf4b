"""``speckv`` command line: generate, distill, collect, train-policy, bench, analyze."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import time
from pathlib import Path

from speckv.config import (
    EMBEDDED,
    GAMMA_LIMIT,
    POLICY_NAMES,
    DraftSpec,
    EngineConfig,
    ModelSpec,
    PolicySpec,
    SamplingParams,
)

POLICY_HELP = (
    "budget policy: ar (no speculation), fixed (--gamma N nodes: a chain, or a tree with --tree-topk > 1), heuristic "
    "(HF's +2/−1 schedule), confidence (stop under draft top-1 p), entropy (stop over draft entropy), ema "
    "(SGLang-style EMA of accepted length), learned (MLP acceptance model + measured costs; without trained weights "
    "it falls back to the draft's probabilities as the acceptance estimate). Default: learned"
)

#: subcommands implemented in their own modules: name -> (module, help)
SUBCOMMANDS = {
    "distill": ("speckv.distill", "train a draft for the target by distillation on its own answers"),
    "collect": ("speckv.collect", "collect replayable step telemetry and measured costs for the selector"),
    "train-policy": ("speckv.train_policy", "train the learned selector from telemetry Parquet"),
    "bench": ("speckv.bench", "side-by-side benchmark of policies (and HF assisted generation)"),
    "bench-serve": ("speckv.bench.serve", "the Serve app under open-loop streaming load (against a baseline checkout)"),
    "bench-job": ("speckv.bench.job", "one batch-job actor's throughput, continuous against static batching"),
    "analyze": ("speckv.analyze", "report with plots from telemetry Parquet"),
}


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags that build an EngineConfig (shared by `speckv generate` and the Ray batch job)."""
    g = parser.add_argument_group("engine")
    g.add_argument("--target", default=EMBEDDED, help="target: hub id, local dir, .gguf file, or 'embedded'")
    g.add_argument("--draft", default=EMBEDDED, help="draft weights: hub id, local dir, .gguf, or 'embedded'")
    g.add_argument("--draft-kind", choices=["eagle", "lm", "lookup"], default="eagle",
                   help="eagle: feature head over the target's hidden states; lm: independent draft LM; lookup: "
                        "prompt lookup only")
    g.add_argument("--no-lookup", dest="lookup", action="store_false",
                   help="no prompt-lookup candidates beside the head's (default: both, the policy weighs them)")
    g.add_argument("--draft-int8", choices=["auto", "on", "off"], default="auto",
                   help="EAGLE head with int8 weights on CPU: auto measures which drafts faster here (default)")
    g.add_argument("--dtype", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                   help="target compute dtype; auto: the fastest on this machine, measured once (default)")
    g.add_argument("--quantization", choices=["none", "int8", "nf4"], default="none",
                   help="bitsandbytes quantization of the target")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    g.add_argument("--policy", choices=POLICY_NAMES, default="learned", help=POLICY_HELP)
    g.add_argument("--gamma", type=int, default=4, help=f"γ for 'fixed' (1..{GAMMA_LIMIT})")
    g.add_argument("--gamma-max", type=int, default=16, help="most nodes a row verifies per step (adaptive policies)")
    g.add_argument("--tree-topk", type=int, default=None,
                   help="children per expanded draft node (1 = chains; default: chains for fixed, 4 for learned)")
    g.add_argument("--tree-depth", type=int, default=None, help="deepest draft level (default: gamma / gamma-max)")
    g.add_argument("--policy-path", default=None, help="weights for 'learned' (default: the shipped selector)")
    g.add_argument("--batch-size", type=int, default=8, help="most requests decoded together (the batch stays this "
                   "full while requests wait)")
    g.add_argument("--scheduling", choices=["continuous", "static"], default="continuous",
                   help="continuous batching (default) or static batches run to their last row (for comparison)")
    g.add_argument("--admit-wait", type=int, default=4, help="steps a free slot may wait, while more requests wait "
                   "than fit, for a running row due to finish within them, so that their successors prefill together")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    s = parser.add_argument_group("sampling defaults (an input row's own fields win)")
    s.add_argument("--max-new-tokens", type=int, default=128)
    s.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    s.add_argument("--top-p", type=float, default=1.0)
    s.add_argument("--top-k", type=int, default=0)
    s.add_argument("--seed", type=int, default=None)


def engine_config(args: argparse.Namespace) -> EngineConfig:
    return EngineConfig(
        target=ModelSpec(source=args.target, dtype=args.dtype, quantization=args.quantization, device=args.device),
        draft=DraftSpec(kind=args.draft_kind, source=args.draft, lookup=args.lookup,
                        int8_weights={"auto": None, "on": True, "off": False}[args.draft_int8]),
        policy=PolicySpec(name=args.policy, gamma=args.gamma, gamma_max=max(args.gamma_max, args.gamma),
                          tree_topk=args.tree_topk, tree_depth=args.tree_depth, path=args.policy_path),
        max_batch_size=args.batch_size,
        admit_wait=args.admit_wait,
        scheduling=args.scheduling,
        threads=args.threads,
    )


def sampling_defaults(args: argparse.Namespace) -> SamplingParams:
    return SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                          top_k=args.top_k, seed=args.seed)


def cmd_generate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from speckv.engine import SpecEngine
    from speckv.io import load_requests, write_parts
    from speckv.report import machine_record, summary_lines

    config = engine_config(args)  # validates before any model is loaded
    requests, errors = load_requests(args.input, sampling_defaults(args))
    engine = SpecEngine(config)
    out = Path(args.output)
    start, tokens = time.perf_counter(), 0
    bar = tqdm(total=len(requests) + len(errors), unit="req", desc="generate", disable=None)  # None: terminals only
    bar.update(len(errors))

    def progress(done: int, new_tokens: int) -> None:
        nonlocal tokens
        tokens += new_tokens
        bar.update(done)
        bar.set_postfix(tok_s=f"{tokens / max(time.perf_counter() - start, 1e-9):.1f}")

    results = engine.generate(requests, progress)
    bar.close()
    write_parts([*results, *errors], out, name="part-00000", machine=machine_record(engine))
    wall = time.perf_counter() - start
    n_ok = sum(r.status == "ok" for r in results)
    steps = [s["num_draft_tokens"] for r in results for s in r.steps]
    print(f"{n_ok} ok, {len(results) + len(errors) - n_ok} error rows; {tokens} tokens in {wall:.1f} s "
          f"({tokens / max(wall, 1e-9):.1f} tok/s) -> {out}/outputs, {out}/telemetry", file=sys.stderr)
    for line in summary_lines(machine_record(engine), sum(steps) / len(steps) if steps else None):
        print(line, file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="speckv", description="Adaptive speculative decoding at batch scale.")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="generate completions for a JSONL/Parquet prompt file",
                         description="Writes DIR/outputs/*.parquet (one row per input line) and "
                                     "DIR/telemetry/*.parquet (one row per verify step).")
    gen.add_argument("--input", required=True, help="prompts: .jsonl or .parquet")
    gen.add_argument("--output", required=True, help="output directory")
    add_engine_arguments(gen)
    gen.set_defaults(func=cmd_generate)
    for name, (module, help_text) in SUBCOMMANDS.items():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        p = sub.add_parser(name, help=help_text, description=help_text)
        mod.add_arguments(p)
        p.set_defaults(func=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError) as exc:
        print(f"speckv: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
