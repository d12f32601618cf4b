"""EagleDrafter: protocol conformance, ragged-batch consistency, rows joining and leaving, and trees whose nodes see
only their ancestors — on a tiny random fp32 target."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from speckv.drafters import eagle
from speckv.drafters.base import Drafter
from speckv.drafters.eagle import EagleDrafter, EagleHead, head_config
from speckv.drafters.int8 import ALL_ROWS
from speckv.drafters.tree import TreeBuilder
from speckv.proposal import Plan

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
    return EagleDrafter(head, target, torch.device("cpu"), draft_vocab=draft_vocab,
                        int8_rows=ALL_ROWS if int8_weights else 0)


def features(target, ids: list[int]) -> torch.Tensor:  # [len, H] target feature at every position
    with torch.no_grad():
        return target.model(torch.tensor([ids])).last_hidden_state[0]


def admit(drafter, target, prompts, firsts):
    drafter.admit(prompts, torch.tensor(firsts), [features(target, p) for p in prompts])


def grow(drafter, depth: int, topk: int = 1) -> TreeBuilder:
    """Draft every row's tree ``depth`` levels deep, every node valued by its draft probability."""
    n = drafter.cache.batch_size
    tree = TreeBuilder(n, depth_cap=torch.full((n,), depth), device=torch.device("cpu"))

    def expand(t: TreeBuilder) -> int:
        t.draft_values()
        return topk  # every new node's children, up to the plan's width

    drafter.grow(tree, Plan(nodes=torch.full((n,), 1000), depth=depth, topk=topk), expand, None)
    tree.draft_values()
    return tree


def row_nodes(tree: TreeBuilder, b: int) -> list[tuple[tuple[int, ...], float]]:
    """Row b's nodes as (token path from the root, draft probability), in column order."""
    paths, out = {0: ()}, []
    for col in range(tree.n):
        if not tree.real[b, col]:
            continue
        path = paths[int(tree.parents[b, col])] + (int(tree.tokens[b, col]),)
        paths[col + 1] = path
        out.append((path, float(tree.prob[b, col])))
    return out


def assert_same_nodes(a, b):
    assert [p for p, _ in a] == [p for p, _ in b]
    torch.testing.assert_close(torch.tensor([x for _, x in a]), torch.tensor([x for _, x in b]), atol=ATOL, rtol=1e-4)


PROMPTS = [[5, 17, 42, 9, 100, 3, 77], [8, 1], [250, 12, 12, 60]]
FIRSTS = [11, 22, 33]


def test_protocol(head, target):
    drafter = make(head, target)
    assert isinstance(drafter, Drafter) and drafter.kind == "eagle"
    assert drafter.needs_target_hidden and drafter.vocab_size == VOCAB
    admit(drafter, target, PROMPTS, FIRSTS)
    tree = grow(drafter, 3)
    assert tree.forwards == 3 and tree.n == 3 and bool(tree.real.any())
    assert tree.depth[0, :3].tolist() == [1, 2, 3] and tree.parents[0, :3].tolist() == [0, 1, 2]  # a chain


@pytest.mark.parametrize("int8_weights", [False, True])
@pytest.mark.parametrize("topk", [1, 3])
def test_ragged_batch_matches_rows_alone(head, target, int8_weights, topk):
    batched = make(head, target, int8_weights=int8_weights)
    admit(batched, target, PROMPTS, FIRSTS)
    together = grow(batched, 3, topk)
    for b, (prompt, first) in enumerate(zip(PROMPTS, FIRSTS)):
        alone = make(head, target, int8_weights=int8_weights)
        admit(alone, target, [prompt], [first])
        assert_same_nodes(row_nodes(together, b), row_nodes(grow(alone, 3, topk), 0))


