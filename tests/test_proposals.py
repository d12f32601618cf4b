"""Exact cases for what drafters propose: the lookup index, trees built and cut, the learned rule's arithmetic."""

from __future__ import annotations

import numpy as np
import torch

from speckv.drafters.lookup import NgramIndex
from speckv.drafters.tree import TreeBuilder
from speckv.policies.base import keep_top
from speckv.policies.learned.rule import choose_width, worth_expanding
from speckv.proposal import LOOKUP, Proposal

CPU = torch.device("cpu")


def test_lookup_proposes_what_followed_the_longest_recent_suffix_match():
    index = NgramIndex(min_n=2, max_n=4)
    index.extend([1, 2, 3, 4, 5, 9, 2, 3, 4, 6, 7, 1, 2, 3, 4])
    # the longest suffix that occurred before is all four of (1, 2, 3, 4), at the start, followed by 5 9 2 — not
    # the more recent (2, 3, 4) followed by 6 7 1: a longer match wins
    assert index.propose(3) == ([5, 9, 2], 4)
    index = NgramIndex(min_n=2, max_n=3)
    index.extend([1, 2, 3, 4, 5, 9, 2, 3, 4, 6, 7, 1, 2, 3, 4])
    assert index.propose(3) == ([6, 7, 1], 3)  # at most 3: the latest (2, 3, 4)
    index = NgramIndex(min_n=2, max_n=3)
    index.extend([8, 1, 2, 9, 9, 1, 2])
    assert index.propose(4) == ([9, 9, 1, 2], 2)  # "1 2" last seen at the start, followed by 9 9 1 2
    assert NgramIndex(2, 4).propose(3) == ([], 0)
    lone = NgramIndex(2, 3)
    lone.extend([5, 6, 7])
    assert lone.propose(2) == ([], 0)  # the current suffix is never its own continuation


def test_lookup_index_grows_with_the_output():
    index = NgramIndex(min_n=1, max_n=2)
    index.extend([4, 5])
    assert index.propose(2) == ([], 0)
    index.extend([4])
    assert index.propose(2) == ([5, 4], 1)  # "4" was followed by 5 (then 4)


def builder(batch=2, depth=4, sampled=False) -> TreeBuilder:
    sampling = (torch.ones(batch), torch.zeros(batch, dtype=torch.long), torch.ones(batch)) if sampled else None
    return TreeBuilder(batch, depth_cap=torch.full((batch,), depth), device=CPU, sampling=sampling, vocab=10)


def one_hot_logits(tokens: list[list[int]], vocab: int = 10) -> torch.Tensor:  # [B, F, V], the token most likely
    logits = torch.full((len(tokens), len(tokens[0]), vocab), -5.0)
    for b, row in enumerate(tokens):
        for f, t in enumerate(row):
            logits[b, f, t] = 5.0
            logits[b, f, (t + 1) % vocab] = 3.0  # the second choice
    return logits


def test_lookup_chain_merges_into_the_tree_and_siblings_stay_distinct():
    tree = builder()
    tree.add_children(torch.zeros(2, 1, dtype=torch.long), one_hot_logits([[3], [3]]), topk=2)  # nodes 1 (3), 2 (4)
    tree.add_chain(torch.tensor([[3, 7, 8], [5, 6, 0]]), torch.tensor([3, 2]), torch.tensor([4, 2]))
    tree.draft_values()
    # row 0: token 3 is the head's node 1 already: 7 and 8 hang below it; row 1: 5, 6 start a branch of their own
    real0 = [(int(t), int(p)) for t, p, r in zip(tree.tokens[0], tree.parents[0], tree.real[0]) if r]
    real1 = [(int(t), int(p)) for t, p, r in zip(tree.tokens[1], tree.parents[1], tree.real[1]) if r]
    assert real0 == [(3, 0), (4, 0), (7, 1), (8, 4)]
    assert real1 == [(3, 0), (4, 0), (5, 0), (6, 3)]
    proposal = tree.finish(keep_top(tree, torch.tensor([10, 10])))
    assert proposal.num_nodes.tolist() == [4, 4]
    assert proposal.depth[0].tolist() == [1, 1, 2, 3] and proposal.parents[0].tolist() == [0, 0, 1, 3]
    assert proposal.source[1].tolist() == [0, 0, LOOKUP, LOOKUP] and proposal.match[1].tolist() == [0, 0, 2, 2]


def test_lookup_chain_into_an_empty_tree_is_the_merging_path_in_one_go():
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        batch, m = 4, 6
        tokens = torch.randint(0, 10, (batch, m), generator=gen)
        length, match = torch.randint(0, m + 1, (batch,), generator=gen), torch.randint(1, 5, (batch,), generator=gen)
        depth_cap = torch.randint(0, m + 2, (batch,), generator=gen)
        fast, merged = (TreeBuilder(batch, depth_cap=depth_cap, device=CPU) for _ in range(2))
        fast.add_chain(tokens, length, match)  # an empty tree takes the vectorised path
        merged._reserve(m)
        merged._merge_chain(tokens, length, match)
        assert (fast.n, fast.last) == (merged.n, merged.last)
        for name in TreeBuilder._LONG + TreeBuilder._FLOAT + ("real", "_anc"):
            assert torch.equal(getattr(fast, name), getattr(merged, name)), name


def test_keep_top_holds_every_kept_nodes_ancestors():
    tree = builder(batch=1, depth=3)
    tree.add_children(torch.zeros(1, 1, dtype=torch.long), one_hot_logits([[2]]), topk=3)
    tree.draft_values()
    tree.add_children(torch.tensor([[1, 2]]), one_hot_logits([[5, 6]]), topk=2)
    tree.draft_values()
    for n in range(1, tree.n + 1):
        keep = keep_top(tree, torch.tensor([n]))[0]
        assert int(keep.sum()) == n
        for col in torch.nonzero(keep).flatten().tolist():
            parent = int(tree.parents[0, col])
            assert parent == 0 or keep[parent - 1], (n, col)


