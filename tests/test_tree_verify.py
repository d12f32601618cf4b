"""Tree verification: exact cases with hand-built one-hots and distributions, equality with the chain functions,
and the statistical tier (χ²: the emitted tokens have the target's law under temperature, top-k and top-p)."""

from __future__ import annotations

import pytest
import torch

from speckv.verify import sample, to_probs, verify, verify_greedy, verify_tree, verify_tree_greedy
from tests.conftest import chi2_pvalue, chi2_stat

V = 8
NEAR_ONE = 1 - 1e-9  # vLLM's scenario: a float64 draw in [0, 1) that a float32 cast rounds up to 1.0
VLLM_P = [0.2, 0.8, 0, 0, 0, 0, 0, 0]


def one_hot(tokens) -> torch.Tensor:  # [..., V]
    return torch.nn.functional.one_hot(torch.as_tensor(tokens), V).float()


def row(tokens: list[int], parents: list[int]):
    """One row's tree as [1, N] tensors and num_nodes [1]."""
    return torch.tensor([tokens]).reshape(1, -1), torch.tensor([parents]).reshape(1, -1), torch.tensor([len(tokens)])


def dist(*pairs: tuple[int, float]) -> list[float]:
    out = [0.0] * V
    for token, mass in pairs:
        out[token] = mass
    return out


def random_trees(gen: torch.Generator, batch: int, n: int, vocab: int = V):
    """Random ragged trees, padding −1 everywhere (tokens and parents); siblings get distinct tokens."""
    tokens = torch.full((batch, n), -1)
    parents = torch.full((batch, n), -1)
    num_nodes = torch.randint(0, n + 1, (batch,), generator=gen)
    for b in range(batch):
        for j in range(int(num_nodes[b])):
            parent = int(torch.randint(0, j + 1, (1,), generator=gen))
            used = {int(tokens[b, k]) for k in range(j) if int(parents[b, k]) == parent}
            free = [t for t in range(vocab) if t not in used]
            tokens[b, j] = free[int(torch.randint(0, len(free), (1,), generator=gen))]
            parents[b, j] = parent
    return tokens, parents, num_nodes


def greedy_targets(gen: torch.Generator, tokens, parents, num_nodes, vocab: int = V) -> torch.Tensor:
    """[B, N+1] argmaxes that often pick one of the node's children, so paths go deep."""
    batch, n = tokens.shape
    target = torch.randint(0, vocab, (batch, n + 1), generator=gen)
    for b in range(batch):
        for i in range(n + 1):
            kids = [int(tokens[b, j]) for j in range(int(num_nodes[b])) if int(parents[b, j]) == i]
            if kids and float(torch.rand(1, generator=gen)) < 0.7:
                target[b, i] = kids[int(torch.randint(0, len(kids), (1,), generator=gen))]
    return target


# ---------------------------------------------------------------- exact cases


def test_greedy_perfect_match_down_one_branch_with_bonus():
    # root ─ 1 ─ 3 ─ 5     node i carries token i; the target follows root → 2 → 4 (a leaf), whose argmax is
    #      └ 2 ─ 4         the bonus token
    tokens, parents, num_nodes = row([1, 2, 3, 4, 5], [0, 0, 1, 2, 3])
    target = torch.tensor([[2, 3, 4, 0, 6, 7]])  # argmax at nodes 0..5; node 3's token equals node 1's argmax
    out = verify_tree_greedy(tokens, parents, num_nodes, target)
    assert out.num_accepted.tolist() == [2] and out.path.tolist() == [[2, 4, -1]] and out.next_token.tolist() == [6]
    assert out.last_node.tolist() == [4]
    # telemetry for every real node, off the path too: node 3 (token 3) matches node 1's argmax
    assert out.accept.tolist() == [[False, True, True, True, False]] and bool(out.judged.all())
    sampled = verify_tree(tokens, parents, num_nodes, one_hot(tokens), one_hot(target), torch.rand(1, 6))
    assert torch.equal(sampled.path, out.path) and torch.equal(sampled.next_token, out.next_token)
    assert sampled.judged.tolist() == [[True, True, False, True, False]]  # node 3 is under a rejected node


