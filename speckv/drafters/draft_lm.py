"""The independent draft-LM drafter: any Hugging Face causal LM that shares the target's tokenizer; chains.

State per row: the draft's own KV cache (a :class:`~speckv.kvcache.RaggedCache`) and a queue of committed tokens
it has not fed yet. A drafting step feeds the queue (ragged) and then each drafted token in turn. At commit the
drafted tokens that equal what the target committed keep their KV entries; the rest of the commit is queued.

The shipped draft LM for the embedded target ships as a recipe (which of the target's layers, low-rank updates of
them) and the trained tensors; :func:`draft_lm_dir` assembles the full checkpoint into the cache on first use.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

from speckv.config import EMBEDDED
from speckv.kvcache import RaggedCache
from speckv.models import ASSETS, _file_lock, cache_dir, resolve_source

DRAFT_LM_ASSET = ASSETS / "draft_lm"
RECIPE_FILE = "recipe.json"
TRAINED_FILE = "trained.safetensors"


def pad_right(rows: list[list[int]], device: torch.device, pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, L] right-padded ids and their [B, L] validity mask (L ≥ 1)."""
    width = max(1, max((len(r) for r in rows), default=1))
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, : len(r)] = torch.tensor(r, dtype=torch.long)
    lengths = torch.tensor([len(r) for r in rows])
    valid = torch.arange(width)[None, :] < lengths[:, None]
    return ids.to(device), valid.to(device)


class DraftLM:
    needs_target_hidden = False
    kind = "lm"

    def __init__(self, model: torch.nn.Module, device: torch.device, vocab_size: int) -> None:
        self.model, self.device, self.vocab_size = model, device, vocab_size
        self.cache = RaggedCache(0, device)
        self.queue: list[list[int]] = []
        self.fed: list[torch.Tensor] = []  # drafted tokens fed this step, [B] each, in order (-1: none)

    def _forward(self, cache: RaggedCache, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        out = self.model(**cache.model_inputs(ids, valid))
        last = valid.long().sum(dim=1).clamp(min=1) - 1
        return out.logits[torch.arange(ids.shape[0], device=self.device), last][:, : self.vocab_size]  # [B, V]

    @torch.inference_mode()
    def admit(self, prompt_ids, first_tokens, hidden=None) -> None:
        cache = RaggedCache(len(prompt_ids), self.device)
        ids, valid = pad_right(prompt_ids, self.device)
        self.model(**cache.model_inputs(ids, valid), logits_to_keep=1)
        self.cache.extend(cache)
        self.queue += [[int(t)] for t in first_tokens.tolist()]

    def prepare(self, plan) -> None:
        return None  # its prompts are fed at admission, its queue at grow

    @torch.inference_mode()
    def grow(self, tree, plan, expand, draws) -> None:
        if not plan.drafts:
            return
        ids, valid = pad_right(self.queue, self.device)
        self.queue = [[] for _ in self.queue]
        logits = self._forward(self.cache, ids, valid)
        tree.count_forward()
        parents = torch.where(plan.nodes.to(self.device) > 0, 0, -1)[:, None]
        for depth in range(plan.depth):
            start, _ = tree.add_children(parents, logits[:, None], 1, draws)
            if depth + 1 == plan.depth or not expand(tree):
                break
            node = torch.where(tree.real[:, start], start + 1, -1)
            token = torch.where(node >= 0, tree.tokens[:, start], -1)
            logits = self._forward(self.cache, token.clamp(min=0)[:, None], (node >= 0)[:, None])
            self.fed.append(token)
            tree.count_forward()
            parents = node[:, None]

    def commit(self, new_tokens, num_new, hidden=None) -> None:
        new = new_tokens.tolist()
        kept = torch.zeros(len(new), dtype=torch.long)
        if self.fed:  # fed drafts that match the commit keep their KV entries; the rest become holes
            fed = torch.stack(self.fed, dim=1).cpu()  # [B, F]
            width = min(fed.shape[1], new_tokens.shape[1])
            same = (fed[:, :width] == new_tokens[:, :width].cpu()) & (torch.arange(width) < (num_new.cpu() - 1)[:, None])
            kept = torch.cumprod(same.long(), dim=1).sum(dim=1)
            self.cache.keep_last((torch.arange(fed.shape[1])[None, :] < kept[:, None]).to(self.device))
            self.cache.trim()
            self.fed = []
        self.queue = [q + new[b][int(kept[b]) : int(num_new[b])] for b, q in enumerate(self.queue)]

    def drop(self, keep: torch.Tensor) -> None:
        self.cache.select_rows(keep.to(self.device))
        self.queue = [self.queue[i] for i in keep.tolist()]

    def describe(self) -> list:
        return [self.kind, sum(p.numel() for p in self.model.parameters()), self.vocab_size]

    def forward_timer(self, batch: int, context: int):
        gen = torch.Generator().manual_seed(0)
        cache = RaggedCache(batch, self.device)
        ids = torch.randint(100, self.vocab_size, (batch, context + 1), generator=gen).to(self.device)
        ones = torch.ones_like(ids, dtype=torch.bool)
        with torch.inference_mode():
            self.model(**cache.model_inputs(ids[:, :-1], ones[:, :-1]), logits_to_keep=1)
        drop = torch.zeros(batch, 1, dtype=torch.bool, device=self.device)

        @torch.inference_mode()
        def run() -> None:
            self._forward(cache, ids[:, -1:], ones[:, -1:])
            cache.keep_last(drop)
            cache.trim()

        return run


def draft_lm_config(target_config, num_layers: int):
    """The target's config with ``num_layers`` layers and tied embeddings: the draft LM's shape."""
    config = target_config.__class__.from_dict(target_config.to_dict())
    config.num_hidden_layers = num_layers
    if getattr(config, "layer_types", None):
        config.layer_types = config.layer_types[:num_layers]
    config.tie_word_embeddings = True
    return config


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