def test_a_node_sees_only_its_ancestors(head, target):
    """Every node expanded in both a 2-wide and a 3-wide tree has the same children: siblings and cousins drafted
    in the same forward never leak into a node's draft distribution."""
    trees = {}
    for k in (2, 3):
        drafter = make(head, target)
        admit(drafter, target, PROMPTS, FIRSTS)
        trees[k] = grow(drafter, 3, k)
    for b in range(len(PROMPTS)):
        narrow, wide = dict(row_nodes(trees[2], b)), dict(row_nodes(trees[3], b))
        children = {}
        for path in wide:
            children.setdefault(path[:-1], []).append(path)
        compared = 0
        for path, prob in narrow.items():
            if path[:-1] in children and len(path) > 1 and path[:-1] in narrow:
                assert path in wide, path  # a node's top-2 children are the first two of its top-3
                assert abs(wide[path] - prob) < ATOL
                compared += 1
        assert compared >= 4  # depth-2 and depth-3 nodes expanded in both trees were compared


def commit(target, seqs: list[list[int]], drafter, tokens: list[list[int]]):
    """Commit ``tokens`` (ragged) to ``drafter`` with the target's real features."""
    width = max(len(t) for t in tokens)
    new = torch.zeros(len(tokens), width, dtype=torch.long)
    hid = torch.zeros(len(tokens), width, HIDDEN)
    for b, (row, toks) in enumerate(zip(seqs, tokens)):
        feats = features(target, row + toks)  # feature before each new token = at positions len(row)-1 ...
        new[b, : len(toks)] = torch.tensor(toks)
        hid[b, : len(toks)] = feats[len(row) - 1 : len(row) - 1 + len(toks)]
    drafter.commit(new, torch.tensor([len(t) for t in tokens]), hid)


@pytest.mark.parametrize("int8_weights", [False, True])
@pytest.mark.parametrize("depth", [0, 3])
def test_commit_matches_fresh_admission(head, target, depth, int8_weights):
    """After drafting (or not drafting) and committing, the drafter equals one admitted with the full sequence."""
    drafter = make(head, target, int8_weights=int8_weights)
    admit(drafter, target, PROMPTS, FIRSTS)
    if depth:
        grow(drafter, depth, 2)
    seqs = [p + [f] for p, f in zip(PROMPTS, FIRSTS)]
    commits = [[7, 8, 9], [4], [70, 71]]
    commit(target, seqs, drafter, commits)
    got = grow(drafter, 2)
    for b, (seq, toks) in enumerate(zip(seqs, commits)):
        full = seq + toks
        fresh = make(head, target, int8_weights=int8_weights)
        admit(fresh, target, [full[:-1]], [full[-1]])
        assert_same_nodes(row_nodes(got, b), row_nodes(grow(fresh, 2), 0))


def test_rows_join_and_leave(head, target):
    """Rows admitted into a running batch, and rows dropped from it, leave every other row's drafts unchanged."""
    drafter = make(head, target)
    admit(drafter, target, PROMPTS[:2], FIRSTS[:2])
    grow(drafter, 2)
    seqs = [p + [f] for p, f in zip(PROMPTS[:2], FIRSTS[:2])]
    commit(target, seqs, drafter, [[3], [4, 5]])
    admit(drafter, target, PROMPTS[2:], FIRSTS[2:])  # joins while the others are mid-sequence
    drafter.drop(torch.tensor([2, 0]))
    got = grow(drafter, 3, 2)
    for b, (prompt, first) in enumerate([(PROMPTS[2], FIRSTS[2]), (PROMPTS[0] + [FIRSTS[0]], 3)]):
        reference = make(head, target)
        admit(reference, target, [prompt], [first])
        assert_same_nodes(row_nodes(got, b), row_nodes(grow(reference, 3, 2), 0))