def test_first_child_rejected_second_accepted_greedy():
    tokens, parents, num_nodes = row([1, 2], [0, 0])
    out = verify_tree_greedy(tokens, parents, num_nodes, torch.tensor([[2, 5, 3]]))
    assert out.path.tolist() == [[2]] and out.next_token.tolist() == [3] and out.accept.tolist() == [[False, True]]


def sibling_case(u_first: float, u_second: float, u_final: float):
    """Root with a child drawn from q = [0, 0.8, 0.2] (token 1) and a point-mass sibling (token 2) under it,
    p(root) = [0.1, 0.5, 0.4]. Token 1: accept iff u·0.8 < 0.5. After its rejection the residual is
    [0.1, 0, 0.2]/0.3, so token 2 is accepted iff u < 2/3; the bonus after node 2 comes from p(node 2) = δ_3."""
    tokens, parents, num_nodes = row([1, 2], [0, 0])
    q = torch.tensor([[dist((1, 0.8), (2, 0.2)), dist((2, 1.0))]])
    p = torch.tensor([[dist((0, 0.1), (1, 0.5), (2, 0.4)), dist((5, 1.0)), dist((3, 1.0))]])
    return verify_tree(tokens, parents, num_nodes, q, p, torch.tensor([[u_final, u_first, u_second]]))


def test_first_child_rejected_second_accepted_sampled():
    first = sibling_case(0.6, 0.9, 0.5)  # 0.6·0.8 = 0.48 < 0.5: accepted, the sibling is never tried
    assert first.path.tolist() == [[1]] and first.next_token.tolist() == [5]
    assert first.judged.tolist() == [[True, False]] and first.accept.tolist() == [[True, False]]
    second = sibling_case(0.7, 0.6, 0.5)  # 0.56 ≥ 0.5: rejected; 0.6 < 2/3: the point mass is accepted
    assert second.path.tolist() == [[2]] and second.next_token.tolist() == [3] and second.last_node.tolist() == [2]
    assert second.judged.tolist() == [[True, True]] and second.accept.tolist() == [[False, True]]


def test_every_child_rejected_recovers_from_a_residual_without_the_rejected_tokens():
    neither = sibling_case(0.7, 0.7, 0.99)  # 0.7 ≥ 2/3: the point mass on 2 is rejected too → residual δ_0
    assert neither.num_accepted.tolist() == [0] and neither.next_token.tolist() == [0]
    assert neither.judged.tolist() == [[True, True]] and not bool(neither.accept.any())
    # three deterministic siblings (point masses on 1, 2, 3), all rejected: the recovered token is never one of them
    tokens, parents, num_nodes = row([1, 2, 3], [0, 0, 0])
    p = torch.tensor([[dist((0, 0.05), (1, 0.3), (2, 0.3), (3, 0.3), (4, 0.05))] + [dist((5, 1.0))] * 3])
    finals = torch.linspace(0, 1, 201)[:-1]
    u = torch.cat([finals[:, None], torch.full((200, 3), 0.99)], 1)  # r(1) = .3, r(2) = .3/.7, r(3) = .3/.4: rejected
    out = verify_tree(tokens.expand(200, 3), parents.expand(200, 3), num_nodes.expand(200), one_hot(tokens).expand(
        200, 3, V), p.expand(200, 4, V), u)
    assert bool((out.num_accepted == 0).all()) and bool(out.judged.all())
    assert set(out.next_token.tolist()) == {0, 4}  # residual [0.05, 0, 0, 0, 0.05]/0.1: half each
    assert out.next_token.tolist() == [0] * 100 + [4] * 100


def test_empty_tree_is_plain_decoding():
    gen = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(5, 4, V, generator=gen), -1)
    u = torch.rand(5, 4, generator=gen)
    tokens, parents = torch.full((5, 3), -1), torch.full((5, 3), -1)  # three padding columns
    none = torch.zeros(5, dtype=torch.long)
    out = verify_tree(tokens, parents, none, torch.full((5, 3, V), float("nan")), p, u)
    assert torch.equal(out.next_token, sample(p[:, 0], u[:, 0]))
    assert out.num_accepted.tolist() == [0] * 5 and out.path.shape == (5, 0) and not bool(out.judged.any())
    greedy = verify_tree_greedy(tokens, parents, none, p.argmax(-1))
    assert torch.equal(greedy.next_token, p[:, 0].argmax(-1)) and not bool(greedy.judged.any())
    assert greedy.last_node.tolist() == [0] * 5


