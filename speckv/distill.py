"""``speckv distill``: train a draft for the target by distillation on the target's own answers.

Two kinds:

``eagle``  an :class:`~speckv.drafters.eagle.EagleHead` over the target's features. Loss per answer position:
           KL(target ‖ head) on the next-token distribution + smooth-L1 between predicted and real feature,
           at draft depth 1..``--ttt-depth`` (depth > 1 feeds the head's own predictions, as at inference:
           "training-time test", the drafted slot attends to the real prefix and to its own chain only).
``lm``     an independent small ``LlamaForCausalLM`` with the target's tokenizer: a subset of the target's layers,
           some copied and frozen, some trained — in full, or (``--lora-rank``) as low-rank updates of the
           target's own weights —, the target's (tied) embedding / LM head frozen. Loss: KL(target ‖ draft).
           Only the trained tensors (or the updates' factors) are shipped; :func:`draft_lm_dir`
           assembles a full Hugging Face checkpoint (usable by ``model.generate(assistant_model=...)``) in the
           cache directory on first use, as the GGUF conversion in :mod:`speckv.models` does.

Pipeline: (a) the target answers ``--prompts`` (batched HF generate; a ``--sample-fraction`` of prompts sampled,
the rest greedy), and one forward pass records its features; cached under ``cache_dir()/distill`` so later runs
reuse it. The held-out ``--bench`` prompts get greedy answers the same way. (b) Training on cached features: the
target's logits are ``lm_head(feature)``, so no target forward runs during training. (c) Greedy γ-step speculative
decoding is simulated on the bench answers to measure acceptance. (d) Weights + metadata JSON go to ``--output``.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import random
import shlex
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from speckv.config import EMBEDDED, ModelSpec
from speckv.drafters.eagle import META_FILE as EAGLE_META
from speckv.drafters.eagle import EagleDrafter, EagleHead, default_eagle_path, head_config
from speckv.kvcache import CACHE_KWARG
from speckv.models import ASSETS, _file_lock, cache_dir, load_causal_lm, load_tokenizer, resolve_source

DATA_DIR = Path(__file__).parent / "data"
DRAFT_LM_ASSET = ASSETS / "draft_lm"
EAGLE_ASSET = default_eagle_path()
RECIPE_FILE = "recipe.json"
TRAINED_FILE = "trained.safetensors"


# ---------------------------------------------------------------------------------------------------- data
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


def kl_to_target(student: torch.Tensor, target_feat: torch.Tensor, weight: torch.Tensor):
    """Mean KL(p_target ‖ q_student) over rows [N, H]; both logits through the same frozen LM head weight."""
    with torch.no_grad():
        p_log = F.log_softmax(F.linear(target_feat, weight).float(), dim=-1)
    q_log = F.log_softmax(F.linear(student, weight).float(), dim=-1)
    return (p_log.exp() * (p_log - q_log)).sum(-1).mean()


# ---------------------------------------------------------------------------------------------------- eagle
def ttt_mask(length: int, depth: int) -> torch.Tensor:
    """[n, keys] bool for the n = length - depth slots of draft depth ``depth`` ("training-time test").

    The cache holds one block per earlier depth e (length - e slots each, slot i of every block belongs to the
    chain that starts at real slot i). A depth-d slot i sees real slots j ≤ i and its own chain at depths 1..d —
    exactly what a drafted position sees at inference."""
    n = length - depth
    real = torch.ones(n, length, dtype=torch.bool).tril()
    return torch.cat([real] + [torch.eye(n, length - e, dtype=torch.bool) for e in range(1, depth + 1)], dim=1)


def ttt_forward(head: EagleHead, feats: torch.Tensor, embeds: torch.Tensor, depth: int) -> list[torch.Tensor]:
    """Predicted features at draft depths 1..depth for every slot: ``feats``/``embeds`` [B, W, H] of tokens x_0..x_{W-1}.

    Slot i at depth d (0-based) has position i+d, feeds (depth d-1's prediction, or f_i when d = 0; x_{i+d+1}) and
    predicts the feature at i+d+1. Returns depth d's predictions as [B, W-1-d, H]."""
    from transformers import DynamicCache

    batch, width, _ = feats.shape
    length = width - 1
    cache = DynamicCache()
    cur, preds = feats, []  # depth 0 feeds the real features f_i
    for d in range(depth):
        n = length - d  # slots whose token x_{i+d+1} exists
        mask = ttt_mask(length, d)[None, None].expand(batch, 1, -1, -1)
        position_ids = (torch.arange(n) + d)[None, :].expand(batch, -1)
        cur = head(cur[:, :n], embeds[:, d + 1 : d + 1 + n], attention_mask=mask, position_ids=position_ids,
                   use_cache=True, **{CACHE_KWARG: cache})
        preds.append(cur)  # the next depth feeds these predictions
    return preds


def eagle_loss(head: EagleHead, target, toks, feats, prompt, lens, depth: int, feat_weight: float,
               draft_vocab: int | None = None):
    """KL + feat_weight · smooth-L1 averaged over draft depths 1..depth, on answer positions only.

    With ``draft_vocab`` the KL is over the head's restricted vocabulary (the target renormalised on it), as the
    head drafts at inference; that also makes the LM-head matmuls, the bulk of a step, several times cheaper."""
    weight = target.get_output_embeddings().weight[:draft_vocab]
    embeds = target.get_input_embeddings()(toks).float()  # [B, W, H]
    total, stats = 0.0, {}
    for d, pred in enumerate(ttt_forward(head, feats, embeds, depth)):
        # the feature predicted at i+d+1 drafts token i+d+2, which must be an answer token after the target's
        # first one, and lie inside the sequence (not after EOS)
        i = torch.arange(pred.shape[1])[None, :]
        keep = (i + d + 2 >= prompt[:, None] + 1) & (i + d + 2 <= lens[:, None] - 1)
        real = feats[:, d + 1 : d + 1 + pred.shape[1]]
        kl = kl_to_target(pred[keep], real[keep], weight)
        reg = F.smooth_l1_loss(pred[keep].float(), real[keep])
        total = total + kl + feat_weight * reg
        stats[f"kl{d + 1}"] = float(kl)
        if d == 0:
            stats["reg"] = float(reg)
    return total / depth, stats


def init_eagle_head(target) -> EagleHead:
    """Start from the target's last decoder layer and final norm: the head's output lives where f lives."""
    head = EagleHead(head_config(target.config)).float()
    head.model.layers[0].load_state_dict(target.model.layers[-1].state_dict())
    head.model.norm.load_state_dict(target.model.norm.state_dict())
    return head.float()


# ---------------------------------------------------------------------------------------------------- draft LM
def parse_layers(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def draft_lm_config(target_config, num_layers: int):
    config = target_config.__class__.from_dict(target_config.to_dict())
    config.num_hidden_layers = num_layers
    if getattr(config, "layer_types", None):
        config.layer_types = config.layer_types[:num_layers]
    config.tie_word_embeddings = True
    return config


class LowRankDelta(torch.nn.Module):
    """A trained low-rank update of a frozen weight, W = W0 + B·A, as a parametrization (W0 stays as it is).

    B starts at zero, so training starts from the target's own layer; only A and B are shipped."""

    def __init__(self, out_features: int, in_features: int, rank: int) -> None:
        super().__init__()
        self.A = torch.nn.Parameter(torch.randn(rank, in_features) / in_features**0.5)
        self.B = torch.nn.Parameter(torch.zeros(out_features, rank))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.B @ self.A


def build_draft_lm(target, frozen: list[int], trained: list[int], lora_rank: int = 0):
    """LlamaForCausalLM: target layers ``frozen`` (copied, not trained) then ``trained`` (initialised from them);
    with ``lora_rank`` > 0 a trained layer keeps the target's weights frozen and learns a rank-``lora_rank`` update
    of each of its linear maps (and its norms in full), so that many layers can be trained and still shipped small."""
    from torch.nn.utils import parametrize
    from transformers import AutoModelForCausalLM

    config = draft_lm_config(target.config, len(frozen) + len(trained))
    draft = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    for k, src in enumerate(frozen + trained):
        draft.model.layers[k].load_state_dict(target.model.layers[src].state_dict())
    draft.model.norm.load_state_dict(target.model.norm.state_dict())
    # shared with the target, frozen, and set after any dtype cast (a cast would convert the target's own tensor)
    draft.model.embed_tokens.weight = target.get_input_embeddings().weight
    draft.lm_head.weight = draft.model.embed_tokens.weight
    draft.requires_grad_(False)
    for k in range(len(frozen), len(frozen) + len(trained)):
        layer = draft.model.layers[k]
        if not lora_rank:
            layer.requires_grad_(True)
            continue
        for module in list(layer.modules()):
            if isinstance(module, torch.nn.Linear):
                delta = LowRankDelta(module.out_features, module.in_features, lora_rank)
                parametrize.register_parametrization(module, "weight", delta)
            elif "norm" in type(module).__name__.lower():
                module.requires_grad_(True)
    draft.model.norm.requires_grad_(True)
    return draft


def trained_state(draft) -> dict[str, torch.Tensor]:
    """What ships: every tensor :func:`build_draft_lm` left trainable, a low-rank update as its factors
    ``<module>.lora_A`` / ``<module>.lora_B``."""
    return {name.replace(".parametrizations.weight.0.", ".lora_"): p.detach()
            for name, p in draft.named_parameters() if p.requires_grad}


def lm_loss(draft, target, toks, feats, prompt, lens):
    hidden = draft.model(input_ids=toks).last_hidden_state  # [B, L, H]
    i = torch.arange(toks.shape[1])[None, :]
    # position i predicts token i+1: train where that is an answer token (the target's own first one included)
    keep = (i + 1 >= prompt[:, None]) & (i + 1 <= lens[:, None] - 1)
    weight = target.get_output_embeddings().weight
    kl = kl_to_target(hidden[keep], feats[keep], weight)
    return kl, {"kl": float(kl)}


def draft_lm_dir(asset: Path = DRAFT_LM_ASSET, target_source: str = EMBEDDED) -> Path:
    """A full HF checkpoint of the shipped draft LM, assembled once in the cache from the target + trained layers."""
    recipe_path, trained_path = asset / RECIPE_FILE, asset / TRAINED_FILE
    if not recipe_path.is_file() or not trained_path.is_file():
        raise FileNotFoundError(f"no draft LM in {asset}: run `speckv distill --kind lm --output {asset}`")
    recipe = json.loads(recipe_path.read_text())
    # the weights and the layer plan name the checkpoint; measurement metadata in the recipe does not
    plan = json.dumps([target_source, recipe["frozen"], recipe["trained"], recipe.get("lora_rank", 0)]).encode()
    digest = hashlib.sha256(plan + trained_path.read_bytes()).hexdigest()[:16]
    out = cache_dir() / "draft_lm" / digest
    if (out / "config.json").is_file():
        return out
    with _file_lock(out.with_suffix(".lock")):
        if (out / "config.json").is_file():
            return out
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        source = Path(resolve_source(target_source))
        target_state = load_file(source / "model.safetensors")
        config = draft_lm_config(AutoConfig.from_pretrained(source), len(recipe["frozen"]) + len(recipe["trained"]))
        state = {"model.embed_tokens.weight": target_state["model.embed_tokens.weight"]}
        # frozen layers, and the base of low-rank trained ones, come from the target; full trained layers from the file
        base = recipe["frozen"] + (recipe["trained"] if recipe.get("lora_rank") else [])
        for k, src in enumerate(base):
            prefix = f"model.layers.{src}."
            state.update({f"model.layers.{k}.{n[len(prefix):]}": v.float() for n, v in target_state.items()
                          if n.startswith(prefix)})
        shipped = {k: v.float() for k, v in load_file(trained_path).items()}
        for name in [n for n in shipped if n.endswith(".lora_A")]:  # merge W = W0 + B·A: an ordinary checkpoint
            module = name[: -len(".lora_A")]
            state[f"{module}.weight"] = state[f"{module}.weight"] + shipped.pop(f"{module}.lora_B") @ shipped.pop(name)
        state.update(shipped)
        draft = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        missing, unexpected = draft.load_state_dict(state, strict=False)
        if unexpected or set(missing) - {"lm_head.weight"}:
            raise RuntimeError(f"draft LM recipe mismatch: missing {missing}, unexpected {unexpected}")
        draft.tie_weights()
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".tmp-"))
        tmp.chmod(0o755)
        draft.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(source).save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    return out


