"""``speckv distill``: train a draft for the target by distillation on the target's own answers.

Two kinds, one module each: ``eagle`` (:mod:`.eagle`, an EAGLE head over the target's features) and ``lm``
(:mod:`.lora_lm`, an independent draft LM from the target's own layers). Pipeline: (a) the corpus (:mod:`.corpus`):
the target answers ``--prompts`` and one forward pass records its features, cached; the held-out ``--bench`` prompts
are only generated through the engine at evaluation. (b) Training on cached features: the target's logits are
``lm_head(feature)``, so no target forward runs during training. (c) Evaluation through the engine's own step
(:mod:`.evaluate`). (d) Weights + metadata JSON go to ``--output``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import random
import shlex
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from speckv.config import EMBEDDED, ModelSpec
from speckv.distill.corpus import Corpus, batch_of, build_corpus, concat
from speckv.distill.eagle import eagle_loss, init_eagle_head
from speckv.distill.evaluate import evaluate
from speckv.distill.lora_lm import build_draft_lm, lm_loss, parse_layers, trained_state
from speckv.drafters.draft_lm import DRAFT_LM_ASSET, RECIPE_FILE, TRAINED_FILE
from speckv.drafters.eagle import EagleDrafter, default_eagle_path
from speckv.models import load_causal_lm, load_tokenizer, resolve_source

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
EAGLE_ASSET = default_eagle_path()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kind", choices=("eagle", "lm"), default="eagle", help="which draft to train")
    parser.add_argument("--output", type=Path, default=None,
                        help="output dir (default: the shipped asset dir speckv/assets/<eagle|draft_lm>)")
    parser.add_argument("--prompts", type=Path, nargs="+", default=[DATA_DIR / "train_prompts.jsonl"],
                        help="training prompt files (JSONL: prompt, task, optional sample)")
    parser.add_argument("--max-prompts", type=int, default=None, help="use only the first N prompts of each file")
    parser.add_argument("--bench", type=Path, default=DATA_DIR / "bench_mix.jsonl", help="held-out prompts")
    parser.add_argument("--target-dtype", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="length of the target's answers")
    parser.add_argument("--sample-fraction", type=float, default=0.5, help="share of prompts answered by sampling")
    parser.add_argument("--temperature", type=float, default=0.7, help="temperature of the sampled answers")
    parser.add_argument("--gen-batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default: eagle 700, lm 1100)")
    parser.add_argument("--max-minutes", type=float, default=None, help="stop training after this wall time")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-len", type=int, default=256, help="tokens per training sequence (tail kept)")
    parser.add_argument("--lr", type=float, default=None, help="AdamW peak lr (default: eagle 5e-4, lm 1e-3)")
    parser.add_argument("--ttt-depth", type=int, default=2, help="eagle: draft depths trained per position")
    parser.add_argument("--feat-weight", type=float, default=0.5, help="eagle: weight of the smooth-L1 feature loss")
    parser.add_argument("--draft-vocab", type=int, default=16384,
                        help="eagle: head over the first N token ids at inference (0: full vocabulary)")
    parser.add_argument("--frozen-layers", type=str, default="", help="lm: target layers copied and frozen")
    parser.add_argument("--trained-layers", type=str, default="0,1,2,3,4,5,24,25,26,27,28,29",
                        help="lm: target layers to start from, trained")
    parser.add_argument("--lora-rank", type=int, default=64,
                        help="lm: train each trained layer as a rank-R update of the target's (0: in full)")
    parser.add_argument("--init", type=Path, default=None,
                        help="eagle: continue training the head saved in this dir (default: start from the target's "
                             "last layer)")
    parser.add_argument("--gamma", type=int, default=4, help="γ of the acceptance measurement")
    parser.add_argument("--eval-prompts", type=int, default=None, help="bench prompts to measure (default all)")
    parser.add_argument("--eval-only", action="store_true",
                        help="measure the draft already in --output (no training); updates its metadata")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)


def command_line(args: argparse.Namespace) -> str:
    """The equivalent ``speckv distill`` invocation, every option spelled out."""
    parts = ["speckv", "distill"]
    for key, value in vars(args).items():
        if value is None or value is False or key in ("func", "command"):
            continue
        flag = f"--{key.replace('_', '-')}"
        if value is True:
            parts.append(flag)
            continue
        values = value if isinstance(value, list) else [value]
        values = [v.relative_to(Path.cwd()) if isinstance(v, Path) and v.is_absolute() and v.is_relative_to(Path.cwd())
                  else v for v in values]
        parts += [flag, *(shlex.quote(str(v)) for v in values)]
    return " ".join(parts)




def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    started = time.time()
    output = args.output or (EAGLE_ASSET if args.kind == "eagle" else DRAFT_LM_ASSET)
    spec = ModelSpec(dtype=args.target_dtype, device="cpu")
    target, _ = load_causal_lm(spec)
    tokenizer = load_tokenizer(EMBEDDED)

    def measure() -> dict:
        return evaluate(args.kind, output, target, tokenizer, spec, args.bench, args.gamma, args.max_new_tokens,
                        args.eval_prompts)

    if args.eval_only:
        print(json.dumps(measure(), indent=2))
        return 0
    target_key = f"{EMBEDDED}:{Path(resolve_source(EMBEDDED)).name}:{args.target_dtype}"
    common = {"max_new_tokens": args.max_new_tokens, "batch_size": args.gen_batch, "seed": args.seed,
              "target_key": target_key}
    train = concat([build_corpus(target, tokenizer, path, sample_fraction=args.sample_fraction,
                                 temperature=args.temperature, max_prompts=args.max_prompts, **common)
                    for path in args.prompts])
    data_s = time.time() - started
    print(f"data: {len(train.tokens)} sequences, {sum(len(t) for t in train.tokens)} tokens "
          f"({train.answer_tokens} answer tokens); {data_s:.0f} s", flush=True)
    model, previous = initial_model(args, target)
    done_steps, train_s = train_model(args, model, target, train)
    metadata = {
        "kind": args.kind, "command": command_line(args), "target": target_key,
        "train_sequences": len(train.tokens), "train_tokens": sum(len(t) for t in train.tokens),
        "train_answer_tokens": train.answer_tokens, "steps": done_steps, "batch_size": args.batch_size,
        "lr": args.lr or default_lr(args.kind), "data_wall_s": round(data_s, 1), "train_wall_s": round(train_s, 1),
        "date": _now(), **({"continued_from": previous} if previous else {}),
    }
    save_model(args, model, output, metadata)
    print(json.dumps({"steps": done_steps, "train_wall_s": round(train_s, 1), **measure()}, indent=2))
    return 0


def default_lr(kind: str) -> float:
    return 5e-4 if kind == "eagle" else 1e-3


def initial_model(args: argparse.Namespace, target) -> tuple[torch.nn.Module, dict | None]:
    """The model to train (fp32 master weights) and, when continuing a head, what it was trained with before."""
    if args.kind == "eagle" and args.init is not None:
        init = EagleDrafter.load(args.init, target, torch.device("cpu"), int8_weights=False)
        previous = {k: init.metadata.get(k) for k in ("command", "steps", "train_wall_s", "continued_from")}
        return init.head.float().requires_grad_(True), previous
    if args.kind == "eagle":
        return init_eagle_head(target), None
    return build_draft_lm(target, parse_layers(args.frozen_layers), parse_layers(args.trained_layers),
                          args.lora_rank), None


def train_model(args: argparse.Namespace, model, target, train: Corpus) -> tuple[int, float]:
    """AdamW with bf16 autocast; linear warm-up, then cosine decay to 10 % over the steps or the time budget,
    whichever ends first. Returns (steps done, seconds)."""
    steps, lr = args.steps or (700 if args.kind == "eagle" else 1100), args.lr or default_lr(args.kind)
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, betas=(0.9, 0.95))
    warmup, budget_s = max(steps // 20, 1), args.max_minutes * 60 if args.max_minutes is not None else float("inf")
    rng, order, start, done = random.Random(args.seed), [], time.time(), 0
    model.train()
    with tqdm(range(steps), desc=f"distill {args.kind}", unit="step") as bar:
        for step in bar:
            if not order:
                order = list(range(len(train.tokens)))
                rng.shuffle(order)
            idx, order = order[: args.batch_size], order[args.batch_size :]
            toks, feats, prompt, lens = batch_of(train, idx, args.max_len)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                if args.kind == "eagle":
                    loss, stats = eagle_loss(model, target, toks, feats, prompt, lens, args.ttt_depth,
                                             args.feat_weight, args.draft_vocab or None)
                else:
                    loss, stats = lm_loss(model, target, toks, feats, prompt, lens)
            progress = min(max(step / steps, (time.time() - start) / budget_s), 1.0)
            for group in optim.param_groups:
                group["lr"] = lr * min(1.0, (step + 1) / warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))
            optim.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optim.step()
            done = step + 1
            bar.set_postfix({k: f"{v:.3f}" for k, v in stats.items()})
            if time.time() - start > budget_s:
                print(f"time budget reached after {done} steps", flush=True)
                break
    model.eval()
    return done, time.time() - start


def save_model(args: argparse.Namespace, model, output: Path, metadata: dict) -> None:
    output.mkdir(parents=True, exist_ok=True)
    if args.kind == "eagle":
        EagleDrafter.save(model, output, {**metadata, "draft_vocab": args.draft_vocab or None})
        return
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in trained_state(model).items()}, output / TRAINED_FILE)
    recipe = {"target": EMBEDDED, "frozen": parse_layers(args.frozen_layers),
              "trained": parse_layers(args.trained_layers), "lora_rank": args.lora_rank, **metadata}
    (output / RECIPE_FILE).write_text(json.dumps(recipe, indent=2) + "\n")
