"""Exact cases with hand-built logits: the verification rule, ragged, greedy and sampled."""

from __future__ import annotations

import torch

from speckv.verify import sample, to_probs, verify, verify_greedy

V = 6


def one_hot(*tokens: int) -> torch.Tensor:  # [len, V]
    return torch.nn.functional.one_hot(torch.tensor(tokens), V).float()


def greedy_case(draft: list[int], target_argmax: list[int]):
    """One row: drafted tokens vs the target's argmax at each of the len(draft)+1 positions."""
    k = len(draft)
    q = one_hot(*draft)[None] if k else torch.zeros(1, 0, V)
    p = one_hot(*target_argmax)[None]
    tokens = torch.tensor([draft], dtype=torch.long).reshape(1, k)
    out = verify(tokens, torch.tensor([k]), q, p, torch.zeros(1, k + 1))
    fast = verify_greedy(tokens, torch.tensor([k]), torch.tensor([target_argmax]))
    assert all(torch.equal(a, b) for a, b in zip(out, fast)), "the token-id fast path must agree with verify"
    return out


def test_perfect_match_accepts_all_and_adds_bonus():
    n, nxt, accept = greedy_case([1, 2, 3], [1, 2, 3, 4])
    assert n.item() == 3 and nxt.item() == 4
    assert accept.tolist() == [[True, True, True]]


def test_first_token_mismatch_recovers_target_token():
    n, nxt, _ = greedy_case([5, 2, 3], [1, 2, 3, 4])
    assert n.item() == 0 and nxt.item() == 1


def test_mid_mismatch_keeps_prefix():
    n, nxt, accept = greedy_case([1, 2, 0], [1, 2, 3, 4])
    assert n.item() == 2 and nxt.item() == 3
    assert accept.tolist() == [[True, True, False]]


def test_empty_draft_is_plain_decoding():
    n, nxt, accept = greedy_case([], [4])
    assert n.item() == 0 and nxt.item() == 4 and accept.shape == (1, 0)


def test_ragged_batch_rows_are_independent():
    # row 0: 3 drafted, all right (bonus); row 1: 1 drafted, wrong; row 2: nothing drafted; row 3: 2 of 3 right
    draft = torch.tensor([[1, 2, 3], [0, 0, 0], [0, 0, 0], [3, 3, 1]])
    num_draft = torch.tensor([3, 1, 0, 3])
    q = torch.nn.functional.one_hot(draft, V).float()
    target = torch.tensor([[1, 2, 3, 4], [5, 1, 1, 1], [2, 0, 0, 0], [3, 3, 0, 5]])
    p = torch.nn.functional.one_hot(target, V).float()
    n, nxt, _ = verify(draft, num_draft, q, p, torch.zeros(4, 4))
    assert n.tolist() == [3, 0, 0, 2]
    assert nxt.tolist() == [4, 5, 2, 0]
    fast_n, fast_nxt, _ = verify_greedy(draft, num_draft, target)
    assert fast_n.tolist() == n.tolist() and fast_nxt.tolist() == nxt.tolist()


def test_greedy_fast_path_equals_one_hot_verify_on_random_batches():
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        k = int(torch.randint(0, 5, (1,), generator=gen))
        draft = torch.randint(0, 3, (5, k), generator=gen)  # small vocab: many matches and mismatches
        target = torch.randint(0, 3, (5, k + 1), generator=gen)
        num_draft = torch.randint(0, k + 1, (5,), generator=gen)
        q = torch.nn.functional.one_hot(draft, V).float()
        p = torch.nn.functional.one_hot(target, V).float()
        slow = verify(draft, num_draft, q, p, torch.zeros(5, k + 1))
        fast = verify_greedy(draft, num_draft, target)
        assert all(torch.equal(a, b) for a, b in zip(slow, fast))


def test_padding_past_num_draft_is_ignored():
    # the padding column holds the target's token, but num_draft=1 means it was never proposed
    draft = torch.tensor([[2, 4]])
    p = one_hot(2, 3, 1)[None]
    q = one_hot(2, 4)[None]
    n, nxt, _ = verify(draft, torch.tensor([1]), q, p, torch.zeros(1, 3))
    assert n.item() == 1 and nxt.item() == 3  # bonus from position 1, not a verdict on column 1