def test_padding_with_minus_one_never_affects_the_result():
    """The same two-node tree, alone and with three padding columns holding −1, an id past V, NaN distributions
    and NaN draws."""
    gen = torch.Generator().manual_seed(1)
    tokens, parents, num_nodes = row([3, 1], [0, 1])
    q = torch.softmax(torch.randn(1, 2, V, generator=gen), -1)
    p = torch.softmax(torch.randn(1, 3, V, generator=gen), -1)
    nan = float("nan")
    padded = (torch.tensor([[3, 1, -1, V, -1]]), torch.tensor([[0, 1, -1, 7, 0]]), num_nodes,
              torch.cat([q, torch.full((1, 3, V), nan)], 1), torch.cat([p, torch.full((1, 3, V), nan)], 1))
    for _ in range(50):
        u = torch.rand(1, 3, generator=gen)
        alone = verify_tree(tokens, parents, num_nodes, q, p, u)
        out = verify_tree(*padded, torch.cat([u, torch.full((1, 3), nan)], 1))
        assert torch.equal(out.path, alone.path) and torch.equal(out.next_token, alone.next_token)
        assert torch.equal(out.accept[:, :2], alone.accept) and not bool(out.judged[:, 2:].any())
    target = torch.tensor([[3, 1, 4]])
    alone = verify_tree_greedy(tokens, parents, num_nodes, target)
    out = verify_tree_greedy(padded[0], padded[1], num_nodes, torch.cat([target, torch.tensor([[3, 3, 3]])], 1))
    assert torch.equal(out.path, alone.path) and out.next_token.tolist() == alone.next_token.tolist() == [4]
    assert out.accept.tolist() == [[True, True, False, False, False]]


def test_ragged_batch_rows_are_independent():
    """Each row of a batch of different trees gives what it gives alone (at its own width and depth)."""
    gen = torch.Generator().manual_seed(2)
    batch, n = 12, 7
    tokens, parents, num_nodes = random_trees(gen, batch, n)
    q = torch.softmax(torch.randn(batch, n, V, generator=gen) * 2, -1)
    p = torch.softmax(torch.randn(batch, n + 1, V, generator=gen) * 2, -1)
    u = torch.rand(batch, n + 1, generator=gen)
    target = greedy_targets(gen, tokens, parents, num_nodes)
    out = verify_tree(tokens, parents, num_nodes, q, p, u)
    greedy = verify_tree_greedy(tokens, parents, num_nodes, target)
    assert len(set(num_nodes.tolist())) > 3 and int(greedy.num_accepted.max()) >= 2
    for b in range(batch):
        k = int(num_nodes[b])
        args = tokens[b : b + 1, :k], parents[b : b + 1, :k], num_nodes[b : b + 1]
        alone = verify_tree(*args, q[b : b + 1, :k], p[b : b + 1, : k + 1], u[b : b + 1, : k + 1])
        alone_greedy = verify_tree_greedy(*args, target[b : b + 1, : k + 1])
        for got, want in ((out, alone), (greedy, alone_greedy)):
            d = want.path.shape[1]
            assert torch.equal(got.path[b : b + 1, :d], want.path) and bool((got.path[b, d:] == -1).all())
            assert got.num_accepted[b] == want.num_accepted[0] and got.next_token[b] == want.next_token[0]
            assert torch.equal(got.accept[b : b + 1, :k], want.accept) and torch.equal(got.judged[b : b + 1, :k],
                                                                                       want.judged)
            assert not bool(got.judged[b, k:].any())


def test_one_hot_sampled_tree_equals_greedy_tree_on_random_trees():
    gen = torch.Generator().manual_seed(3)
    tokens, parents, num_nodes = random_trees(gen, 64, 9)
    target = greedy_targets(gen, tokens, parents, num_nodes)
    greedy = verify_tree_greedy(tokens, parents, num_nodes, target)
    sampled = verify_tree(tokens, parents, num_nodes, one_hot(tokens.clamp(min=0)), one_hot(target),
                          torch.rand(64, 10, generator=gen))
    assert torch.equal(sampled.path, greedy.path) and torch.equal(sampled.next_token, greedy.next_token)
    assert torch.equal(sampled.num_accepted, greedy.num_accepted)
    assert torch.equal(sampled.accept, greedy.accept & sampled.judged)  # the same tests, where they were run
    assert int(greedy.num_accepted.max()) >= 3


