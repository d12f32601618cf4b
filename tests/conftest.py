"""Shared fixtures: tiny models built from configs (fast), and the real embedded tokenizer (offline)."""

from __future__ import annotations

import atexit
import gc
import os
import shutil
import tempfile
from pathlib import Path

# The suite leaves nothing in the user's home: Ray writes ~/.ray (an auth token that turns token authentication on
# for every later `ray job submit`), speckv and Hugging Face write ~/.cache. All of it goes to a temporary home,
# set before anything imports Ray; caches a caller points elsewhere on purpose (SPECKV_CACHE, HF_HOME: CI's fresh
# directories, or a developer's reused test cache) are kept.
_HOME = tempfile.mkdtemp(prefix="speckv-test-home-")
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)
os.environ["HOME"] = _HOME
for _var, _sub in (("SPECKV_CACHE", "speckv"), ("HF_HOME", "hf"), ("XDG_CACHE_HOME", "")):
    os.environ.setdefault(_var, os.path.join(_HOME, ".cache", _sub))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402 — after the environment above
import torch  # noqa: E402
# tiny models gain nothing from threads, and tests share 2 cores with Ray workers: spinning OpenMP threads that
# wait on each other cost far more than they give
torch.set_num_threads(1)


def chi2_stat(observed: torch.Tensor, expected_probs: torch.Tensor) -> tuple[float, int]:
    """Pearson χ² and its degrees of freedom; cells with tiny expectation are pooled so the approximation holds."""
    n = observed.sum()
    expected = expected_probs * n
    big = expected >= 5
    obs = torch.cat([observed[big], observed[~big].sum()[None]])
    exp = torch.cat([expected[big], expected[~big].sum()[None]])
    keep = exp > 0
    obs, exp = obs[keep].double(), exp[keep].double()
    return float(((obs - exp) ** 2 / exp).sum()), len(obs) - 1


def chi2_pvalue(observed: torch.Tensor, expected_probs: torch.Tensor) -> float:
    """The goodness-of-fit p-value of ``observed`` counts against ``expected_probs``."""
    stat, dof = chi2_stat(observed.flatten(), expected_probs.flatten())
    return float(torch.special.gammaincc(torch.tensor(dof / 2.0), torch.tensor(stat / 2.0)))


class DigitTokenizer:
    """A tokenizer for a 12-token vocabulary: prompts are digit strings (tests that need a small V)."""

    eos_token_id = None
    chat_template = None

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [int(c) for c in text]}

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


def tiny_llama(seed: int, layers: int = 2, vocab: int = 49152, hidden: int = 64):
    """A random LlamaForCausalLM small enough for CPU tests; large init so logits are far from ties."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      tie_word_embeddings=True, initializer_range=0.2, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    return LlamaForCausalLM(cfg).eval()


def related_draft(target, seed: int = 1, noise: float = 0.0):
    """A 1-layer draft sharing the target's embeddings and first layer: partial agreement, like a real draft."""
    draft = tiny_llama(seed, layers=1, vocab=target.config.vocab_size, hidden=target.config.hidden_size)
    draft.model.embed_tokens.weight.data.copy_(target.model.embed_tokens.weight.data)
    draft.model.layers[0].load_state_dict(target.model.layers[0].state_dict())
    draft.model.norm.load_state_dict(target.model.norm.state_dict())
    if noise:
        with torch.no_grad():
            for p in draft.model.layers[0].parameters():
                p.add_(noise * torch.randn_like(p))
    return draft


@pytest.fixture(scope="session")
def tokenizer():
    from speckv.models import load_tokenizer

    return load_tokenizer("embedded")


@pytest.fixture(scope="session")
def tiny_pair_dirs(tmp_path_factory, tokenizer) -> tuple[Path, Path]:
    """A tiny random target and a related tiny draft saved as ordinary HF checkpoints with the real tokenizer."""
    root = tmp_path_factory.mktemp("tiny_pair")
    target = tiny_llama(0)
    draft = related_draft(target)
    for name, model in (("target", target), ("draft", draft)):
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return root / "target", root / "draft"


@pytest.fixture(scope="session")
def confident_policy(tmp_path_factory) -> str:
    """Learned-policy weights whose acceptance model says "the target will accept" (P ≈ 0.98 everywhere): with cheap
    costs the learned rule then verifies wide, so a parity test of ``learned`` is a test of speculative steps (the
    tiny random drafts' own probabilities are far too flat for the rule to verify anything)."""
    from speckv.policies.learned.model import AcceptanceMLP, AcceptanceModel

    mlp = AcceptanceMLP()
    with torch.no_grad():
        for layer in mlp.net:
            if isinstance(layer, torch.nn.Linear):
                layer.weight.zero_()
                layer.bias.zero_()
        mlp.net[-1].bias.fill_(4.0)
    path = tmp_path_factory.mktemp("policy") / "confident.safetensors"
    AcceptanceModel(mlp).save(path, {"hidden": mlp.net[0].out_features})
    return str(path)


@pytest.fixture(autouse=True)
def _unfreeze_heap():
    """Each SpecEngine freezes the heap it starts with (speckv/engine.py); a test process builds many engines, so
    give what a test leaves behind back to the collector."""
    yield
    gc.unfreeze()