def test_finish_packs_breadth_first_with_point_masses_in_sampled_mode():
    tree = builder(batch=1, sampled=True)
    tree.add_children(torch.zeros(1, 1, dtype=torch.long), one_hot_logits([[1]]), topk=2)
    tree.add_children(torch.tensor([[2]]), one_hot_logits([[7]]), topk=1, draws=lambda rows: torch.full((1,), 0.5))
    tree.draft_values()
    proposal = tree.finish(torch.ones(1, tree.n, dtype=torch.bool))
    assert proposal.tokens[0].tolist() == [1, 2, 7] and proposal.parents[0].tolist() == [0, 0, 2]
    q = proposal.q[0]
    assert q[0].tolist() == torch.nn.functional.one_hot(torch.tensor(1), 10).float().tolist()  # top-k: a point mass
    assert q[2, 7] > 0.5 and q[2].sum() > 0.99 and q[2, 8] > 0  # drawn from the draft distribution: its q
    anc = proposal.ancestors()[0]
    assert anc[3].tolist() == [True, False, True, True] and anc[1].tolist() == [True, True, False, False]


def test_chain_proposal_is_a_tree_of_width_one():
    chain = Proposal.chain(torch.tensor([[4, 5, 6]]))
    assert chain.parents.tolist() == [[0, 1, 2]] and chain.depth.tolist() == [[1, 2, 3]]
    assert torch.equal(chain.ancestors()[0], torch.ones(4, 4, dtype=torch.bool).tril())  # causal, as a chain is


def test_rule_adds_a_column_only_while_tokens_per_second_rise():
    step = np.array([100.0, 110.0, 120.0, 130.0])  # each verified column adds 10 ms to a 100 ms step
    # one row, values 0.9, 0.5, 0.05: the third column adds 0.05 tokens for 10 % more time
    width, expected, took = choose_width(np.array([[0.9, 0.5, 0.05]]), np.array([1]), step, np.array([0.0]), 0.0)
    assert width.tolist() == [2] and expected[0] == 1 + 0.9 + 0.5 and took[0] == 120.0
    # the margin is asked of the first column only (leaving plain decoding): 0.9 tokens for 10 % more time clear
    # a margin of 0.5 (90 > 10 + 0.5·110) but not of 0.9; the second column, which a margin of 0.5 would stop
    # (0.5·110 < 1.9·10 + 0.5·1.9·120), joins on its rate alone
    assert choose_width(np.array([[0.9, 0.5, 0.05]]), np.array([1]), step, np.array([0.0]), 0.5)[0].tolist() == [2]
    assert choose_width(np.array([[0.9, 0.5, 0.05]]), np.array([1]), step, np.array([0.0]), 0.9)[0].tolist() == [0]
    # ... unless the later columns are asked a margin too (a batch's)
    assert choose_width(np.array([[0.9, 0.5, 0.05]]), np.array([1]), step, np.array([0.0]), 0.5, 0.5)[0].tolist() == [1]
    # in a batch the column's value is summed over its rows against all their tokens
    assert choose_width(np.array([[0.3, 0.2]]), np.array([4]), step, np.array([0.0]), 0.0)[0].tolist() == [0]
    assert worth_expanding(0.5, 1.9, 110.0, 2.0, 10.0, 0.0) and not worth_expanding(0.05, 1.9, 110.0, 2.0, 10.0, 0.0)


def test_learned_cut_skips_scoring_free_candidates_that_could_not_pay_even_if_all_accepted():
    """Batch 8, verifying 2 tokens costs 1.3× one: a lookup column needs G_0·T0 > B·(T1 − T0) + m·B·T1, more than 3
    surely-accepted rows' worth; two rows' matches cannot pay whatever their acceptance, so nothing is scored."""
    from speckv.costs import CostModel, OnlineCosts
    from speckv.policies.base import StepContext
    from speckv.policies.learned import LearnedPolicy

    costs = OnlineCosts(CostModel([1, 8], [1, 2, 5], [[20, 22, 25], [100, 130, 150]], [1, 5]), max_tokens=6)
    policy = LearnedPolicy(None, gamma_max=4, depth=4)  # no weights: a lookup node's acceptance is lookup_rate

    def cut(rows_matched: int) -> tuple[torch.Tensor, TreeBuilder]:
        b = 8
        ctx = StepContext(batch_size=b, context_len=torch.full((b,), 50), num_generated=torch.zeros(b, dtype=torch.long),
                          max_new_tokens=torch.full((b,), 64), accept_rate=torch.zeros(b), lookup_rate=torch.ones(b),
                          first_accept=torch.zeros(b), compression="bf16", costs=costs, gamma_max=4, greedy=True)
        plan = policy.plan(ctx)
        tree = TreeBuilder(b, depth_cap=torch.full((b,), 4), device=CPU)
        length = torch.tensor([3] * rows_matched + [0] * (b - rows_matched))
        tree.add_chain(torch.full((b, 3), 7), length, torch.full((b,), 3))
        return policy.cut(ctx, tree, plan), tree

    keep, tree = cut(2)
    assert not keep.any() and tree.scored == 0  # bound: G_0 ≤ 2 rows, short of what one column needs
    keep, tree = cut(8)  # eight rows sure of their matches: worth a column or more, so they are scored and kept
    assert tree.scored == tree.n and keep.any(dim=1).all()