# ---------------------------------------------------------------------------------------------------- measuring
@dataclass
class Acceptance:
    steps: int = 0
    drafted: int = 0
    accepted: int = 0
    first_ok: int = 0

    def add(self, num_draft: int, num_accepted: int) -> None:
        self.steps += 1
        self.drafted += num_draft
        self.accepted += num_accepted
        self.first_ok += int(num_accepted > 0)

    def summary(self) -> dict:
        return {
            "verify_steps": self.steps,
            "num_draft_tokens": self.drafted,
            "num_accepted_tokens": self.accepted,
            "acceptance_rate": self.accepted / max(self.drafted, 1),
            "mean_acceptance_length": (self.accepted + self.steps) / max(self.steps, 1),  # includes the bonus token
            "first_token_acceptance": self.first_ok / max(self.steps, 1),
        }


def matched(drafts: list[int], truth: list[int]) -> int:
    n = 0
    while n < len(drafts) and n < len(truth) and drafts[n] == truth[n]:
        n += 1
    return n


@torch.no_grad()
def simulate_eagle(drafter: EagleDrafter, corpus: Corpus, gamma: int, batch_size: int = 16) -> dict[str, Acceptance]:
    """Greedy speculative decoding against recorded greedy answers, through the Drafter protocol (ragged batches).

    A step drafts min(γ, tokens left - 1) tokens, accepts the prefix matching the target's answer and commits
    it plus one target token, with the target's recorded features."""
    per_task: dict[str, Acceptance] = {}
    for s in range(0, len(corpus.tokens), batch_size):
        idx = list(range(s, min(s + batch_size, len(corpus.tokens))))
        idx = [i for i in idx if len(corpus.tokens[i]) > corpus.prompt_lens[i] + 1]
        toks = [corpus.tokens[i].tolist() for i in idx]
        feats = [corpus.features[i] for i in idx]
        pos = [corpus.prompt_lens[i] for i in idx]  # index of the last committed token
        drafter.prefill([t[:p] for t, p in zip(toks, pos)], torch.tensor([t[p] for t, p in zip(toks, pos)]),
                        [f[:p] for f, p in zip(feats, pos)])
        live = list(range(len(idx)))
        while live:
            left = [len(toks[r]) - 1 - pos[r] for r in live]  # answer tokens still to produce
            k = max(min(gamma, max(left) - 1), 0)
            drafts = []
            last = None
            for _ in range(k):
                last = drafter.draft_logits(last).argmax(-1)
                drafts.append(last.tolist())
            width = min(k, max(left) - 1) + 1
            new = torch.zeros(len(live), width, dtype=torch.long)
            hid = torch.zeros(len(live), width, feats[0].shape[1], dtype=feats[0].dtype)
            num_new = []
            for j, r in enumerate(live):
                kr = min(k, left[j] - 1)
                truth = toks[r][pos[r] + 1 : pos[r] + 1 + kr]
                a = matched([drafts[t][j] for t in range(kr)], truth)
                if kr:  # the answer's last token leaves nothing to draft: not a speculative step
                    per_task.setdefault(corpus.tasks[idx[r]], Acceptance()).add(kr, a)
                n = a + 1
                new[j, :n] = torch.tensor(toks[r][pos[r] + 1 : pos[r] + 1 + n])
                hid[j, :n] = feats[r][pos[r] : pos[r] + n]
                num_new.append(n)
                pos[r] += n
            drafter.commit(new, torch.tensor(num_new), hid)
            done = [j for j, r in enumerate(live) if pos[r] >= len(toks[r]) - 1]
            if done:
                keep = [j for j in range(len(live)) if j not in done]
                if keep:
                    drafter.select_rows(torch.tensor(keep))
                live = [live[j] for j in keep]
    return per_task


