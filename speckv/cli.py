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
    "γ-policy: ar (no speculation), fixed (--gamma N), heuristic (HF's +2/−1 schedule), confidence (stop under "
    "draft top-1 p), entropy (stop over draft entropy), ema (SGLang-style EMA of accepted length), learned (MLP "
    "acceptance model + measured costs; without trained weights it falls back to the draft's top-1 probability as "
    "the acceptance estimate). Default: learned"
)

#: subcommands implemented in their own modules: name -> (module, help)
SUBCOMMANDS = {
    "distill": ("speckv.distill", "train a draft for the target by distillation on its own answers"),
    "collect": ("speckv.collect", "collect replayable step telemetry and measured costs for the selector"),
    "train-policy": ("speckv.train_policy", "train the learned γ selector from telemetry Parquet"),
    "bench": ("speckv.bench", "side-by-side benchmark of policies (and HF assisted generation)"),
    "analyze": ("speckv.analyze", "report with plots from telemetry Parquet"),
}


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags that build an EngineConfig (shared by `speckv generate` and the Ray batch job)."""
    g = parser.add_argument_group("engine")
    g.add_argument("--target", default=EMBEDDED, help="target: hub id, local dir, .gguf file, or 'embedded'")
    g.add_argument("--draft", default=EMBEDDED, help="draft weights: hub id, local dir, .gguf, or 'embedded'")
    g.add_argument("--draft-kind", choices=["eagle", "lm"], default="eagle",
                   help="eagle: feature head over the target's hidden states; lm: independent draft LM")
    g.add_argument("--no-draft-int8", dest="draft_int8", action="store_false",
                   help="keep the EAGLE head's weights in the target's dtype on CPU (default: int8 weight-only)")
    g.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="bf16")
    g.add_argument("--quantization", choices=["none", "int8", "nf4"], default="none",
                   help="bitsandbytes quantization of the target")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    g.add_argument("--policy", choices=POLICY_NAMES, default="learned", help=POLICY_HELP)
    g.add_argument("--gamma", type=int, default=4, help=f"γ for 'fixed' (1..{GAMMA_LIMIT})")
    g.add_argument("--gamma-max", type=int, default=8, help="upper bound for adaptive policies")
    g.add_argument("--policy-path", default=None, help="weights for 'learned' (default: the shipped selector)")
    g.add_argument("--batch-size", type=int, default=8, help="requests decoded together")
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
        draft=DraftSpec(kind=args.draft_kind, source=args.draft, int8_weights=args.draft_int8),
        policy=PolicySpec(name=args.policy, gamma=args.gamma, gamma_max=max(args.gamma_max, args.gamma),
                          path=args.policy_path),
        max_batch_size=args.batch_size,
        threads=args.threads,
    )


def sampling_defaults(args: argparse.Namespace) -> SamplingParams:
    return SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                          top_k=args.top_k, seed=args.seed)


def cmd_generate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from speckv.engine import SpecEngine
    from speckv.io import InputError, error_row, parse_row, read_input_lines, row_id, write_parquet

    config = engine_config(args)  # validates before any model is loaded
    defaults = sampling_defaults(args)
    lines = list(read_input_lines(args.input))
    engine = SpecEngine(config)
    requests, errors = [], []
    for line_no, raw in lines:
        try:
            requests.append(parse_row(raw, line_no, defaults))
        except InputError as exc:
            errors.append(error_row(row_id(raw, line_no), str(exc), policy=args.policy, actor_id=engine.actor_id))
    out = Path(args.output)
    start, tokens = time.perf_counter(), 0
    bar = tqdm(total=len(lines), unit="req", desc="generate", disable=None)  # None: only on a terminal
    bar.update(len(errors))

    def progress(done: int, new_tokens: int) -> None:
        nonlocal tokens
        tokens += new_tokens
        bar.update(done)
        bar.set_postfix(tok_s=f"{tokens / max(time.perf_counter() - start, 1e-9):.1f}")

    chunk = args.batch_size * 4
    n_ok = 0
    for i in range(0, len(requests), chunk):
        results = engine.generate(requests[i : i + chunk], progress)
        rows = [r.output_row() for r in results]
        steps = [s for r in results for s in r.steps]
        n_ok += sum(r["status"] == "ok" for r in rows)
        write_parquet(rows, steps, out, name=f"part-{i // chunk:05d}")
    if errors or not requests:
        write_parquet(errors, [], out, name="part-errors")
    bar.close()
    wall = time.perf_counter() - start
    print(f"{n_ok} ok, {len(lines) - n_ok} error rows; {tokens} tokens in {wall:.1f} s "
          f"({tokens / max(wall, 1e-9):.1f} tok/s) -> {out}/outputs, {out}/telemetry", file=sys.stderr)
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
