"""End-to-end tier: greedy output equals the target decoding alone, token for token — for every policy, chains,
trees and lookup, whatever joins or leaves the running batch — and the tests check that speculation happened."""

from __future__ import annotations

import random

import pytest
import torch

from speckv.config import POLICY_NAMES, EngineConfig, GenerationRequest, PolicySpec, SamplingParams
from speckv.costs import CostModel
from speckv.drafters import Drafters
from speckv.drafters.draft_lm import DraftLM
from speckv.drafters.eagle import EagleDrafter, EagleHead, head_config
from speckv.drafters.lookup import LookupDrafter
from speckv.engine import RequestError, SpecEngine
from speckv.kvcache import RaggedCache
from speckv.models import ModelLoadError, check_same_tokenizer
from speckv.policies.base import StaticPolicy
from speckv.proposal import Plan
from tests.conftest import DigitTokenizer, related_draft, tiny_llama

PROMPTS = [
    "Hi",
    "Write a short poem about the sea, its tides and the creatures that live in it.",
    "What is 17 * 23?",
    "def fibonacci(n):",
    "Tell me a story about a robot learning to paint, in three sentences.",
]
CPU = torch.device("cpu")
#: costs under which drafting clearly pays (a verify of 33 tokens costs what one does; a draft forward is cheap), so
#: that a learned-policy parity test is a test of speculative steps, not of plain decoding
CHEAP_VERIFY = CostModel([1, 16], [1, 33], [[40.0, 40.0], [60.0, 60.0]], [1.0, 1.5])


@pytest.fixture(scope="module")
def models():
    target = tiny_llama(0)
    return target, related_draft(target), related_draft(target, noise=0.05)


@pytest.fixture(scope="module")
def head(models):
    torch.manual_seed(1)
    return EagleHead(head_config(models[0].config)).eval()


def drafter_for(kind: str, models, head):
    target, draft, _ = models
    if kind == "lm":
        return DraftLM(draft, CPU, target.config.vocab_size)
    if kind == "eagle":
        return EagleDrafter(head, target, CPU)
    if kind == "lookup":
        return LookupDrafter()
    return Drafters([EagleDrafter(head, target, CPU), LookupDrafter()])  # eagle+lookup


def make_engine(models, tokenizer, policy="fixed", batch=8, drafter="lm", head=None, **policy_kwargs):
    spec = PolicySpec(name=policy, gamma=policy_kwargs.pop("gamma", 3), gamma_max=6, **policy_kwargs)
    return SpecEngine(EngineConfig(policy=spec, max_batch_size=batch), target=models[0], tokenizer=tokenizer,
                      drafter=drafter_for(drafter, models, head), device=CPU, costs=CHEAP_VERIFY)


