"""Statistical tier: sampled speculative output has the target's own distribution (χ² over seeded draws)."""

from __future__ import annotations

import itertools

import pytest
import torch

from speckv.config import EngineConfig, GenerationRequest, PolicySpec, SamplingParams
from speckv.drafters import Drafters
from speckv.drafters.draft_lm import DraftLM
from speckv.drafters.eagle import EagleDrafter, EagleHead, head_config
from speckv.drafters.lookup import LookupDrafter
from speckv.engine import SpecEngine
from speckv.verify import to_probs, verify
from tests.conftest import DigitTokenizer, chi2_pvalue, related_draft, tiny_llama


def test_verify_alone_reproduces_p_for_random_distributions():
    """Rule-level check over many rows at once: first emitted token ~ p[0] whatever q is."""
    gen = torch.Generator().manual_seed(0)
    rows, v, k = 40000, 5, 3
    p_single = torch.softmax(torch.randn(k + 1, v, generator=gen) * 1.5, -1)
    q_single = torch.softmax(torch.randn(k, v, generator=gen) * 1.5, -1)
    p = p_single.expand(rows, k + 1, v)
    q = q_single.expand(rows, k, v)
    draft = torch.stack([torch.multinomial(q_single[i], rows, replacement=True, generator=gen) for i in range(k)], 1)
    num_accepted, nxt, _ = verify(draft, torch.full((rows,), k), q, p, torch.rand(rows, k + 1, generator=gen))
    first = torch.where(num_accepted > 0, draft[:, 0], nxt)
    observed = torch.bincount(first, minlength=v)
    assert chi2_pvalue(observed, p_single[0]) > 1e-3


SETTINGS = {
    "temperature": SamplingParams(max_new_tokens=3, temperature=1.3, ignore_eos=True),
    "top_k": SamplingParams(max_new_tokens=3, temperature=1.0, top_k=4, ignore_eos=True),
    "top_p": SamplingParams(max_new_tokens=3, temperature=1.0, top_p=0.9, ignore_eos=True),
}


@pytest.fixture(scope="module")
def small_vocab_pair():
    target = tiny_llama(3, vocab=12, hidden=32)
    draft = related_draft(target, noise=0.3)
    return target, draft


def exact_joint(target, prompt: list[int], params: SamplingParams, positions: int) -> dict[tuple, float]:
    """P(t_1 … t_n) under the target alone with the request's processing, enumerated in one batched forward."""
    vocab = target.config.vocab_size
    prefixes = list(itertools.product(range(vocab), repeat=positions - 1))
    with torch.no_grad():
        logits = target(torch.tensor([prompt + list(pre) for pre in prefixes])).logits[:, len(prompt) - 1 :]
    n = len(prefixes)
    probs = to_probs(logits, torch.full((n,), params.temperature), torch.full((n,), params.top_k),
                     torch.full((n,), params.top_p))  # [n, positions, V]
    out = {}
    for i, pre in enumerate(prefixes):
        head = float(torch.prod(probs[i, torch.arange(positions - 1), torch.tensor(pre, dtype=torch.long)]))
        for last in range(vocab):
            out[pre + (last,)] = head * float(probs[i, positions - 1, last])
    return out


def small_drafter(kind: str, target, draft, draft_vocab: int):
    cpu = torch.device("cpu")
    if kind == "lm":
        return DraftLM(draft, cpu, draft_vocab)
    torch.manual_seed(1)
    head = EagleDrafter(EagleHead(head_config(target.config)).eval(), target, cpu)
    return Drafters([head, LookupDrafter(min_n=1, max_n=2)])  # a tree of point masses, plus lookup branches


@pytest.mark.parametrize("setting,draft_vocab,drafter", [(s, 12, "lm") for s in SETTINGS] + [("temperature", 8, "lm")]
                         + [(s, 12, "tree") for s in SETTINGS])
