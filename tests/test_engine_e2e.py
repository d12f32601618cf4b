"""End-to-end tier: greedy output of every policy equals the target decoding alone, token for token."""

from __future__ import annotations

import pytest
import torch

from speckv.config import POLICY_NAMES, EngineConfig, GenerationRequest, PolicySpec, SamplingParams
from speckv.drafters.draft_lm import DraftLM
from speckv.engine import SpecEngine
from speckv.kvcache import RaggedCache
from speckv.models import ModelLoadError, check_same_tokenizer
from speckv.policies.base import StaticPolicy
from tests.conftest import related_draft, tiny_llama

PROMPTS = [
    "Hi",
    "Write a short poem about the sea, its tides and the creatures that live in it.",
    "What is 17 * 23?",
    "def fibonacci(n):",
    "Tell me a story about a robot learning to paint, in three sentences.",
]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def models():
    target = tiny_llama(0)
    return target, related_draft(target), related_draft(target, noise=0.05)


def make_engine(target, draft, tokenizer, policy="fixed", batch=8, **policy_kwargs):
    spec = PolicySpec(name=policy, gamma=policy_kwargs.pop("gamma", 3), gamma_max=6, **policy_kwargs)
    return SpecEngine(EngineConfig(policy=spec, max_batch_size=batch), target=target, tokenizer=tokenizer,
                      drafter=DraftLM(draft, CPU, target.config.vocab_size), device=CPU)