def crop(cache, length: int) -> None:
    """Keep the first ``length`` tokens of a DynamicCache (a negative argument means "remove" in every version)."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


@torch.no_grad()
def simulate_lm(draft, corpus: Corpus, gamma: int, limit: int | None = None) -> dict[str, Acceptance]:
    """Greedy γ-step drafting with a standalone LM (batch 1, KV cache cropped to the committed prefix)."""
    from transformers import DynamicCache

    per_task: dict[str, Acceptance] = {}
    total = len(corpus.tokens)
    n_seq = total if limit is None else min(limit, total)
    picked = [k * total // n_seq for k in range(n_seq)]  # evenly spread, so every task of the mix is measured
    for i in tqdm(picked, desc="draft LM acceptance", unit="prompt"):
        toks = corpus.tokens[i].tolist()
        pos = corpus.prompt_lens[i]  # last committed token
        cache, cached = DynamicCache(), 0
        while pos < len(toks) - 1:
            k = min(gamma, len(toks) - 2 - pos)
            if k == 0:  # only the answer's last token is left: nothing to draft
                break
            feed = toks[cached : pos + 1]
            drafts = []
            for _ in range(k):
                out = draft(input_ids=torch.tensor([feed]), use_cache=True, **{CACHE_KWARG: cache})
                drafts.append(int(out.logits[0, -1].argmax()))
                feed = drafts[-1:]
            a = matched(drafts, toks[pos + 1 : pos + 1 + k])
            per_task.setdefault(corpus.tasks[i], Acceptance()).add(k, a)
            fed = pos + 1 + max(k - 1, 0)  # tokens now in the cache (the last draft was never fed)
            cached = min(fed, pos + 1 + a)  # accepted drafts equal the answer, so their cache entries stay
            crop(cache, cached)
            pos += a + 1
    return per_task


@torch.no_grad()
def measure_eagle_cost(drafter: EagleDrafter, target, corpus: Corpus, repeats: int = 30) -> dict:
    """Median ms of one drafted token vs one target forward of one token, batch 1, ~200-token context."""
    from transformers import DynamicCache

    i = max(range(len(corpus.tokens)), key=lambda j: len(corpus.tokens[j]))
    toks = corpus.tokens[i][:200]
    ctx = len(toks) - 1
    cache = DynamicCache()
    target(input_ids=toks[None, :ctx], use_cache=True, **{CACHE_KWARG: cache})
    drafter.prefill([toks[:ctx].tolist()], toks[ctx:], [corpus.features[i][:ctx]])
    first = drafter.draft_logits(None).argmax(-1)
    target_ms, draft_ms = [], []
    for _ in range(repeats):  # interleaved, so that load from other processes hits both alike
        t0 = time.perf_counter()
        target(input_ids=toks[None, ctx:], use_cache=True, **{CACHE_KWARG: cache})
        target_ms.append((time.perf_counter() - t0) * 1e3)
        crop(cache, ctx)
        t0 = time.perf_counter()
        drafter.draft_logits(first)  # one more drafted position each repeat (context grows by `repeats` at most)
        draft_ms.append((time.perf_counter() - t0) * 1e3)
    target_med, draft_med = statistics.median(target_ms), statistics.median(draft_ms)
    return {"target_forward_ms": target_med, "draft_token_ms": draft_med, "cost_ratio": draft_med / target_med,
            "context_tokens": ctx, "batch_size": 1}


def summarize(per_task: dict[str, Acceptance]) -> dict:
    total = Acceptance()
    for acc in per_task.values():
        total.steps += acc.steps
        total.drafted += acc.drafted
        total.accepted += acc.accepted
        total.first_ok += acc.first_ok
    return {"all": total.summary(), **{task: acc.summary() for task, acc in sorted(per_task.items())}}


# ---------------------------------------------------------------------------------------------------- CLI
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
    parser.add_argument("--eval-prompts", type=int, default=None, help="lm: bench prompts to measure (default all)")
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


def evaluate(kind: str, output: Path, target, device, bench: Corpus, args: argparse.Namespace) -> dict:
    """Acceptance at γ on the bench answers (and, for eagle, the cost of a drafted token); updates the metadata file."""
    if kind == "eagle":
        meta_path = output / EAGLE_META
        drafter = EagleDrafter.load(output, target, device)
        results = {"acceptance": summarize(simulate_eagle(drafter, bench, args.gamma)),
                   "cost": measure_eagle_cost(drafter, target, bench)}
    else:
        from transformers import AutoModelForCausalLM

        meta_path = output / RECIPE_FILE
        draft = AutoModelForCausalLM.from_pretrained(draft_lm_dir(output), dtype=torch.bfloat16).eval()
        limit = args.eval_prompts or len(bench.tokens)
        results = {"acceptance": summarize(simulate_lm(draft, bench, args.gamma, limit)), "eval_prompts": limit}
    results.update(gamma=args.gamma, bench=args.bench.name, measured=_now())
    meta = json.loads(meta_path.read_text())
    meta.update(results)
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return results


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    started = time.time()
    output = args.output or (EAGLE_ASSET if args.kind == "eagle" else DRAFT_LM_ASSET)
    steps = args.steps or (700 if args.kind == "eagle" else 1100)
    lr = args.lr or (5e-4 if args.kind == "eagle" else 1e-3)

    target, device = load_causal_lm(ModelSpec(dtype=args.target_dtype, device="cpu"))
    tokenizer = load_tokenizer(EMBEDDED)
    target_key = f"{EMBEDDED}:{Path(resolve_source(EMBEDDED)).name}:{args.target_dtype}"
    common = {"max_new_tokens": args.max_new_tokens, "batch_size": args.gen_batch, "seed": args.seed,
              "target_key": target_key}
    bench = build_corpus(target, tokenizer, args.bench, sample_fraction=0.0, temperature=1.0, **common)
    if args.eval_only:
        print(json.dumps(evaluate(args.kind, output, target, device, bench, args), indent=2))
        return 0
    train = concat([build_corpus(target, tokenizer, path, sample_fraction=args.sample_fraction,
                                 temperature=args.temperature, max_prompts=args.max_prompts, **common)
                    for path in args.prompts])
    data_s = time.time() - started
    print(f"data: {len(train.tokens)} sequences, {sum(len(t) for t in train.tokens)} tokens "
          f"({train.answer_tokens} answer tokens); bench {len(bench.tokens)} sequences; {data_s:.0f} s", flush=True)

    # training runs on fp32 master weights with bf16 autocast (the CPU has bf16 matmuls)
    previous = None
    if args.kind == "eagle" and args.init is not None:
        init = EagleDrafter.load(args.init, target, device)
        model = init.head.float().requires_grad_(True)
        previous = {k: init.metadata.get(k) for k in ("command", "steps", "train_wall_s", "continued_from")}
    elif args.kind == "eagle":
        model = init_eagle_head(target)
    else:
        frozen, trained = parse_layers(args.frozen_layers), parse_layers(args.trained_layers)
        model = build_draft_lm(target, frozen, trained, args.lora_rank)
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, betas=(0.9, 0.95))
    warmup = max(steps // 20, 1)
    budget_s = args.max_minutes * 60 if args.max_minutes is not None else float("inf")

    def learning_rate(step: int) -> float:
        """Linear warm-up, then cosine decay to 10 % over the steps or the time budget, whichever ends first."""
        progress = min(max(step / steps, (time.time() - train_start) / budget_s), 1.0)
        return lr * min(1.0, (step + 1) / warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))

    rng = random.Random(args.seed)
    order: list[int] = []
    train_start = time.time()
    done_steps = 0
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
            for group in optim.param_groups:
                group["lr"] = learning_rate(step)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optim.step()
            done_steps = step + 1
            bar.set_postfix({k: f"{v:.3f}" for k, v in stats.items()})
            if time.time() - train_start > budget_s:
                print(f"time budget reached after {done_steps} steps", flush=True)
                break
    train_s = time.time() - train_start
    model.eval()

    metadata = {
        "kind": args.kind,
        "command": command_line(args),
        "target": target_key,
        "train_sequences": len(train.tokens),
        "train_tokens": sum(len(t) for t in train.tokens),
        "train_answer_tokens": train.answer_tokens,
        "steps": done_steps,
        "batch_size": args.batch_size,
        "lr": lr,
        "data_wall_s": round(data_s, 1),
        "train_wall_s": round(train_s, 1),
        "date": _now(),
    }
    if previous:
        metadata["continued_from"] = previous
    output.mkdir(parents=True, exist_ok=True)
    if args.kind == "eagle":
        metadata["draft_vocab"] = args.draft_vocab or None
        EagleDrafter.save(model, output, metadata)
    else:
        state = trained_state(model)
        save_file({k: v.to(torch.bfloat16).contiguous() for k, v in state.items()}, output / TRAINED_FILE)
        recipe = {"target": EMBEDDED, "frozen": frozen, "trained": trained, "lora_rank": args.lora_rank, **metadata}
        (output / RECIPE_FILE).write_text(json.dumps(recipe, indent=2) + "\n")
    results = evaluate(args.kind, output, target, device, bench, args)
    print(json.dumps({"steps": done_steps, "train_wall_s": round(train_s, 1), **results}, indent=2))
    return 0
