"""Verification as pure, batched, ragged functions.

Notation (as in the speculative-sampling papers and gpt-fast): ``q`` is the draft's distribution, ``p`` the
target's. Each row b proposes ``num_draft[b]`` tokens (0 ≤ num_draft ≤ K; columns past it are padding).

Glossary (vLLM's): *accepted* tokens are the drafted prefix the target keeps; after the first rejection the target
emits a *recovered* token sampled from norm(max(0, p − q)); when every draft is accepted it emits a *bonus* token
sampled from p at the next position. Either way a step commits ``num_accepted + 1`` tokens.

Greedy decoding is the same rule with one-hot distributions (see :func:`to_probs`): accepting with probability
min(1, p/q) then means "accept while draft == target argmax", and the recovered token is the target's argmax, so
one code path serves both and greedy output is exactly the target's own.
"""

from __future__ import annotations

import torch


def to_probs(
    logits: torch.Tensor,  # [B, ..., V]
    temperature: torch.Tensor,  # [B] 0 = greedy
    top_k: torch.Tensor,  # [B] 0 = off
    top_p: torch.Tensor,  # [B] 1 = off
) -> torch.Tensor:  # [B, ..., V] float32 probabilities
    """The distribution a request samples from: temperature, then top-k, then top-p; one-hot argmax if greedy.

    Applied identically to draft and target logits, so that speculative sampling reproduces the *processed*
    target distribution exactly.
    """
    batch, vocab = logits.shape[0], logits.shape[-1]
    assert temperature.shape == top_k.shape == top_p.shape == (batch,)
    view = (batch,) + (1,) * (logits.dim() - 1)  # broadcast per-row parameters
    if bool((temperature == 0).all()):  # all greedy: skip the softmax work (this runs once per drafted position)
        return torch.nn.functional.one_hot(logits.argmax(dim=-1), vocab).float()
    logits = logits.float()
    greedy = (temperature == 0).view(view)
    scaled = logits / torch.where(temperature == 0, 1.0, temperature).view(view)
    k = torch.where(top_k > 0, top_k.clamp(max=vocab), vocab)
    if bool((k < vocab).any()) or bool((top_p < 1).any()):
        sorted_logits, order = torch.sort(scaled, dim=-1, descending=True)
        rank = torch.arange(vocab, device=logits.device)
        drop = rank >= k.view(view)  # top-k
        sorted_probs = torch.softmax(sorted_logits.masked_fill(drop, float("-inf")), dim=-1)
        # top-p: drop a token when the tokens ranked above it already reach top_p (the first always stays)
        drop = drop | ((torch.cumsum(sorted_probs, dim=-1) - sorted_probs) >= top_p.view(view))
        scaled = scaled.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = torch.softmax(scaled, dim=-1)
    one_hot = torch.nn.functional.one_hot(logits.argmax(dim=-1), vocab).float()
    return torch.where(greedy, one_hot, probs)


def sample(
    probs: torch.Tensor,  # [B, V] ≥ 0, any float dtype; rows need not be normalised but must have positive mass
    uniforms: torch.Tensor,  # [B] in [0, 1), any float dtype
) -> torch.Tensor:  # [B] token ids, each with positive mass in its row
    """Inverse-CDF sampling: the randomness is a per-row uniform, so each row's draws depend on its own seed only.

    The token is the first id whose cumulative mass exceeds u·total. The CDF and u·total are computed in float64,
    where every float16/bfloat16/float32/float64 value is exact and u < 1 keeps u·total below the total (a cast of
    u to float32 would round 1 − 1e-9 up to 1.0 and run past the CDF). Whatever rounding still does (a parallel
    cumsum need not be monotone to the last ulp) the result stays in the support: an id with zero mass moves to the
    next id with positive mass, and nothing goes past the row's last id with positive mass.
    """
    batch, vocab = probs.shape
    assert uniforms.shape == (batch,)
    weights = probs.double()
    cdf = torch.cumsum(weights, dim=-1)
    target = uniforms.double()[:, None] * cdf[:, -1:]
    token = torch.searchsorted(cdf, target, right=True).clamp(max=vocab - 1)  # [B, 1]
    ids = torch.arange(vocab, device=probs.device)
    positive = weights > 0
    # following[b, i]: the first id ≥ i with positive mass (vocab if none); last[b]: the last id with positive mass
    following = torch.where(positive, ids, vocab).flip(-1).cummin(dim=-1).values.flip(-1)
    last = torch.where(positive, ids, -1).amax(dim=-1)
    return torch.minimum(following.gather(1, token).squeeze(1), last).clamp(min=0)


