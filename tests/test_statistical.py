"""Statistical tier: sampled speculative output has the target's own distribution (χ² over seeded draws)."""

from __future__ import annotations

import itertools

import pytest
import torch

from speckv.config import EngineConfig, GenerationRequest, PolicySpec, SamplingParams
from speckv.drafters.draft_lm import DraftLM
from speckv.engine import SpecEngine
from speckv.verify import to_probs, verify
from tests.conftest import related_draft, tiny_llama


def chi2_pvalue(observed: torch.Tensor, expected_probs: torch.Tensor) -> float:
    """Pearson χ² goodness of fit; cells with tiny expectation are pooled so the approximation holds."""
    n = observed.sum()
    expected = expected_probs * n
    big = expected >= 5
    obs = torch.cat([observed[big], observed[~big].sum()[None]])
    exp = torch.cat([expected[big], expected[~big].sum()[None]])
    keep = exp > 0
    obs, exp = obs[keep].double(), exp[keep].double()
    stat = ((obs - exp) ** 2 / exp).sum()
    dof = len(obs) - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2.0), stat / 2))


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


class DigitTokenizer:
    """A tokenizer for a 12-token vocabulary: prompts are digit strings (the statistical test needs a small V)."""

    eos_token_id = None
    chat_template = None

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [int(c) for c in text]}

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


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


@pytest.mark.parametrize("setting,draft_vocab", [(s, 12) for s in SETTINGS] + [("temperature", 8)])
def test_engine_samples_match_target_distribution(small_vocab_pair, setting, draft_vocab):
    """``draft_vocab`` 8: the draft's logits cover ids 0..7 only (as a head over the most frequent tokens does), so
    ids 8..11 reach the output only through the recovered and bonus tokens."""
    target, draft = small_vocab_pair
    params = SETTINGS[setting]
    prompt = [3, 1, 4, 1, 5]
    config = EngineConfig(policy=PolicySpec(name="fixed", gamma=2), max_batch_size=256)
    engine = SpecEngine(config, target=target, tokenizer=DigitTokenizer(),
                        drafter=DraftLM(draft, torch.device("cpu"), draft_vocab), device=torch.device("cpu"))
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
    assert chi2_pvalue(observed, torch.tensor([exact[c] for c in cells])) > 1e-3


def test_seeded_sampling_is_deterministic_and_batch_independent(small_vocab_pair):
    target, draft = small_vocab_pair
    # heuristic: rows draft different γ in the same step, so the batch's widths differ from the row's own
    config = EngineConfig(policy=PolicySpec(name="heuristic", gamma=2, gamma_max=6), max_batch_size=8)
    engine = SpecEngine(config, target=target, tokenizer=DigitTokenizer(),
                        drafter=DraftLM(draft, torch.device("cpu"), 12), device=torch.device("cpu"))
    params = SamplingParams(max_new_tokens=12, temperature=1.0, seed=7, ignore_eos=True)
    alone = engine.generate([GenerationRequest(id="a", prompt="2718", raw_prompt=True, sampling=params)])
    mixed = engine.generate([GenerationRequest(id=str(i), prompt="9" * (i + 1), raw_prompt=True,
                                               sampling=params.model_copy(update={"seed": 100 + i}))
                             for i in range(5)] + [GenerationRequest(id="a", prompt="2718", raw_prompt=True,
                                                                     sampling=params)])
    assert alone[0].token_ids == mixed[-1].token_ids
