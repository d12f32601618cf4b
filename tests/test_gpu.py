"""CUDA path: skipped without a GPU (CI has none); run by bench/gpu_check.sh when a GPU machine is lent."""

from __future__ import annotations

import pytest
import torch

from speckv.config import EngineConfig, GenerationRequest, ModelSpec, PolicySpec, SamplingParams
from speckv.drafters.draft_lm import DraftLM
from speckv.engine import SpecEngine
from tests.conftest import related_draft, tiny_llama

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
CUDA = torch.device("cuda")


def test_greedy_parity_on_cuda(tokenizer):
    target = tiny_llama(0).to(CUDA)
    draft = related_draft(tiny_llama(0)).to(CUDA)
    config = EngineConfig(policy=PolicySpec(name="learned", gamma_max=6), max_batch_size=4)
    engine = SpecEngine(config, target=target, tokenizer=tokenizer, drafter=DraftLM(draft, CUDA, 49152), device=CUDA)
    prompts = ["Hello", "Write a poem about GPUs", "1 2 3 4"]
    reqs = [GenerationRequest(id=str(i), prompt=p, sampling=SamplingParams(max_new_tokens=24, ignore_eos=True))
            for i, p in enumerate(prompts)]
    for res, req in zip(engine.generate(reqs), reqs):
        ids = torch.tensor([engine.prepare(req).prompt_ids], device=CUDA)
        ref = target.generate(ids, max_new_tokens=24, min_new_tokens=24, do_sample=False)[0, ids.shape[1]:]
        assert res.token_ids == ref.tolist()
        assert all(s["device"] == "cuda" for s in res.steps)


@pytest.mark.parametrize("quantization", ["none", "int8", "nf4"])
def test_embedded_pair_runs_on_cuda(quantization):
    spec = ModelSpec(dtype="fp16", quantization=quantization, device="cuda")
    engine = SpecEngine(EngineConfig(target=spec, policy=PolicySpec(name="fixed", gamma=4)))
    res = engine.generate([GenerationRequest(id="a", prompt="Write a function that adds two numbers.",
                                             sampling=SamplingParams(max_new_tokens=32))])[0]
    assert res.status == "ok" and (len(res.token_ids) == 32 or res.finish_reason == "stop")
    assert {s["device"] for s in res.steps} == {"cuda"}
    # the shipped head is a real draft on CUDA too: the target keeps a good share of what it drafts
    assert res.summary["num_draft_tokens"] > 0 and res.summary["draft_acceptance_rate"] > 0.2