def test_sampled_acceptance_follows_p_over_q():
    # p(x)=0.3, q(x)=0.6: accept iff u < 0.5
    p = torch.tensor([[[0.3, 0.7, 0, 0, 0, 0], [1.0, 0, 0, 0, 0, 0]]])
    q = torch.tensor([[[0.6, 0.4, 0, 0, 0, 0]]])
    draft = torch.tensor([[0]])
    accepted, _, _ = verify(draft, torch.tensor([1]), q, p, torch.tensor([[0.49, 0.5]]))
    rejected, recovered, _ = verify(draft, torch.tensor([1]), q, p, torch.tensor([[0.51, 0.5]]))
    assert accepted.item() == 1 and rejected.item() == 0
    assert recovered.item() == 1  # residual max(0, p − q) has all its mass on token 1


def test_bonus_is_sampled_from_target_next_position():
    p = torch.tensor([[[1.0, 0, 0, 0, 0, 0], [0, 0, 0.5, 0.5, 0, 0]]])
    q = torch.tensor([[[1.0, 0, 0, 0, 0, 0]]])
    draft = torch.tensor([[0]])
    _, low, _ = verify(draft, torch.tensor([1]), q, p, torch.tensor([[0.0, 0.25]]))
    _, high, _ = verify(draft, torch.tensor([1]), q, p, torch.tensor([[0.0, 0.75]]))
    assert (low.item(), high.item()) == (2, 3)


def test_to_probs_greedy_is_one_hot_and_filters_apply():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, -3.0, 0.0]] * 3)
    probs = to_probs(logits, torch.tensor([0.0, 1.0, 1.0]), torch.tensor([0, 2, 0]), torch.tensor([1.0, 1.0, 0.5]))
    assert probs[0].tolist() == [1, 0, 0, 0, 0, 0]
    assert (probs[1] > 0).tolist() == [True, True, False, False, False, False]  # top-k=2
    assert abs(probs[1].sum().item() - 1) < 1e-6
    full = torch.softmax(logits[2], -1)
    assert full[0] >= 0.5 and (probs[2] > 0).tolist() == [True, False, False, False, False, False]  # top-p=0.5


def test_inverse_cdf_sampling_skips_zero_mass():
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.5, 0, 0]] * 3)
    assert sample(probs, torch.tensor([0.0, 0.49, 0.99])).tolist() == [1, 1, 3]


# ---------------------------------------------------------------- sampling stays inside the support

NEAR_ONE = 1 - 1e-9  # vLLM's rejection-sampler scenario: a float64 draw that a float32 cast rounds up to 1.0
VLLM_P = [0.2, 0.8, 0, 0, 0, 0, 0, 0]  # the old code clamped the run-past to id 7, which has probability 0


def test_sample_float64_draw_just_below_one_stays_in_support():
    u = torch.tensor([NEAR_ONE], dtype=torch.float64)
    assert sample(torch.tensor([VLLM_P]), u).item() == 1
    assert sample(torch.tensor([VLLM_P], dtype=torch.bfloat16), u).item() == 1


def test_verify_recovered_and_bonus_tokens_with_draw_just_below_one():
    u = torch.full((1, 2), NEAR_ONE, dtype=torch.float64)
    draft, q = torch.tensor([[2]]), torch.tensor([[[0.0, 0, 1, 0, 0, 0, 0, 0]]])
    # recovered: the point mass on 2 is rejected (u·1 ≥ 0.5); residual max(0, p − q) ∝ [0.2, 0.8, 0, …]
    p = torch.tensor([[[0.1, 0.4, 0.5, 0, 0, 0, 0, 0], [1.0, 0, 0, 0, 0, 0, 0, 0]]])
    n, nxt, _ = verify(draft, torch.tensor([1]), q, p, u)
    assert (n.item(), nxt.item()) == (0, 1)
    # bonus: 2 is accepted (p(2) = 1), the bonus comes from p at the next position = VLLM_P
    p = torch.tensor([[[0.0, 0, 1, 0, 0, 0, 0, 0], VLLM_P]])
    n, nxt, _ = verify(draft, torch.tensor([1]), q, p, u)
    assert (n.item(), nxt.item()) == (1, 1)