def test_greedy_telemetry_replays_any_sub_tree():
    """The first k columns of a tree (parents come first) form a sub-tree; its verdict follows from the full tree's
    accept flags: the same flags, and the path that walks them from the root."""
    gen = torch.Generator().manual_seed(6)
    tokens, parents, num_nodes = random_trees(gen, 64, 9)
    target = greedy_targets(gen, tokens, parents, num_nodes)
    full = verify_tree_greedy(tokens, parents, num_nodes, target)
    for k in range(10):
        sub = verify_tree_greedy(tokens, parents, num_nodes.clamp(max=k), target)
        assert torch.equal(sub.accept, full.accept & (torch.arange(9) < k))
        for b in range(64):  # replay: from the root, step to the (first) accepted child while there is one
            node, walked = 0, []
            while True:
                kids = [j for j in range(min(k, int(num_nodes[b]))) if int(parents[b, j]) == node and full.accept[b, j]]
                if not kids:
                    break
                node = kids[0] + 1
                walked.append(node)
            assert sub.path[b, : len(walked)].tolist() == walked and int(sub.num_accepted[b]) == len(walked)
            assert int(sub.next_token[b]) == int(target[b, node])


def chain(draft: torch.Tensor, num_draft: torch.Tensor):
    batch, k = draft.shape
    return draft, torch.arange(k).expand(batch, k), num_draft


def test_chain_equals_verify_sampled_on_random_batches():
    """parents[b, j] = j: verify's results; its draws [B, K+1] keep the final draw last, the tree's first."""
    gen = torch.Generator().manual_seed(4)
    for trial in range(150):
        batch, k = 8, int(torch.randint(0, 6, (1,), generator=gen))
        logits = torch.randn(batch, 2 * k + 1, V, generator=gen) * 2
        top_k = torch.full((batch,), 3 if trial % 2 else 0)  # zero-mass tokens in half the trials
        ones = torch.ones(batch)
        p = to_probs(logits[:, : k + 1], ones, top_k, ones)
        q = to_probs(logits[:, : k + 1][:, :k] + logits[:, k + 1 :], ones, top_k, ones)
        draft = sample(q.reshape(-1, V), torch.rand(batch * k, generator=gen)).reshape(batch, k)
        num_draft = torch.randint(0, k + 1, (batch,), generator=gen)
        u = torch.rand(batch, k + 1, generator=gen)
        n, nxt, accept = verify(draft, num_draft, q, p, u)
        tree = verify_tree(*chain(draft, num_draft), q, p, torch.cat([u[:, k:], u[:, :k]], 1))
        assert torch.equal(tree.num_accepted, n) and torch.equal(tree.next_token, nxt)
        judged = torch.arange(k) < torch.minimum(num_draft, n + 1)[:, None]  # up to and including the rejection
        assert torch.equal(tree.judged, judged) and torch.equal(tree.accept, accept & judged)
        assert torch.equal(tree.path, torch.where(torch.arange(k) < n[:, None], torch.arange(1, k + 1), -1)[
            :, : tree.path.shape[1]])


def test_chain_equals_verify_greedy_on_random_batches():
    gen = torch.Generator().manual_seed(5)
    for _ in range(150):
        batch, k = 8, int(torch.randint(0, 6, (1,), generator=gen))
        draft = torch.randint(0, 3, (batch, k), generator=gen)  # small vocab: many matches and mismatches
        target = torch.randint(0, 3, (batch, k + 1), generator=gen)
        num_draft = torch.randint(0, k + 1, (batch,), generator=gen)
        n, nxt, accept = verify_greedy(draft, num_draft, target)
        tree = verify_tree_greedy(*chain(draft, num_draft), target)
        assert torch.equal(tree.num_accepted, n) and torch.equal(tree.next_token, nxt)
        assert torch.equal(tree.accept, accept)  # every real node's own test, as verify_greedy's telemetry
        assert torch.equal(tree.judged, torch.arange(k) < num_draft[:, None])


