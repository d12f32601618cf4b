"""Exact tier for ``speckv distill --kind lm``: what ships for a low-rank draft LM assembles into the very model that
was trained, as an ordinary Hugging Face checkpoint."""

from __future__ import annotations

import json

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from speckv.distill.lora_lm import LowRankDelta, build_draft_lm, trained_state
from speckv.drafters.draft_lm import RECIPE_FILE, TRAINED_FILE, draft_lm_dir


def test_a_low_rank_draft_lm_ships_its_deltas_and_assembles_to_the_trained_model(tmp_path, monkeypatch,
                                                                                   tiny_pair_dirs):
    monkeypatch.setenv("SPECKV_CACHE", str(tmp_path / "cache"))
    target_dir, _ = tiny_pair_dirs
    target = AutoModelForCausalLM.from_pretrained(target_dir, dtype=torch.float32)
    draft = build_draft_lm(target, frozen=[0], trained=[1], lora_rank=4)
    trainable = [n for n, p in draft.named_parameters() if p.requires_grad]
    assert trainable and all(".parametrizations.weight.0." in n or "norm" in n for n in trainable)
    torch.manual_seed(0)
    with torch.no_grad():  # stand-in for training: move every trained tensor
        for module in draft.modules():
            if isinstance(module, LowRankDelta):
                module.B.normal_(std=0.05)
        for name, p in draft.named_parameters():
            if p.requires_grad and "norm" in name:
                p.mul_(1.25)

    state = trained_state(draft)
    # the trained layer ships as norms and rank-4 factors: no full weight matrix of its linear maps
    assert not any(k.endswith("proj.weight") for k in state)
    assert state["model.layers.1.self_attn.q_proj.lora_A"].shape == (4, target.config.hidden_size)
    asset = tmp_path / "asset"
    asset.mkdir()
    save_file({k: v.contiguous() for k, v in state.items()}, asset / TRAINED_FILE)
    (asset / RECIPE_FILE).write_text(json.dumps({"frozen": [0], "trained": [1], "lora_rank": 4}))

    assembled = AutoModelForCausalLM.from_pretrained(draft_lm_dir(asset, str(target_dir)), dtype=torch.float32)
    ids = torch.randint(100, 1000, (2, 12))
    with torch.no_grad():
        expected, got = draft(input_ids=ids).logits, assembled(input_ids=ids).logits
    assert not torch.allclose(expected, target(input_ids=ids).logits, atol=1e-3)  # the deltas changed the model
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
