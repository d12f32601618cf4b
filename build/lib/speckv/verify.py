"""Verification as pure, batched, ragged functions.

Notation (as in the speculative-sampling papers and gpt-fast): ``q`` is the draft's distribution, ``p`` the
target's. Each row b proposes ``num_draft[b]`` tokens (0 ≤ num_draft ≤ K; columns past it are padding).

Glossary (vLLM's): *accepted* tokens are the drafted prefix the target keeps; after the first rejection the target
emits a *recovered* token sampled from norm(max(0, p − q)); when every draft is accepted it emits a *bonus* token
sampled from p at the next position. Either way a step commits ``num_accepted + 1`` tokens.

Greedy decoding is the same rule with one-hot distributions (see :func:`to_probs`): accepting with probability
min(1, p/q) then means "accept while draft == target argmax", and the recovered token is the target's argmax, so
one code path serves both and greedy output is exactly the target's own.

Trees (:func:`verify_tree`, :func:`verify_tree_greedy`): one target forward scores every node of a token tree per
row. Node 0 is the *root*, the row's pending token (the last committed one); nodes 1..N are candidates, and column j
of the node tensors describes node j+1. A node's *parent* comes before it (topological order); nodes sharing a
parent are *siblings*, tried in column order. A node proposed without a distribution (a prompt-lookup continuation,
a deterministic top-k sibling) has a *point mass* q, one-hot on its token. The *path* is the accepted chain of nodes
from the root; the step commits its tokens and then the recovered or bonus token, ``num_accepted + 1`` in all. A
chain (node j+1's parent is node j) is exactly :func:`verify` / :func:`verify_greedy`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

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


# ---------------------------------------------------------------------------------------------------- token trees


@dataclass
class TreeVerdict:
    """The outcome of verifying one token tree per row (B rows, N candidate nodes, D the batch's deepest node)."""

    num_accepted: torch.Tensor  # [B] accepted nodes on the path, root excluded, 0..D
    path: torch.Tensor  # [B, D] the accepted nodes' indices (1..N) from the root down, −1 past num_accepted
    next_token: torch.Tensor  # [B] recovered token after a rejection, bonus token at a node without children
    accept: torch.Tensor  # [B, N] bool, column j for node j+1: greedy, token == target argmax at the parent for
    #                       every real node (replayable: any sub-tree's outcome follows from it); sampled, the
    #                       outcome of the node's own accept test where it was run, False elsewhere
    judged: torch.Tensor  # [B, N] bool: the node's test was run (greedy: every real node; sampled: nodes tried)

    @property
    def last_node(self) -> torch.Tensor:  # [B] the last accepted node, 0 (the root) when none was accepted
        if self.path.shape[1] == 0:
            return torch.zeros_like(self.num_accepted)
        last = self.path.gather(1, (self.num_accepted - 1).clamp(min=0)[:, None]).squeeze(1)
        return torch.where(self.num_accepted > 0, last, 0)


class _Tree(NamedTuple):
    real: torch.Tensor  # [B, N] bool: column j < num_nodes
    token: torch.Tensor  # [B, N] node tokens, 0 on padding (so that padding ids such as −1 can be gathered)
    parent: torch.Tensor  # [B, N] parent node index 0..j, 0 on padding (masked by ``real`` wherever it matters)
    depth: torch.Tensor  # [B, N] 1 for the root's children, 0 on padding
    earlier: torch.Tensor  # [B, N, N] bool: column k is a real sibling of column j before it (k < j)
    rank: torch.Tensor  # [B, N] number of earlier siblings: the order in which siblings are tried
    max_depth: int  # D, deepest real node of the batch (0 if no row has one)


def _tree(tokens: torch.Tensor, parents: torch.Tensor, num_nodes: torch.Tensor) -> _Tree:
    batch, n = tokens.shape
    assert parents.shape == (batch, n) and num_nodes.shape == (batch,)
    cols = torch.arange(n, device=tokens.device)
    real = cols < num_nodes[:, None]
    assert bool(((num_nodes >= 0) & (num_nodes <= n)).all()), "num_nodes must be in 0..N"
    assert bool((((parents >= 0) & (parents <= cols)) | ~real).all()), "node j+1's parent must be in 0..j"
    parent = torch.where(real, parents, 0)
    token = torch.where(real, tokens, 0)
    # depth by pointer jumping over the N+1 nodes (⌈log2⌉ steps, not one per column): after step s, ``up`` is each
    # node's 2^s-th ancestor (or the root) and ``dist`` the number of edges to it
    up = torch.cat([torch.zeros_like(parent[:, :1]), parent], 1)  # [B, N+1], the root is its own parent
    dist = torch.cat([torch.zeros_like(parent[:, :1]), torch.ones_like(parent)], 1)
    for _ in range(n.bit_length()):
        dist = dist + dist.gather(1, up)
        up = up.gather(1, up)
    depth = torch.where(real, dist[:, 1:], 0)
    earlier = (parent[:, :, None] == parent[:, None, :]) & (cols[None, :] < cols[:, None])  # [B, j, k]
    earlier &= real[:, None, :] & real[:, :, None]
    return _Tree(real, token, parent, depth, earlier, earlier.sum(-1), int(depth.max()) if n else 0)


def verify_tree_greedy(
    tokens: torch.Tensor,  # [B, N] token of node j+1 in column j; columns at or past num_nodes: padding, any id
    parents: torch.Tensor,  # [B, N] parent of node j+1, in 0..j (0 = the root); padding columns: anything
    num_nodes: torch.Tensor,  # [B] real nodes per row, 0..N (0 = plain decoding)
    target_tokens: torch.Tensor,  # [B, N+1] the target's argmax at node i (i = 0: the root)
) -> TreeVerdict:
    """Greedy tree verification: from the root, follow the child whose token is the target's argmax at the current
    node while there is one; the final token is the argmax at the last accepted node (a bonus token when no child
    matches, leaves included). Siblings are distinct, so at most one child matches (were they not, the lowest
    column would win, as in :func:`verify_tree` on one-hot distributions). Exactly the target's own greedy output.

    Vectorised over rows and nodes: a node is on the path iff it and each of its ancestors match (pointer jumping,
    ⌈log2(N+1)⌉ steps), so there is no loop over depth either.
    """
    batch, n = tokens.shape
    assert target_tokens.shape == (batch, n + 1)
    tree = _tree(tokens, parents, num_nodes)
    match = tree.real & (tree.token == target_tokens.gather(1, tree.parent))
    chosen = match & ~(tree.earlier & match[:, None, :]).any(-1)  # the lowest matching column among siblings
    on = torch.cat([torch.ones_like(chosen[:, :1]), chosen], 1)  # [B, N+1]: AND over the ancestors, by jumping
    up = torch.cat([torch.zeros_like(tree.parent[:, :1]), tree.parent], 1)
    for _ in range(n.bit_length()):
        on = on & on.gather(1, up)
        up = up.gather(1, up)
    on = on[:, 1:]
    num_accepted = on.sum(1)
    # the path's nodes have distinct depths 1..num_accepted: scatter each to its depth (the rest to a dropped column)
    d = tree.max_depth
    path = torch.full((batch, d + 1), -1, dtype=torch.long, device=tokens.device)
    nodes = torch.arange(1, n + 1, device=tokens.device).expand(batch, n)
    path = path.scatter(1, torch.where(on, tree.depth - 1, d), nodes)[:, :d]
    last = (on.long() * tree.depth).argmax(1) + 1 if n else torch.zeros_like(num_accepted)  # deepest path node
    last = torch.where(num_accepted > 0, last, 0)
    return TreeVerdict(num_accepted, path, target_tokens.gather(1, last[:, None]).squeeze(1), match, tree.real)


def _children(tree: _Tree) -> tuple[torch.Tensor, list[int]]:
    """children[b, c, s]: the column of node c's s-th child (-1 if none), [B, N+1, W]; widths[l]: the most children
    of any depth-l node (l = 0 for the root)."""
    batch, n = tree.token.shape
    dev, d = tree.token.device, tree.max_depth
    widths = torch.zeros(d + 1, dtype=torch.long, device=dev).scatter_reduce(
        0, torch.where(tree.real, tree.depth - 1, d).flatten(), (tree.rank + 1).flatten(), "amax")[:d].tolist()
    width = max(widths, default=0)
    children = torch.full((batch, (n + 1) * width + 1), -1, dtype=torch.long, device=dev)
    slot = torch.where(tree.real, tree.parent * width + tree.rank, (n + 1) * width)
    cols = torch.arange(n, device=dev).expand(batch, n)
    return children.scatter(1, slot, cols)[:, :-1].view(batch, n + 1, width), widths


def verify_tree(
    tokens: torch.Tensor,  # [B, N] token of node j+1 in column j; columns at or past num_nodes: padding, any id
    parents: torch.Tensor,  # [B, N] parent of node j+1, in 0..j (0 = the root); padding columns: anything
    num_nodes: torch.Tensor,  # [B] real nodes per row, 0..N (0 = plain decoding: sample p[:, 0])
    q: torch.Tensor,  # [B, N, V] the law node j+1 was drawn from given its earlier siblings; point mass if none
    p: torch.Tensor,  # [B, N+1, V] target distribution at node i: the law of the token after the path root → i
    uniforms: torch.Tensor,  # [B, N+1] column i ≥ 1: node i's accept draw; column 0: the final token's draw
) -> TreeVerdict:
    """Lossless tree verification: multi-candidate recursive rejection sampling (SpecInfer, Miao et al. 2024;
    EAGLE, Li et al. 2024), ragged over rows.

    At the current node c with residual r (initially p at c) the children of c are tried in column order: child x
    with draw u is accepted iff u·q_x(x) < r(x), i.e. with probability min(1, r(x)/q_x(x)); acceptance moves to x
    with a fresh residual p at x; a rejection sets r ← norm(max(0, r − q_x)) and the next sibling is tried. When
    every child of c is rejected the final token is the recovered one, sampled from r; at a node without children
    it is the bonus token, sampled from p there. Each try is one step of :func:`verify`'s rule against the residual
    left by the earlier siblings, which is why q_x must be the law x was drawn from *given* those siblings (a point
    mass for a deterministic sibling: it is accepted with probability r(x), and its rejection removes x from r).

    A residual with no mass left (≤ 1e-12) falls back to p at that node. It is empty only when r ≤ q_x everywhere,
    i.e. r == q_x up to rounding (both are distributions), and then the rejection that produced it had probability
    Σ max(0, q_x − r) ≈ 0: what follows it moves the output law by at most that rounding-level amount, and p keeps
    the result defined (a point mass can leave no residual only when r(x) == 1, which always accepts).

    Padding (tokens, q, p and draws of columns at or past ``num_nodes``) never affects the result. Vectorised over
    rows; loops over depth (≤ D) and sibling rank. Row b reads only row b of every input.
    """
    batch, n = tokens.shape
    vocab = p.shape[-1]
    assert q.shape == (batch, n, vocab) and p.shape == (batch, n + 1, vocab) and uniforms.shape == (batch, n + 1)
    tree = _tree(tokens, parents, num_nodes)
    dev, d = p.device, tree.max_depth
    rows, cols = torch.arange(batch, device=dev), torch.arange(n, device=dev)
    children, widths = _children(tree)
    q_token = q.gather(-1, tree.token[..., None]).squeeze(-1)  # [B, N] q_x(x) of each node
    # state: current node, residual as weights w with mass m (m = 1 for a fresh p, so u·q(x)·1 is verify's test)
    cur = torch.zeros(batch, dtype=torch.long, device=dev)
    w, m = p[:, 0], torch.ones(batch, dtype=p.dtype, device=dev)
    done = torch.zeros(batch, dtype=torch.bool, device=dev)
    accept = torch.zeros(batch, n, dtype=torch.bool, device=dev)
    judged = torch.zeros_like(accept)
    path = torch.full((batch, d), -1, dtype=torch.long, device=dev)
    for level, level_width in enumerate(widths):
        moved = torch.zeros_like(done)
        nxt = cur
        for s in range(level_width):
            j = children[rows, cur, s]
            tried = ~done & ~moved & (j >= 0)
            j = j.clamp(min=0)
            x = tree.token[rows, j]
            ok = tried & (uniforms[rows, j + 1] * q_token[rows, j] * m < w[rows, x])
            here = tried[:, None] & (cols == j[:, None])
            judged |= here
            accept |= here & ok[:, None]
            rejected = tried & ~ok
            residual = (w / m[:, None] - q[rows, j]).clamp(min=0)  # r ← norm(max(0, r − q_x)), kept unnormalised
            mass = residual.sum(dim=-1)
            empty = mass <= 1e-12
            residual = torch.where(empty[:, None], p[rows, cur], residual)
            w = torch.where(rejected[:, None], residual, w)
            m = torch.where(rejected, torch.where(empty, 1.0, mass), m)
            moved |= ok
            nxt = torch.where(ok, j + 1, nxt)
        cur = nxt
        w = torch.where(moved[:, None], p[rows, cur], w)
        m = torch.where(moved, 1.0, m)
        path[:, level] = torch.where(moved, cur, -1)
        done |= ~moved
    num_accepted = (path >= 0).sum(1)
    return TreeVerdict(num_accepted, path, sample(w, uniforms[:, 0]), accept, judged)