def test_float64_draw_just_below_one_stays_in_support():
    """vLLM's scenario through the tree: sampled (plain decoding), recovered and bonus tokens."""
    u = torch.full((1, 2), NEAR_ONE, dtype=torch.float64)
    nothing = verify_tree(torch.zeros(1, 0, dtype=torch.long), torch.zeros(1, 0, dtype=torch.long),
                          torch.tensor([0]), torch.zeros(1, 0, V), torch.tensor([[VLLM_P]]), u[:, :1])
    assert nothing.next_token.tolist() == [1]
    tokens, parents, num_nodes = row([2], [0])
    # recovered: the point mass on 2 is rejected (u·1 ≥ 0.5), residual ∝ [0.2, 0.8, 0, …]
    p = torch.tensor([[dist((0, 0.1), (1, 0.4), (2, 0.5)), dist((0, 1.0))]])
    out = verify_tree(tokens, parents, num_nodes, one_hot([[2]]), p, u)
    assert out.num_accepted.tolist() == [0] and out.next_token.tolist() == [1]
    # bonus: 2 is accepted (p(2) = 1) and is a leaf; p there is VLLM_P
    p = torch.tensor([[dist((2, 1.0)), VLLM_P]])
    out = verify_tree(tokens, parents, num_nodes, one_hot([[2]]), p, u)
    assert out.num_accepted.tolist() == [1] and out.next_token.tolist() == [1]


def test_empty_residual_falls_back_to_p():
    """q(3) a rounding above p(3) = 1 and a draw near 1 reject token 3, leaving max(0, p − q) = 0: p is used."""
    tokens, parents, num_nodes = row([3, 5], [0, 0])
    q = torch.tensor([[dist((3, 1 + 1e-6)), dist((5, 1.0))]])
    p = torch.tensor([[dist((3, 1.0)), dist((0, 1.0)), dist((0, 1.0))]])
    out = verify_tree(tokens, parents, num_nodes, q, p, torch.tensor([[0.5, 1 - 1e-7, 0.5]]))
    assert out.judged.tolist() == [[True, True]] and not bool(out.accept.any())  # 5 is tried against r = p: r(5) = 0
    assert out.next_token.tolist() == [3]


# ---------------------------------------------------------------- statistical tier


def pvalue(stat: float, dof: int) -> float:
    return float(torch.special.gammaincc(torch.tensor(dof / 2.0), torch.tensor(stat / 2.0)))


def grouped_chi2_pvalue(observed: torch.Tensor, expected_probs: torch.Tensor) -> float:
    """Rows of ``observed`` [G, V] are independent samples, each of the law in the same row of ``expected_probs``."""
    stats = [chi2_stat(o, e) for o, e in zip(observed, expected_probs) if o.sum() > 0]
    return pvalue(sum(s for s, _ in stats), sum(d for _, d in stats))


STAT_V = 8  # top-k 4 keeps a support the root's three children cannot cover, so every branch runs
PROCESSING = {"temperature": (1.3, 0, 1.0), "top_k": (1.0, 4, 1.0), "top_p": (1.0, 0, 0.9)}


def top_excluding(scores: torch.Tensor, *taken: torch.Tensor) -> torch.Tensor:
    """[B] the highest-scoring token not yet taken (a deterministic sibling); ties go to the lower id."""
    scores = scores.clone()
    for t in taken:
        scores[torch.arange(len(t)), t] = float("-inf")
    return scores.argmax(-1)


