"""EagleDrafter: protocol conformance and ragged-batch consistency, on a tiny random fp32 target."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from speckv.drafters.base import Drafter
from speckv.drafters.eagle import EagleDrafter, EagleHead, head_config

VOCAB, HIDDEN = 256, 64
ATOL = 1e-4


@pytest.fixture(scope="module")
def target() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    return LlamaForCausalLM(config).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def head(target) -> EagleHead:
    torch.manual_seed(1)
    return EagleHead(head_config(target.config)).eval()


def make(head, target, draft_vocab=None, int8_weights=False) -> EagleDrafter:
    return EagleDrafter(head, target, torch.device("cpu"), draft_vocab=draft_vocab, int8_weights=int8_weights)


def features(target, ids: list[int]) -> torch.Tensor:  # [len, H] target feature at every position
    with torch.no_grad():
        return target.model(torch.tensor([ids])).last_hidden_state[0]


def prefill(drafter, target, prompts, firsts):
    drafter.prefill(prompts, torch.tensor(firsts), [features(target, p) for p in prompts])


def draft(drafter, steps: int) -> list[torch.Tensor]:
    """Draft ``steps`` greedy tokens; return each position's logits ([B, V])."""
    out, last = [], None
    for _ in range(steps):
        logits = drafter.draft_logits(last)
        out.append(logits)
        last = logits.argmax(-1)
    return out


PROMPTS = [[5, 17, 42, 9, 100, 3, 77], [8, 1], [250, 12, 12, 60]]
FIRSTS = [11, 22, 33]


def test_protocol(head, target):
    drafter = make(head, target)
    assert isinstance(drafter, Drafter)
    assert drafter.needs_target_hidden and drafter.vocab_size == VOCAB
    prefill(drafter, target, PROMPTS, FIRSTS)
    logits = draft(drafter, 3)
    assert all(x.shape == (3, VOCAB) and x.dtype == torch.float32 for x in logits)


@pytest.mark.parametrize("int8_weights", [False, True])
def test_ragged_batch_matches_rows_alone(head, target, int8_weights):
    batched = make(head, target, int8_weights=int8_weights)
    prefill(batched, target, PROMPTS, FIRSTS)
    together = draft(batched, 4)
    for b, (prompt, first) in enumerate(zip(PROMPTS, FIRSTS)):
        alone = make(head, target, int8_weights=int8_weights)
        prefill(alone, target, [prompt], [first])
        for step, logits in enumerate(draft(alone, 4)):
            torch.testing.assert_close(together[step][b], logits[0], atol=ATOL, rtol=1e-4)


def committed_state(target, seq: list[int], drafter, num_new: list[int], tokens: list[list[int]]):
    """Commit ``tokens`` (ragged) to ``drafter`` with the target's real features; return nothing."""
    width = max(num_new)
    new = torch.zeros(len(tokens), width, dtype=torch.long)
    hid = torch.zeros(len(tokens), width, HIDDEN)
    for b, (row, toks) in enumerate(zip(seq, tokens)):
        feats = features(target, row + toks)  # feature before each new token = at positions len(row)-1 ...
        new[b, : len(toks)] = torch.tensor(toks)
        hid[b, : len(toks)] = feats[len(row) - 1 : len(row) - 1 + len(toks)]
    drafter.commit(new, torch.tensor(num_new), hid)


@pytest.mark.parametrize("int8_weights", [False, True])
@pytest.mark.parametrize("draft_steps", [0, 3])
def test_commit_matches_fresh_prefill(head, target, draft_steps, int8_weights):
    """After drafting (or drafting nothing) and committing, the drafter equals one prefilled on the full sequence."""
    drafter = make(head, target, int8_weights=int8_weights)
    prefill(drafter, target, PROMPTS, FIRSTS)
    draft(drafter, draft_steps)
    seqs = [p + [f] for p, f in zip(PROMPTS, FIRSTS)]  # committed so far
    commits = [[7, 8, 9], [4], [70, 71]]
    committed_state(target, seqs, drafter, [len(c) for c in commits], commits)
    # a second step, with one row drafting zero tokens in between is the same as all drafting
    got = draft(drafter, 2)
    for b, (seq, toks) in enumerate(zip(seqs, commits)):
        full = seq + toks
        fresh = make(head, target, int8_weights=int8_weights)
        prefill(fresh, target, [full[:-1]], [full[-1]])
        for step, logits in enumerate(draft(fresh, 2)):
            torch.testing.assert_close(got[step][b], logits[0], atol=ATOL, rtol=1e-4)