def test_one_token_prompts_join_as_rows_that_hold_nothing_yet(head, target):
    """A one-token prompt has only its root pair, so admission feeds nothing: such rows join the head's cache as
    holes, before a batch that holds something and after one; each row drafts what it would alone."""
    drafter = make(head, target)
    rows = [([5], 11), (PROMPTS[2], 33), ([9], 44)]
    for prompt, first in rows:
        admit(drafter, target, [prompt], [first])
    got = grow(drafter, 3, 2)
    for b, (prompt, first) in enumerate(rows):
        alone = make(head, target)
        admit(alone, target, [prompt], [first])
        assert_same_nodes(row_nodes(got, b), row_nodes(grow(alone, 3, 2), 0))


def test_a_long_plain_stretch_is_fed_as_it_goes_and_drafts_the_same(head, target, monkeypatch):
    """Past QUEUE_MAX queued positions a commit feeds the head at once, keeping one queued pair per row; what the
    head then drafts equals a drafter admitted with the whole sequence."""
    monkeypatch.setattr(eagle, "QUEUE_MAX", 4)
    drafter = make(head, target)
    admit(drafter, target, PROMPTS, FIRSTS)
    seqs = [p + [f] for p, f in zip(PROMPTS, FIRSTS)]
    for step in range(7):  # plain steps, one token a row; at step 3 row 1 commits two (a ragged commit)
        tokens = [[40 + step], [50 + step] + ([60] if step == 3 else []), [70 + step]]
        commit(target, seqs, drafter, tokens)
        seqs = [s + t for s, t in zip(seqs, tokens)]
        assert sum(chunk[0].shape[1] for chunk in drafter.queue) <= 4
    queued = sum(chunk[2].sum(dim=1) for chunk in drafter.queue)  # [B] pairs not fed yet
    assert (drafter.cache.lengths + queued).tolist() == [len(s) - 1 for s in seqs]  # every pair once, fed or queued
    assert all(drafter.cache.lengths > torch.tensor([len(p) - 1 for p in PROMPTS]))  # fed on the way
    got = grow(drafter, 3, 2)
    for b, seq in enumerate(seqs):
        fresh = make(head, target)
        admit(fresh, target, [seq[:-1]], [seq[-1]])
        assert_same_nodes(row_nodes(got, b), row_nodes(grow(fresh, 3, 2), 0))


def test_admission_feeds_the_prompts_plain_commits_only_queue_and_drafting_catches_up_first(head, target):
    """Admission feeds each prompt but its root pair, in the joining rows' own cache (no padding to the batch's
    backlog); plain commits only queue; prepare feeds the backlog but each row's root pair, so that grow's first
    forward is one pair a row (the shape calibration times); what it drafts equals a fresh drafter's."""
    drafter = make(head, target)
    admit(drafter, target, PROMPTS[:1], FIRSTS[:1])
    commit(target, [PROMPTS[0] + [FIRSTS[0]]], drafter, [[30]])
    admit(drafter, target, PROMPTS[1:], FIRSTS[1:])  # joins a batch with a queued commit
    assert drafter.cache.lengths.tolist() == [len(p) - 1 for p in PROMPTS]
    assert drafter.cache.valid.shape[1] == max(len(p) for p in PROMPTS) - 1  # no slot for the backlog's padding
    seqs = [PROMPTS[0] + [FIRSTS[0], 30]] + [p + [f] for p, f in zip(PROMPTS[1:], FIRSTS[1:])]
    for step in range(3):
        tokens = [[40 + step], [50 + step, 60][: 1 + (step == 1)], [70 + step]]
        commit(target, seqs, drafter, tokens)
        seqs = [s + t for s, t in zip(seqs, tokens)]
    assert drafter.cache.lengths.tolist() == [len(p) - 1 for p in PROMPTS]  # plain commits only queued
    fed, forward = [], drafter._forward
    drafter._forward = lambda cache, feats, toks, valid, *a: fed.append(valid.sum(dim=1).tolist()) or forward(
        cache, feats, toks, valid, *a)
    drafter.prepare(Plan(nodes=torch.full((3,), 1000), depth=3, topk=2))
    assert drafter.cache.lengths.tolist() == [len(s) - 2 for s in seqs]  # every pair (f_t, x_t+1) but the root's
    got = grow(drafter, 3, 2)
    assert fed[1] == [1, 1, 1]
    for b, seq in enumerate(seqs):
        fresh = make(head, target)
        admit(fresh, target, [seq[:-1]], [seq[-1]])
        assert_same_nodes(row_nodes(got, b), row_nodes(grow(fresh, 3, 2), 0))