@pytest.mark.parametrize("first_child", ["sampled", "deterministic"])
@pytest.mark.parametrize("processing", list(PROCESSING))
def test_tree_output_has_the_target_law(processing, first_child):
    """A bigram target: p(root) = p0, and after token x the next token's law is P2[x]; the draft's are q0, Q2.
    Tree (column: node): 0: x1, root's first child, drawn from q0 ("sampled") or q0's top token (a point mass);
    1, 2: x2, x3, q0's top tokens other than the earlier siblings (point masses); 3: x4, x1's child, from Q2[x1] or
    its top token; 4: x5, Q2[x1]'s top token other than x4. The first two emitted tokens must be p0 ⊗ P2: the first
    alone; the second given that the first was an accepted child; and, finishing rows that emitted one token with a
    plain step from P2[t1], the joint law of both. (Which branches can run depends on p and q: the seeds are fixed
    where every branch does.)"""
    temperature, top_k, top_p = PROCESSING[processing]
    gen = torch.Generator().manual_seed(7 + list(PROCESSING).index(processing))
    rows, v = 30000, STAT_V

    def probs(logits):  # to_probs for one row of settings, applied to [n, V] logits
        n = len(logits)
        return to_probs(logits, torch.full((n,), temperature), torch.full((n,), top_k), torch.full((n,), top_p))

    p_logits = torch.randn(v + 1, v, generator=gen) * 1.5  # row 0: the root; row 1 + x: after token x
    p_all = probs(p_logits)
    q_all = probs(p_logits + 0.7 * torch.randn(v + 1, v, generator=gen))  # a related draft
    p0, big_p, q0, big_q = p_all[0], p_all[1:], q_all[0], q_all[1:]
    if processing != "temperature":
        assert bool((p_all == 0).any()) and bool((q_all == 0).any())  # zero-mass tokens in p and in q

    b = torch.arange(rows)
    draws = torch.rand(rows, 8, dtype=torch.float64, generator=gen)
    if first_child == "sampled":
        x1 = sample(q0.expand(rows, v), draws[:, 6])
        q1 = q0.expand(rows, v)
    else:
        x1 = q0.argmax().expand(rows)
        q1 = torch.nn.functional.one_hot(x1, v).float()
    x2 = top_excluding(q0.expand(rows, v), x1)
    x3 = top_excluding(q0.expand(rows, v), x1, x2)
    if first_child == "sampled":
        x4 = sample(big_q[x1], draws[:, 7])
        q4 = big_q[x1]
    else:
        x4 = big_q[x1].argmax(-1)
        q4 = torch.nn.functional.one_hot(x4, v).float()
    x5 = top_excluding(big_q[x1], x4)
    tokens = torch.stack([x1, x2, x3, x4, x5], 1)
    parents = torch.tensor([0, 0, 0, 1, 1]).expand(rows, 5)
    point = torch.nn.functional.one_hot(tokens, v).float()
    q = torch.stack([q1, point[:, 1], point[:, 2], q4, point[:, 4]], 1)
    p = torch.cat([p0.expand(rows, 1, v), big_p[tokens]], 1)  # node i's law: the bigram's after its token
    out = verify_tree(tokens, parents, torch.full((rows,), 5), q, p, draws[:, :6])

    path_tokens = tokens.gather(1, (out.path.clamp(min=1) - 1))  # [B, 2]
    first = torch.where(out.num_accepted >= 1, path_tokens[:, 0], out.next_token)
    second = torch.where(out.num_accepted >= 2, path_tokens[:, 1], out.next_token)
    # rows that emitted one token take a plain step from P2[first]; the draw is fresh (unused by the tree)
    fresh = torch.rand(rows, dtype=torch.float64, generator=gen)
    second = torch.where(out.num_accepted >= 1, second, sample(big_p[first], fresh))

    # every branch ran: the root's later siblings accepted, depth 2 reached, and every child of the root rejected
    # wherever p0 has mass outside them (elsewhere that has probability 0: the recovered token would lie outside)
    assert bool(out.accept[:, 1:3].any()) and bool((out.num_accepted == 2).any())
    outside = (p0 * (1 - point[:, :3].sum(1))).sum(-1)  # [B] p0's mass off the root's children
    assert bool((out.num_accepted == 0).any()) == bool((outside > 0.01).any())
    assert not bool((out.num_accepted[outside == 0] == 0).any())
    # χ² drops cells of zero expectation, so the support is checked on its own: no token of probability 0
    assert bool((p0[first] > 0).all()) and bool((big_p[first, second] > 0).all())
    assert chi2_pvalue(torch.bincount(first, minlength=v), p0) > 1e-3
    child = out.num_accepted >= 1
    conditional = torch.zeros(v, v).index_put_((first[child], second[child]), torch.ones(int(child.sum())),
                                               accumulate=True)
    assert grouped_chi2_pvalue(conditional, big_p) > 1e-3
    joint = torch.bincount(first * v + second, minlength=v * v).float()
    assert chi2_pvalue(joint, p0[:, None] * big_p) > 1e-3