SUPPORT_ROWS = [  # first and last positive masses are ≥ 1/10 of the row's total; some rows are not normalised
    VLLM_P,
    [0, 0, 0.5, 0, 0.3, 0, 0.2, 0],
    [0, 3.0, 0, 0, 0, 0, 0, 7.0],
    [1e-3, 0, 0, 2e-3, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 1.0, 0, 0],
    [0.1, 0.7, 0.2, 0, 0, 0, 0, 0],  # sums to slightly more than 1 in float32
    [0.3, 1e-6, 0, 1e-7, 0, 0, 0.4, 0],
]


def test_sample_draws_near_zero_and_one_for_every_dtype():
    """Each dtype's smallest draws give the row's first positive id, its largest below 1 the last one; never a
    zero-mass id, whatever the draw's or the probabilities' dtype."""
    for probs_dtype in (torch.float32, torch.bfloat16, torch.float64):
        probs = torch.tensor(SUPPORT_ROWS, dtype=probs_dtype)
        rows = len(SUPPORT_ROWS)
        positive = probs > 0
        first = positive.long().argmax(-1)
        last = 7 - positive.flip(-1).long().argmax(-1)
        for u_dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            info = torch.finfo(u_dtype)
            below_one = 1 - info.eps / 2  # the largest value below 1 in this dtype
            for value, expected in [(0.0, first), (info.smallest_normal, first), (info.eps, first),
                                    (below_one, last), (below_one - info.eps / 2, last), (1 - 2 * info.eps, last)]:
                u = torch.full((rows,), value, dtype=torch.float64).to(u_dtype)
                assert float(u.max()) < 1
                token = sample(probs, u)
                assert bool(positive[torch.arange(rows), token].all()), (probs_dtype, u_dtype, value, token)
                assert token.tolist() == expected.tolist(), (probs_dtype, u_dtype, value)


def test_sample_random_rows_with_zero_mass_never_leave_the_support():
    gen = torch.Generator().manual_seed(0)
    rows, v = 4000, 8
    probs = torch.rand(rows, v, generator=gen) * (torch.rand(rows, v, generator=gen) < 0.4)
    probs[torch.arange(rows), torch.randint(0, v, (rows,), generator=gen)] += 1e-3  # every row has some mass
    edges = torch.tensor([0.0, 1e-300, 1 - 1e-9, 1 - 2**-53], dtype=torch.float64)
    draws = torch.cat([torch.rand(rows - len(edges), generator=gen, dtype=torch.float64), edges])
    for dtype in (torch.float32, torch.bfloat16):
        token = sample(probs.to(dtype), draws)
        assert bool((probs.to(dtype)[torch.arange(rows), token] > 0).all())


# ---------------------------------------------------------------- padding ids

def test_minus_one_padding_past_num_draft_never_affects_the_result():
    """vLLM pads drafts with −1; padded columns (tokens, q, p past num_draft, draws) may hold anything."""
    gen = torch.Generator().manual_seed(1)
    q = torch.softmax(torch.randn(3, 1, V, generator=gen), -1)
    p = torch.softmax(torch.randn(3, 2, V, generator=gen), -1)
    draft = torch.multinomial(q[:, 0], 1, generator=gen)
    u = torch.rand(3, 2, generator=gen)
    expected = verify(draft, torch.ones(3, dtype=torch.long), q, p, u)
    nan = float("nan")
    for pad in (-1, V, 0):
        padded = torch.cat([draft, torch.full((3, 2), pad)], 1)
        q_pad = torch.cat([q, torch.full((3, 2, V), nan)], 1)
        p_pad = torch.cat([p, torch.full((3, 2, V), nan)], 1)
        u_pad = torch.cat([u[:, :1], torch.full((3, 2), nan), u[:, 1:]], 1)
        out = verify(padded, torch.ones(3, dtype=torch.long), q_pad, p_pad, u_pad)
        assert torch.equal(out[0], expected[0]) and torch.equal(out[1], expected[1])
        assert torch.equal(out[2][:, :1], expected[2]) and not bool(out[2][:, 1:].any())
        target = torch.cat([p.argmax(-1), torch.zeros(3, 2, dtype=torch.long)], 1)
        fast = verify_greedy(padded, torch.ones(3, dtype=torch.long), target)
        assert torch.equal(fast[0], verify_greedy(draft, torch.ones(3, dtype=torch.long), target[:, :2])[0])