def test_restricted_vocab_drafts_only_its_ids(head, target):
    drafter = make(head, target, draft_vocab=100)
    admit(drafter, target, PROMPTS, FIRSTS)
    tree = grow(drafter, 2, 4)
    assert int(tree.tokens[tree.real].max()) < 100  # ids from 100 on have draft probability 0


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


def test_int8_linear_uses_the_float_weight_above_its_row_limit():
    from speckv.drafters.int8 import Int8Linear

    torch.manual_seed(3)
    linear = torch.nn.Linear(64, 48)
    q = Int8Linear.of(linear, max_rows=4)
    few, many = torch.randn(2, 2, 64), torch.randn(1, 5, 64)  # 4 rows: int8; 5 rows: the float weight
    torch.testing.assert_close(q(few), torch.nn.functional.linear(few, q.dequantized(), linear.bias))
    assert torch.equal(q(many), linear(many))
    assert not torch.equal(q(many), torch.nn.functional.linear(many, q.dequantized(), linear.bias))


def test_int8_drafter_stays_close_to_full_precision(head, target):
    int8_drafter, full = make(head, target, int8_weights=True), make(head, target)
    assert int8_drafter.int8_weights and not full.int8_weights
    assert not any("Int8" in type(m).__name__ for m in head.modules())  # the caller's head is left as it was
    for d in (int8_drafter, full):
        admit(d, target, PROMPTS, FIRSTS)
    a, b = grow(int8_drafter, 1), grow(full, 1)
    assert torch.equal(a.tokens[:, 0], b.tokens[:, 0])
    assert (a.prob[:, 0] - b.prob[:, 0]).abs().max() < 0.05


def test_save_load_roundtrip(head, target, tmp_path):
    EagleDrafter.save(head, tmp_path, {"draft_vocab": None}, dtype=torch.float32)
    loaded = EagleDrafter.load(tmp_path, target, torch.device("cpu"), int8_weights=False)
    assert loaded.embed is target.get_input_embeddings() and loaded.lm_head is target.get_output_embeddings()
    fresh = make(head, target)
    for d in (loaded, fresh):
        admit(d, target, PROMPTS, FIRSTS)
    a, b = grow(loaded, 2, 2), grow(fresh, 2, 2)
    for row in range(len(PROMPTS)):
        assert_same_nodes(row_nodes(a, row), row_nodes(b, row))


def test_training_time_test_matches_inference(head, target):
    """The 4-D masks that train draft depths 1..3 in one pass see exactly what a drafted chain sees at inference:
    on a sequence that continues with the head's own greedy drafts, its predictions give the tree's probabilities."""
    from speckv.distill.eagle import ttt_forward

    prompt, first = PROMPTS[0], FIRSTS[0]
    drafter = make(head, target)
    admit(drafter, target, [prompt], [first])
    chain = grow(drafter, 3)
    drafted = chain.tokens[0, :3].tolist()
    seq = prompt + [first] + drafted
    with torch.no_grad():
        preds = ttt_forward(head, features(target, seq)[None], target.get_input_embeddings()(torch.tensor([seq])), 3)
        weight = target.get_output_embeddings().weight
        for d in range(3):  # the root's slot is len(prompt) - 1 (feature f_{L-1} with the token `first`)
            probs = torch.softmax(preds[d][0, len(prompt) - 1] @ weight.T, dim=-1)
            assert int(probs.argmax()) == drafted[d]
            assert abs(float(probs.max()) - float(chain.prob[0, d])) < ATOL