def reference(engine, target, prompt: str, n: int) -> list[int]:
    ids = engine._encode(GenerationRequest(id="ref", prompt=prompt))
    out = target.generate(torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[0, len(ids) :].tolist()


def requests(n_tokens: int, prompts=PROMPTS) -> list[GenerationRequest]:
    return [GenerationRequest(id=str(i), prompt=p, sampling=SamplingParams(max_new_tokens=n_tokens, ignore_eos=True))
            for i, p in enumerate(prompts)]


@pytest.mark.parametrize("policy", POLICY_NAMES)
@pytest.mark.parametrize("batch", [1, 5])
def test_greedy_parity_every_policy(models, tokenizer, policy, batch):
    target, draft, _ = models
    engine = make_engine(target, draft, tokenizer, policy, batch=batch)
    results = engine.generate(requests(24))
    for result, prompt in zip(results, PROMPTS):
        assert result.status == "ok", result.error
        assert result.token_ids == reference(engine, target, prompt, 24), (policy, prompt)


def test_identical_draft_accepts_everything_with_bonus(models, tokenizer):
    target, _, _ = models
    engine = make_engine(target, target, tokenizer, "fixed", gamma=4)
    results = engine.generate(requests(21, PROMPTS[:3]))
    for result, prompt in zip(results, PROMPTS):
        assert result.token_ids == reference(engine, target, prompt, 21)
        # 1 token from the prefill, then 4 accepted + 1 bonus per step
        assert result.summary["num_spec_steps"] == 4
        assert result.summary["mean_acceptance_length"] == 5.0
        assert result.summary["draft_acceptance_rate"] == 1.0


class Alternating(StaticPolicy):
    """γ=0 on even steps, γ=5 on odd ones, for every row: drafter state must survive plain-decoding steps."""

    name = "alternating"

    def init_state(self, ctx):
        ctx.state["step"] = torch.zeros(ctx.batch_size, dtype=torch.long)

    def budget(self, ctx):
        return torch.where(ctx.state["step"] % 2 == 0, 0, 5)

    def observe(self, ctx, num_draft, num_accepted):
        ctx.state["step"] = ctx.state["step"] + 1


@pytest.mark.parametrize("draft_index", [0, 1])  # the identical draft shows acceptance survives γ=0 steps
def test_parity_across_alternating_gamma_zero_steps(models, tokenizer, draft_index):
    target = models[0]
    draft = target if draft_index == 0 else models[1]
    engine = SpecEngine(EngineConfig(policy=PolicySpec(name="fixed", gamma=5), max_batch_size=5), target=target,
                        tokenizer=tokenizer, drafter=DraftLM(draft, CPU, target.config.vocab_size),
                        policy=Alternating(), device=CPU)
    results = engine.generate(requests(30))
    for result, prompt in zip(results, PROMPTS):
        assert result.token_ids == reference(engine, target, prompt, 30)
        steps = result.steps
        assert [s["num_draft_tokens"] == 0 for s in steps[:4]] == [True, False, True, False]
        if draft_index == 0:
            assert all(s["num_accepted_tokens"] == s["num_draft_tokens"] for s in steps)


def test_rows_finish_independently_and_errors_stay_per_row(models, tokenizer):
    target, draft, _ = models
    engine = make_engine(target, draft, tokenizer, "fixed", batch=4)
    engine.max_context = 60
    reqs = [GenerationRequest(id="short", prompt=PROMPTS[0], sampling=SamplingParams(max_new_tokens=3, ignore_eos=True)),
            GenerationRequest(id="long", prompt=PROMPTS[2], sampling=SamplingParams(max_new_tokens=20, ignore_eos=True)),
            GenerationRequest(id="too-long", prompt="word " * 200),
            GenerationRequest(id="one", prompt=PROMPTS[3], sampling=SamplingParams(max_new_tokens=1, ignore_eos=True))]
    res = {r.id: r for r in engine.generate(reqs)}
    assert res["too-long"].status == "error" and "context" in res["too-long"].error
    assert len(res["short"].token_ids) == 3 and res["short"].finish_reason == "length"
    assert len(res["one"].token_ids) == 1 and res["one"].summary["num_spec_steps"] == 0
    assert res["long"].token_ids == reference(engine, target, PROMPTS[2], 20)


def test_eos_and_stop_strings_cut_output(models, tokenizer):
    target, draft, _ = models
    engine = make_engine(target, draft, tokenizer, "fixed")
    ref = reference(engine, target, PROMPTS[1], 20)
    engine.eos_ids = {ref[6]}
    cut = ref.index(ref[6]) + 1
    req = GenerationRequest(id="e", prompt=PROMPTS[1], sampling=SamplingParams(max_new_tokens=20))
    result = engine.generate([req])[0]
    assert result.token_ids == ref[:cut] and result.finish_reason == "stop"
    engine.eos_ids = set()
    text = tokenizer.decode(ref, skip_special_tokens=True)
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    req = GenerationRequest(id="s", prompt=PROMPTS[1], sampling=SamplingParams(max_new_tokens=20, stop=[stop]))
    result = engine.generate([req])[0]
    assert result.finish_reason == "stop" and stop not in result.text and text.startswith(result.text)


def test_ragged_cache_compaction_preserves_logits(models):
    target = models[0]
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 1000, (3, 12), generator=gen)
    valid = torch.ones_like(ids, dtype=torch.bool)
    valid[0, 8:] = False
    a, b = RaggedCache(3, CPU), RaggedCache(3, CPU)
    with torch.no_grad():
        for cache in (a, b):
            target(**cache.model_inputs(ids, valid))
            target(**cache.model_inputs(ids[:, :4], torch.ones(3, 4, dtype=torch.bool)))
            cache.keep_last(4, torch.tensor([1, 0, 3]))  # ragged rejection: holes
        b.compact()
        assert b.valid.shape[1] < a.valid.shape[1]
        nxt = torch.randint(0, 1000, (3, 2), generator=gen)
        ones = torch.ones(3, 2, dtype=torch.bool)
        la = target(**a.model_inputs(nxt, ones)).logits
        lb = target(**b.model_inputs(nxt, ones)).logits
    torch.testing.assert_close(la, lb, rtol=1e-4, atol=1e-4)


def test_mismatched_tokenizers_are_refused(tokenizer):
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models as tok_models

    other = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(tok_models.WordLevel({"a": 0, "b": 1}, unk_token="a")))
    with pytest.raises(ModelLoadError, match="do not share a tokenizer.*49152"):
        check_same_tokenizer(tokenizer, other)