def test_engine_samples_match_target_distribution(small_vocab_pair, setting, draft_vocab, drafter):
    """``draft_vocab`` 8: the draft's logits cover ids 0..7 only (as a head over the most frequent tokens does), so
    ids 8..11 reach the output only through the recovered and bonus tokens. ``tree``: the EAGLE head's trees (two
    children per node, deterministic: point masses) with prompt-lookup branches, verified by multi-candidate
    recursive rejection sampling."""
    target, draft = small_vocab_pair
    params = SETTINGS[setting]
    prompt = [3, 1, 4, 1, 5]
    policy = PolicySpec(name="fixed", gamma=2) if drafter == "lm" else \
        PolicySpec(name="fixed", gamma=5, tree_depth=2, tree_topk=2)
    engine = SpecEngine(EngineConfig(policy=policy, max_batch_size=256), target=target, tokenizer=DigitTokenizer(),
                        drafter=small_drafter(drafter, target, draft, draft_vocab), device=torch.device("cpu"))
    n = 3000
    requests = [GenerationRequest(id=str(i), prompt="31415", raw_prompt=True,
                                  sampling=params.model_copy(update={"seed": i})) for i in range(n)]
    results = engine.generate(requests)
    assert all(r.status == "ok" and len(r.token_ids) == 3 for r in results)
    # tokens 2 and 3 come from speculative steps; test the joint law of the three generated tokens
    exact = exact_joint(target, prompt, params, 3)
    cells = list(exact)
    index = {c: i for i, c in enumerate(cells)}
    observed = torch.zeros(len(cells))
    for r in results:
        observed[index[tuple(r.token_ids)]] += 1
    drafted = sum(r.summary["num_draft_tokens"] for r in results)
    accepted = sum(r.summary["num_accepted_tokens"] for r in results)
    assert drafted > 0 and 0 < accepted < drafted  # both paths (accept and recover) were exercised
    if drafter == "tree":  # later siblings and lookup nodes were accepted too, not only first children
        nodes = [(a, rank, src) for r in results for st in r.steps
                 for a, rank, src in zip(st["draft_accept"], st["node_rank"], st["node_source"])]
        assert any(a and rank > 0 for a, rank, _ in nodes) and any(src == 1 for _, _, src in nodes)
    assert chi2_pvalue(observed, torch.tensor([exact[c] for c in cells])) > 1e-3


@pytest.mark.parametrize("drafter", ["lm", "tree"])
def test_seeded_sampling_is_deterministic_and_batch_independent(small_vocab_pair, drafter):
    """A seeded request's tokens do not change with its batch-mates or with when it joins the running batch.
    heuristic: rows draft different γ in the same step, so the batch's widths differ from the row's own; the tree:
    rows' trees and lookup branches differ. (The learned policy's budget depends on the batch by design — the widest
    row sets the step's time — so its seeded samples keep the target's law but not these exact tokens.)"""
    target, draft = small_vocab_pair
    policy = PolicySpec(name="heuristic", gamma=2, gamma_max=6) if drafter == "lm" else \
        PolicySpec(name="fixed", gamma=5, tree_depth=2, tree_topk=2)
    engine = SpecEngine(EngineConfig(policy=policy, max_batch_size=3), target=target, tokenizer=DigitTokenizer(),
                        drafter=small_drafter(drafter, target, draft, 12), device=torch.device("cpu"))
    params = SamplingParams(max_new_tokens=12, temperature=1.0, seed=7, ignore_eos=True)
    mine = GenerationRequest(id="a", prompt="2718", raw_prompt=True, sampling=params)
    alone = engine.generate([mine])
    mates = [GenerationRequest(id=str(i), prompt="9" * (i + 1), raw_prompt=True,
                               sampling=params.model_copy(update={"seed": 100 + i, "max_new_tokens": 3 + 2 * i}))
             for i in range(5)]
    mixed = engine.generate(mates + [mine])  # joins a running batch of 3 once two of them have finished
    assert alone[0].token_ids == mixed[-1].token_ids
    other_seed = engine.generate([mine.model_copy(update={"sampling": params.model_copy(update={"seed": 8})})])
    assert other_seed[0].token_ids != alone[0].token_ids  # the seed is used: sampling is not being ignored