def verify(
    draft_tokens: torch.Tensor,  # [B, K] proposed tokens; columns at or past num_draft are padding: any id, −1 too
    num_draft: torch.Tensor,  # [B] real proposals per row, 0..K
    q: torch.Tensor,  # [B, K, V] draft distributions the proposals were sampled from
    p: torch.Tensor,  # [B, K+1, V] target distributions at the K+1 verified positions
    uniforms: torch.Tensor,  # [B, K+1] accept draws for the K positions, last column for the final token
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # num_accepted [B], next_token [B], accept [B, K]
    """Lossless speculative verification (Leviathan et al. 2023; Chen et al. 2023), ragged over rows.

    Returns the accepted-prefix length, the recovered/bonus token, and each position's own accept test (only the
    prefix up to the first failure affects the output; the rest is kept for telemetry).

    Padding (columns at or past ``num_draft[b]`` of ``draft_tokens``, ``q`` and the accept draws, and ``p`` past
    ``num_draft[b]``) never affects the result: the tokens may hold any id (−1 is vLLM's placeholder) and the
    distributions anything, NaN included.
    """
    batch, k = draft_tokens.shape
    assert num_draft.shape == (batch,) and q.shape[:2] == (batch, k) and p.shape[:2] == (batch, k + 1)
    assert uniforms.shape == (batch, k + 1)
    rows = torch.arange(batch, device=p.device)
    real = torch.arange(k, device=p.device) < num_draft[:, None]  # [B, K]
    tokens = torch.where(real, draft_tokens, 0)  # padding may be −1 (or any id): read a valid one, masked below
    p_draft = p[:, :k].gather(-1, tokens[..., None]).squeeze(-1)  # [B, K] p(x) of each proposal
    q_draft = q.gather(-1, tokens[..., None]).squeeze(-1)  # [B, K] q(x)
    # accept x with probability min(1, p(x)/q(x))  ⇔  u·q(x) < p(x)
    accept = (uniforms[:, :k] * q_draft < p_draft) & real
    num_accepted = torch.cumprod(accept.long(), dim=1).sum(dim=1)  # length of the accepted prefix
    # final token: recovered from norm(max(0, p − q)) after a rejection, bonus from p when all were accepted
    p_next = p[rows, num_accepted]  # [B, V]
    rejected = num_accepted < num_draft
    q_next = torch.where(rejected[:, None], q[rows, num_accepted.clamp(max=max(k - 1, 0))] if k else 0.0, 0.0)
    residual = (p_next - q_next).clamp(min=0)
    # p == q up to rounding leaves no residual mass; the rejection then had probability ~0, so p is exact enough
    empty = residual.sum(dim=-1, keepdim=True) <= 1e-12
    residual = torch.where(empty, p_next, residual)
    return num_accepted, sample(residual, uniforms[:, k]), accept


def verify_greedy(
    draft_tokens: torch.Tensor,  # [B, K] proposed tokens; columns at or past num_draft are padding: any id, −1 too
    num_draft: torch.Tensor,  # [B] real proposals per row, 0..K
    target_tokens: torch.Tensor,  # [B, K+1] the target's argmax at the K+1 verified positions
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # num_accepted [B], next_token [B], accept [B, K]
    """:func:`verify` for all-greedy batches, on token ids instead of one-hot distributions (same results, no
    [B, K, V] tensors): accept while the draft equals the target's argmax; the final token is the target's argmax."""
    batch, k = draft_tokens.shape
    assert num_draft.shape == (batch,) and target_tokens.shape == (batch, k + 1)
    accept = (draft_tokens == target_tokens[:, :k]) & (torch.arange(k, device=draft_tokens.device) < num_draft[:, None])
    num_accepted = torch.cumprod(accept.long(), dim=1).sum(dim=1)
    return num_accepted, target_tokens.gather(1, num_accepted[:, None]).squeeze(1), accept