def reference(engine, target, prompt: str, n: int) -> list[int]:
    ids = engine.prepare(GenerationRequest(id="ref", prompt=prompt)).prompt_ids
    out = target.generate(torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[0, len(ids) :].tolist()


def requests(n_tokens: int, prompts=PROMPTS) -> list[GenerationRequest]:
    return [GenerationRequest(id=str(i), prompt=p, sampling=SamplingParams(max_new_tokens=n_tokens, ignore_eos=True))
            for i, p in enumerate(prompts)]


@pytest.fixture(scope="module")
def references(models, tokenizer):
    engine = make_engine(models, tokenizer, "ar")
    return {p: reference(engine, models[0], p, 24) for p in PROMPTS}


def loose_settings(policy: str, confident_policy: str) -> dict:
    """The tiny random draft is unsure everywhere: thresholds it passes, and a selector that trusts it, so that
    every policy but ar speculates."""
    return {"confidence": {"confidence_threshold": 1e-3}, "entropy": {"entropy_threshold": 50.0},
            "learned": {"path": confident_policy, "tree_topk": 2}}.get(policy, {})


@pytest.mark.parametrize("policy", POLICY_NAMES)
@pytest.mark.parametrize("batch", [1, 5])
def test_greedy_parity_every_policy(models, tokenizer, references, confident_policy, policy, batch):
    engine = make_engine(models, tokenizer, policy, batch=batch, **loose_settings(policy, confident_policy))
    results = engine.generate(requests(24))
    for result, prompt in zip(results, PROMPTS):
        assert result.status == "ok", result.error
        assert result.token_ids == references[prompt], (policy, prompt)
    drafted = sum(r.summary["num_draft_tokens"] for r in results)
    assert (drafted == 0) == (policy == "ar"), (policy, drafted)  # every other policy speculated


@pytest.mark.parametrize("drafter,policy", [("eagle", {"gamma": 6, "tree_depth": 3, "tree_topk": 3}),
                                            ("eagle", {"gamma": 4}),
                                            ("eagle+lookup", {"gamma": 8, "tree_depth": 3, "tree_topk": 2}),
                                            ("eagle+lookup", {"name": "learned", "tree_topk": 2})])
@pytest.mark.parametrize("batch", [1, 4])
def test_greedy_parity_trees_and_lookup(models, head, tokenizer, references, confident_policy, drafter, policy,
                                        batch):
    policy = dict(policy)
    learned = policy.get("name") == "learned"
    if learned:
        policy["path"] = confident_policy
    engine = make_engine(models, tokenizer, policy.pop("name", "fixed"), batch=batch, drafter=drafter, head=head,
                         **policy)
    prompts = PROMPTS + ["one two three one two three one two three one two"]  # a repetitive one: lookup finds it
    results = engine.generate(requests(24, prompts))
    refs = {**references, prompts[-1]: reference(engine, models[0], prompts[-1], 24)}
    for result, prompt in zip(results, prompts):
        assert result.token_ids == refs[prompt], (drafter, policy, prompt)
    steps = [s for r in results for s in r.steps]
    assert sum(s["num_draft_tokens"] for s in steps) > 0
    if policy.get("tree_topk", 1) > 1 and not learned:  # trees did branch: a node's parent had another child
        # (the learned gate sees this tiny draft's acceptance and drafts little more than its probes)
        assert any(len(s["node_parent"]) > len(set(s["node_parent"])) for s in steps)
        assert any(max(s["draft_widths"], default=0) > 1 for s in steps)  # ... and a forward fed several a row
    assert all(len(s["draft_widths"]) == s["draft_forwards"] for s in steps)
    assert {s["drafter"] for s in steps} == {drafter}


@pytest.mark.parametrize("drafter", ["lookup", "eagle+lookup"])
@pytest.mark.parametrize("batch", [1, 3])
def test_greedy_parity_with_lookup(drafter, batch):
    """A 12-token target falls into cycles, which prompt lookup finds in its own output: lookup nodes are verified,
    accepted, and the output stays the target's own."""
    target = tiny_llama(3, vocab=12, hidden=32)
    torch.manual_seed(1)
    head = EagleHead(head_config(target.config)).eval()
    parts = [LookupDrafter()] if drafter == "lookup" else [EagleDrafter(head, target, CPU), LookupDrafter()]
    engine = SpecEngine(EngineConfig(policy=PolicySpec(name="fixed", gamma=6), max_batch_size=batch), target=target,
                        tokenizer=DigitTokenizer(), drafter=parts[0] if len(parts) == 1 else Drafters(parts), device=CPU)
    prompts = ["31415926", "2718281828", "11235813", "9876543210"]
    results = engine.generate([GenerationRequest(id=str(i), prompt=p, raw_prompt=True,
                                                 sampling=SamplingParams(max_new_tokens=40, ignore_eos=True))
                               for i, p in enumerate(prompts)])
    for result, prompt in zip(results, prompts):
        ids = [int(c) for c in prompt]
        ref = target.generate(torch.tensor([ids]), max_new_tokens=40, min_new_tokens=40, do_sample=False)[0, len(ids):]
        assert result.token_ids == ref.tolist()
    steps = [s for r in results for s in r.steps]
    lookup_nodes = [(a, src) for s in steps for a, src in zip(s["draft_accept"], s["node_source"]) if src == 1]
    assert lookup_nodes and any(a for a, _ in lookup_nodes)  # lookup proposed, and the target kept some of it


def test_parity_under_churn(models, head, tokenizer, references, confident_policy):
    """Requests join and leave a running batch at random steps (and one is aborted); every output stays the
    target's own, for each policy, whatever its batch-mates and admission time."""
    rng = random.Random(0)
    for policy in POLICY_NAMES:
        engine = make_engine(models, tokenizer, policy, batch=3, drafter="eagle+lookup", head=head,
                             **loose_settings(policy, confident_policy))
        pending = [GenerationRequest(id=f"{policy}{i}", prompt=PROMPTS[i % len(PROMPTS)],
                                     sampling=SamplingParams(max_new_tokens=rng.randint(4, 24), ignore_eos=True))
                   for i in range(9)]
        results, batch_sizes = {}, set()
        engine.add_request(GenerationRequest(id="gone", prompt=PROMPTS[1],
                                             sampling=SamplingParams(max_new_tokens=24, ignore_eos=True)))
        while pending or engine.has_unfinished():
            if pending and rng.random() < 0.4:
                engine.add_request(pending.pop(0))
            for delta in engine.step():
                if delta.finished:
                    results[delta.request_id] = delta.result
            batch_sizes.add(engine.num_running)
            if "gone" not in results and engine.batch_steps == 3:
                engine.abort("gone")
        assert results.pop("gone").finish_reason == "abort"
        assert len(results) == 9 and len(batch_sizes) > 1
        for rid, result in results.items():
            n = len(result.token_ids)
            assert result.token_ids == references[PROMPTS[int(rid[len(policy):]) % len(PROMPTS)]][:n], (policy, rid)
        drafted = sum(r.summary["num_draft_tokens"] for r in results.values())
        assert (drafted == 0) == (policy == "ar"), (policy, drafted)


@pytest.mark.parametrize("lengths, wait, prefills", [([4, 6, 8, 8], 0, [2, 1, 1]), ([4, 6, 8, 8], 4, [2, 2]),
                                                     ([4, 6, 8], 4, [2, 1])])
def test_a_free_slot_waits_for_a_row_due_to_finish_so_their_successors_prefill_together(
        models, tokenizer, references, lengths, wait, prefills):
    """When row 0 finishes, row 1 is 2 tokens from its end: with admit_wait=4, and more requests waiting than the
    slot fits, the slot waits for it and both successors prefill in one forward; with one waiting it does not wait.
    The outputs are the target's either way."""
    engine = make_engine(models, tokenizer, "ar", batch=2)
    engine.config = engine.config.model_copy(update={"admit_wait": wait})
    seen, prefill = [], engine._prefill
    engine._prefill = lambda rows: seen.append(len(rows)) or prefill(rows)
    reqs = [GenerationRequest(id=str(i), prompt=PROMPTS[i], sampling=SamplingParams(max_new_tokens=n, ignore_eos=True))
            for i, n in enumerate(lengths)]
    results = engine.generate(reqs)
    assert seen == prefills
    assert [r.token_ids for r in results] == [references[PROMPTS[i]][:n] for i, n in enumerate(lengths)]


def test_identical_draft_accepts_everything_with_bonus(models, tokenizer):
    target = models[0]
    engine = SpecEngine(EngineConfig(policy=PolicySpec(name="fixed", gamma=4)), target=target, tokenizer=tokenizer,
                        drafter=DraftLM(target, CPU, target.config.vocab_size), device=CPU)
    results = engine.generate(requests(21, PROMPTS[:3]))
    for result, prompt in zip(results, PROMPTS):
        assert result.token_ids == reference(engine, target, prompt, 21)
        # 1 token from the prefill, then 4 accepted + 1 bonus per step
        assert result.summary["num_spec_steps"] == 4
        assert result.summary["mean_acceptance_length"] == 5.0
        assert result.summary["draft_acceptance_rate"] == 1.0


class Alternating(StaticPolicy):
    """A chain of 5 on odd steps, plain decoding on even ones, for every row: drafter state must survive plain
    steps."""

    name = "alternating"

    def init_rows(self, n):
        return {"step": torch.zeros(n, dtype=torch.long)}

    def plan(self, ctx):
        nodes = torch.where(ctx.state["step"] % 2 == 0, 0, 5)
        return Plan(nodes=nodes, depth=int(nodes.max()))

    def observe(self, ctx, proposal, num_accepted):
        ctx.state["step"] = ctx.state["step"] + 1


@pytest.mark.parametrize("draft_index", [0, 1])  # the identical draft shows acceptance survives plain steps
def test_parity_across_alternating_plain_steps(models, tokenizer, references, draft_index):
    target = models[0]
    draft = target if draft_index == 0 else models[1]
    engine = SpecEngine(EngineConfig(policy=PolicySpec(name="fixed", gamma=5), max_batch_size=5), target=target,
                        tokenizer=tokenizer, drafter=DraftLM(draft, CPU, target.config.vocab_size),
                        policy=Alternating(), device=CPU)
    results = engine.generate(requests(24))
    for result, prompt in zip(results, PROMPTS):
        assert result.token_ids == references[prompt]
        steps = result.steps
        assert [s["num_draft_tokens"] == 0 for s in steps[:4]] == [True, False, True, False]
        if draft_index == 0:
            assert all(s["num_accepted_tokens"] == s["num_draft_tokens"] for s in steps)


def test_rows_finish_independently_and_errors_stay_per_row(models, tokenizer, references):
    engine = make_engine(models, tokenizer, "fixed", batch=4)
    engine.max_context = 60
    reqs = [GenerationRequest(id="short", prompt=PROMPTS[0], sampling=SamplingParams(max_new_tokens=3, ignore_eos=True)),
            GenerationRequest(id="long", prompt=PROMPTS[2], sampling=SamplingParams(max_new_tokens=20, ignore_eos=True)),
            GenerationRequest(id="too-long", prompt="word " * 200),
            GenerationRequest(id="one", prompt=PROMPTS[3], sampling=SamplingParams(max_new_tokens=1, ignore_eos=True))]
    res = {r.id: r for r in engine.generate(reqs)}
    assert res["too-long"].status == "error" and "context" in res["too-long"].error
    assert len(res["short"].token_ids) == 3 and res["short"].finish_reason == "length"
    assert len(res["one"].token_ids) == 1 and res["one"].summary["num_spec_steps"] == 0
    assert res["long"].token_ids == references[PROMPTS[2]][:20]
    with pytest.raises(RequestError, match="context"):
        engine.add_request(reqs[2])


def test_eos_and_stop_strings_cut_output(models, tokenizer, references):
    engine = make_engine(models, tokenizer, "fixed")
    ref = references[PROMPTS[1]][:20]
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
    assert tokenizer.decode(result.token_ids, skip_special_tokens=True).startswith(result.text)


def test_deltas_stream_the_text_as_it_is_committed(models, tokenizer, references):
    """Each step's delta carries that step's tokens and text; the pieces join to the finished text, and a stop
    string never reaches the stream, not even its first characters."""
    engine = make_engine(models, tokenizer, "fixed")
    text = tokenizer.decode(references[PROMPTS[4]][:24], skip_special_tokens=True)
    stop = text[len(text) * 2 // 3 : len(text) * 2 // 3 + 4]
    for stops in ([], [stop]):
        engine.add_request(GenerationRequest(id="r", prompt=PROMPTS[4],
                                             sampling=SamplingParams(max_new_tokens=24, ignore_eos=True, stop=stops)))
        deltas = []
        while engine.has_unfinished():
            deltas += engine.step()
        final = deltas[-1].result
        assert sum(1 for d in deltas if d.token_ids) > 2  # streamed over several steps, not replayed at the end
        assert "".join(d.text for d in deltas) == final.text
        assert [t for d in deltas for t in d.token_ids] == final.token_ids
        if stops:
            assert final.finish_reason == "stop" and stop[0] not in final.text[len(final.text) - 1 :]
            assert all(stop not in "".join(d.text for d in deltas[: i + 1]) for i in range(len(deltas)))


def test_ragged_cache_compaction_and_joins_preserve_logits(models):
    target = models[0]
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 1000, (3, 12), generator=gen)
    valid = torch.ones_like(ids, dtype=torch.bool)
    valid[0, 8:] = False
    a, b = RaggedCache(3, CPU), RaggedCache(2, CPU)
    with torch.no_grad():
        target(**a.model_inputs(ids, valid))
        target(**a.model_inputs(ids[:, :4], torch.ones(3, 4, dtype=torch.bool)))
        a.keep_last(torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 0]], dtype=torch.bool))  # ragged: holes
        target(**b.model_inputs(ids[:2, :5], torch.ones(2, 5, dtype=torch.bool)))
        joined = RaggedCache(0, CPU)
        joined.extend(a)
        joined.extend(b)  # narrower rows join padded with holes
        nxt = torch.randint(0, 1000, (5, 2), generator=gen)
        ones = torch.ones(5, 2, dtype=torch.bool)
        before = target(**joined.model_inputs(nxt, ones)).logits
        joined.keep_last(torch.zeros(5, 2, dtype=torch.bool))
        joined.compact()
        after = target(**joined.model_inputs(nxt, ones)).logits
        alone = RaggedCache(1, CPU)
        target(**alone.model_inputs(ids[1:2, :5], torch.ones(1, 5, dtype=torch.bool)))
        solo = target(**alone.model_inputs(nxt[4:5], ones[:1])).logits
    torch.testing.assert_close(before, after, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(before[4:5], solo, rtol=1e-4, atol=1e-4)  # a joined row sees only its own tokens


def test_ragged_cache_crops_the_columns_of_rows_that_left(models):
    """Rows that join a batch sit left-padded to its width; once the older rows leave, trim crops the columns only
    they held, and every remaining row's logits stay the same."""
    target = models[0]
    gen = torch.Generator().manual_seed(1)
    older, newer = RaggedCache(1, CPU), RaggedCache(2, CPU)
    with torch.no_grad():
        for cache, width in ((older, 10), (newer, 3)):
            ids = torch.randint(0, 1000, (cache.batch_size, width), generator=gen)
            target(**cache.model_inputs(ids, torch.ones_like(ids, dtype=torch.bool)))
        joined = RaggedCache(0, CPU)
        joined.extend(older)
        joined.extend(newer)
        joined.select_rows(torch.tensor([1, 2]))  # the older row leaves: 7 all-hole columns on the left
        nxt, ones = torch.randint(0, 1000, (2, 2), generator=gen), torch.ones(2, 2, dtype=torch.bool)
        before = target(**joined.model_inputs(nxt, ones)).logits
        joined.keep_last(torch.zeros(2, 2, dtype=torch.bool))
        joined.trim()
        assert joined.valid.shape[1] == 3 and joined.lengths.tolist() == [3, 3]
        after = target(**joined.model_inputs(nxt, ones)).logits
    torch.testing.assert_close(before, after, rtol=1e-4, atol=1e-4)


def test_mismatched_tokenizers_are_refused(tokenizer):
    from tokenizers import Tokenizer
    from tokenizers import models as tok_models
    from transformers import PreTrainedTokenizerFast

    other = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(tok_models.WordLevel({"a": 0, "b": 1}, unk_token="a")))
    with pytest.raises(ModelLoadError, match="do not share a tokenizer.*49152"):
        check_same_tokenizer(tokenizer, other)
