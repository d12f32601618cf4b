"""The distillation corpus: the target's own answers to training prompts, with its features at every position.

The target answers each prompt (batched HF generate; a ``sample_fraction`` of prompts sampled, the rest greedy), and
one forward pass records its final-norm output at every position. Cached under ``cache_dir()/distill`` by content,
so later runs reuse it; training then needs no target forward at all (the target's logits are ``lm_head(feature)``).
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from speckv.models import _file_lock, cache_dir


@dataclass
class Corpus:
    """Prompt + answer token sequences with the target's features at every position."""

    tokens: list[torch.Tensor]  # n × [len_i] int64
    features: list[torch.Tensor]  # n × [len_i, H] bf16: target.model(...).last_hidden_state
    prompt_lens: list[int]  # answer of sequence i starts at prompt_lens[i]
    tasks: list[str]

    @property
    def answer_tokens(self) -> int:
        return sum(len(t) - p for t, p in zip(self.tokens, self.prompt_lens))


def read_prompts(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    missing = [i for i, r in enumerate(rows) if "prompt" not in r]
    if missing:
        raise ValueError(f"{path}: rows {missing[:5]} have no 'prompt' field")
    return rows


def chat_ids(tokenizer, prompt: str) -> list[int]:
    ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
    return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)


@torch.no_grad()
def generate_answers(target, tokenizer, prompts: list[list[int]], sampled: list[bool], max_new_tokens: int,
                     batch_size: int, temperature: float, seed: int) -> list[list[int]]:
    """Batched HF generate, left-padded, prompts of similar length together; answers end at (and keep) EOS."""
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    answers: list[list[int]] = [[] for _ in prompts]
    groups = []
    for mode in (False, True):
        idx = sorted((i for i in range(len(prompts)) if sampled[i] == mode), key=lambda i: len(prompts[i]))
        groups += [(mode, idx[s : s + batch_size]) for s in range(0, len(idx), batch_size)]
    for g, (do_sample, idx) in enumerate(tqdm(groups, desc="target answers", unit="batch")):
        width = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, i in enumerate(idx):
            ids[r, width - len(prompts[i]) :] = torch.tensor(prompts[i])
            mask[r, width - len(prompts[i]) :] = 1
        torch.manual_seed(seed * 1000 + g)
        kwargs = {"do_sample": True, "temperature": temperature, "top_p": 0.95} if do_sample else {"do_sample": False}
        out = target.generate(input_ids=ids.to(target.device), attention_mask=mask.to(target.device),
                              max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=eos, **kwargs)
        for r, i in enumerate(idx):
            answer = out[r, width:].tolist()
            answers[i] = answer[: answer.index(eos) + 1] if eos in answer else answer
    return answers


@torch.no_grad()
def target_features(target, sequences: list[list[int]], batch_size: int = 16) -> list[torch.Tensor]:
    """The target's final-norm output at every position (right-padded batches; causal, so padding is harmless)."""
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    feats: list[torch.Tensor | None] = [None] * len(sequences)
    for s in tqdm(range(0, len(order), batch_size), desc="target features", unit="batch"):
        idx = order[s : s + batch_size]
        width = max(len(sequences[i]) for i in idx)
        ids = torch.zeros(len(idx), width, dtype=torch.long)
        for r, i in enumerate(idx):
            ids[r, : len(sequences[i])] = torch.tensor(sequences[i])
        hidden = target.model(input_ids=ids.to(target.device)).last_hidden_state
        for r, i in enumerate(idx):
            feats[i] = hidden[r, : len(sequences[i])].to("cpu", torch.bfloat16)
    return feats


def build_corpus(target, tokenizer, prompts_path: Path, *, max_new_tokens: int, sample_fraction: float,
                 temperature: float, batch_size: int, seed: int, target_key: str,
                 max_prompts: int | None = None) -> Corpus:
    """Target answers + features for a prompt file, cached by content so a second run reuses them."""
    rows = read_prompts(prompts_path)[:max_prompts]
    key = hashlib.sha256(json.dumps([hashlib.sha256(prompts_path.read_bytes()).hexdigest(), max_new_tokens,
                                     sample_fraction, temperature, seed, target_key, len(rows)]).encode()).hexdigest()[:16]
    path = cache_dir() / "distill" / f"{prompts_path.stem}-{key}.safetensors"
    if not path.is_file():
        with _file_lock(path.with_suffix(".lock")):
            if not path.is_file():
                rng = random.Random(seed)
                prompts = [chat_ids(tokenizer, r["prompt"]) for r in rows]
                # a row may force sampling ("sample": true: a second, sampled answer to a prompt seen elsewhere)
                sampled = [bool(r["sample"]) if "sample" in r else rng.random() < sample_fraction for r in rows]
                answers = generate_answers(target, tokenizer, prompts, sampled, max_new_tokens, batch_size,
                                           temperature, seed)
                seqs = [p + a for p, a in zip(prompts, answers)]
                feats = target_features(target, seqs)
                lens = torch.tensor([len(s) for s in seqs])
                tensors = {
                    "tokens": torch.tensor([t for s in seqs for t in s], dtype=torch.int32),
                    "features": torch.cat(feats),
                    "lengths": lens,
                    "prompt_lens": torch.tensor([len(p) for p in prompts]),
                }
                tmp = path.with_suffix(".tmp")
                save_file(tensors, tmp, metadata={"tasks": json.dumps([r.get("task", "") for r in rows])})
                tmp.rename(path)
    tensors = load_file(path)
    with open(path, "rb") as handle:  # the header holds the task tags
        header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
    tasks = json.loads(header["__metadata__"]["tasks"])
    lens = tensors["lengths"].tolist()
    return Corpus(
        tokens=[t.long() for t in tensors["tokens"].split(lens)],
        features=list(tensors["features"].split(lens)),
        prompt_lens=tensors["prompt_lens"].tolist(),
        tasks=tasks,
    )


def concat(corpora: list[Corpus]) -> Corpus:
    return Corpus(*(sum((getattr(c, f) for c in corpora), []) for f in ("tokens", "features", "prompt_lens", "tasks")))


def batch_of(corpus: Corpus, idx: list[int], max_len: int):
    """Right-padded [B, L] tokens, [B, L, H] features (fp32) and the prompt length of each row."""
    lens = [min(len(corpus.tokens[i]), max_len) for i in idx]
    width = max(lens)
    hidden = corpus.features[0].shape[1]
    toks = torch.zeros(len(idx), width, dtype=torch.long)
    feats = torch.zeros(len(idx), width, hidden)
    for r, (i, n) in enumerate(zip(idx, lens)):
        start = len(corpus.tokens[i]) - n  # keep the end of an over-long sequence: the answer matters most
        toks[r, :n] = corpus.tokens[i][start:]
        feats[r, :n] = corpus.features[i][start:].float()
    prompt = [max(corpus.prompt_lens[i] - (len(corpus.tokens[i]) - n), 1) for i, n in zip(idx, lens)]
    return toks, feats, torch.tensor(prompt), torch.tensor(lens)