def test_select_rows(head, target):
    drafter = make(head, target)
    prefill(drafter, target, PROMPTS, FIRSTS)
    draft(drafter, 2)
    seqs = [p + [f] for p, f in zip(PROMPTS, FIRSTS)]
    committed_state(target, seqs, drafter, [1, 2, 1], [[3], [4, 5], [6]])
    drafter.select_rows(torch.tensor([2, 0]))
    got = draft(drafter, 3)
    reference = make(head, target)
    prefill(reference, target, [PROMPTS[2], PROMPTS[0]], [FIRSTS[2], FIRSTS[0]])
    draft(reference, 2)
    committed_state(target, [seqs[2], seqs[0]], reference, [1, 1], [[6], [3]])
    for a, b in zip(got, draft(reference, 3)):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=1e-4)


def test_restricted_vocab_is_lossless_shape(head, target):
    drafter = make(head, target, draft_vocab=100)
    prefill(drafter, target, PROMPTS, FIRSTS)
    logits = drafter.draft_logits(None)
    assert logits.shape == (3, 100) and torch.isfinite(logits).all()  # ids from 100 on: probability 0
    full = make(head, target)
    prefill(full, target, PROMPTS, FIRSTS)
    torch.testing.assert_close(logits, full.draft_logits(None)[:, :100])


def test_int8_linear_multiplies_by_its_rounded_weight():
    from speckv.drafters.int8 import Int8Linear

    torch.manual_seed(2)
    linear = torch.nn.Linear(64, 48)
    q = Int8Linear.of(linear)
    w = linear.weight.detach()
    step = w.abs().amax(dim=1, keepdim=True) / 127  # each weight is off by at most half a step of its row
    assert ((q.dequantized() - w).abs() <= step / 2 + 1e-7).all()
    x = torch.randn(3, 5, 64)
    torch.testing.assert_close(q(x), torch.nn.functional.linear(x, q.dequantized(), linear.bias))


def test_int8_drafter_stays_close_to_full_precision(head, target):
    int8_drafter, full = make(head, target, int8_weights=True), make(head, target)
    assert int8_drafter.int8_weights and not full.int8_weights
    assert not any("Int8" in type(m).__name__ for m in head.modules())  # the caller's head is left as it was
    for d in (int8_drafter, full):
        prefill(d, target, PROMPTS, FIRSTS)
    a, b = draft(int8_drafter, 1)[0], draft(full, 1)[0]
    assert (a - b).abs().max() < 0.05 * b.abs().max()
    assert torch.equal(a.argmax(-1), b.argmax(-1))


def test_save_load_roundtrip(head, target, tmp_path):
    EagleDrafter.save(head, tmp_path, {"draft_vocab": None}, dtype=torch.float32)
    loaded = EagleDrafter.load(tmp_path, target, torch.device("cpu"))
    assert loaded.embed is target.get_input_embeddings() and loaded.lm_head is target.get_output_embeddings()
    fresh = make(head, target)
    for d in (loaded, fresh):
        prefill(d, target, PROMPTS, FIRSTS)
    torch.testing.assert_close(loaded.draft_logits(None), fresh.draft_logits(None))


def test_training_time_test_matches_inference(head, target):
    """The 4-D masks that train draft depths 1..3 in one pass see exactly what the drafter sees at inference."""
    from speckv.distill import ttt_forward

    seq = [5, 17, 42, 9, 100, 3, 77, 8, 1, 250, 12]
    feats = features(target, seq)[None]
    with torch.no_grad():
        preds = ttt_forward(head, feats, target.get_input_embeddings()(torch.tensor([seq])), depth=3)
    for i in (0, 3, 6):
        drafter = make(head, target)
        prefill(drafter, target, [seq[: i + 1]], [seq[i + 1]])
        drafter.draft_logits(None)
        torch.testing.assert_close(drafter.last_pred[0], preds[0][0, i], atol=ATOL, rtol=1e-4)
        for d in (1, 2):  # drafted positions fed the true next token, as training does
            drafter.draft_logits(torch.tensor([seq[i + d + 1]]))
            torch.testing.assert_close(drafter.last_pred[0], preds[d][0, i], atol=ATOL, rtol=1e-4)
