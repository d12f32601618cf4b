"""The CLI contract (one output row per input line, errors per row) and the selector's train → load → decide loop."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from speckv.costs import CostModel, OnlineCosts, StepTimes
from speckv.history import DECAY, PRIOR, History
from speckv.io import write_parts
from speckv.oracle import node_features, tree_arrays
from speckv.policies.learned.gate import GUARD_STEPS, Gate
from speckv.policies.learned.model import AcceptanceMLP, AcceptanceModel
from speckv.proposal import Proposal
from speckv.sequence import GenerationResult

ROWS = [
    {"id": "good", "prompt": "Write a haiku about rust.", "task": "dialogue"},
    {"prompt": ""},
    "this is not json",
    {"id": "chat", "messages": [{"role": "user", "content": "What is 12*7?"}], "max_new_tokens": 6},
    {"id": "neg", "prompt": "hi", "temperature": -1},
    {"id": "num", "prompt": 42},
    {"id": "missing"},
    {"id": "sampled", "prompt": "Tell me a joke", "temperature": 0.8, "top_p": 0.9, "seed": 3, "stop": ["\n"]},
]


def test_generate_cli_writes_one_row_per_line(tmp_path, tiny_pair_dirs):
    target, draft = tiny_pair_dirs
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in ROWS) + "\n")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "speckv.cli", "generate", "--input", str(src), "--output", str(out),
           "--target", str(target), "--draft", str(draft), "--draft-kind", "lm", "--dtype", "fp32",
           "--policy", "heuristic", "--max-new-tokens", "10", "--batch-size", "3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {r["id"]: r for r in pq.read_table(out / "outputs").to_pylist()}
    assert len(rows) == len(ROWS)
    assert {k for k, r in rows.items() if r["status"] == "ok"} == {"good", "chat", "sampled"}
    assert "empty" in rows["2"]["error"] and "not valid JSON" in rows["3"]["error"]
    assert "temperature" in rows["neg"]["error"] and "string" in rows["num"]["error"]
    assert "missing 'prompt'" in rows["missing"]["error"]
    assert len(rows["good"]["token_ids"]) == 10 and rows["good"]["finish_reason"] == "length"
    assert len(rows["chat"]["token_ids"]) <= 6
    steps = pq.read_table(out / "telemetry").to_pylist()
    assert {s["request_id"] for s in steps} == {"good", "chat", "sampled"}
    good = [s for s in steps if s["request_id"] == "good"]
    assert rows["good"]["num_spec_steps"] == len(good)
    assert rows["good"]["num_accepted_tokens"] == sum(s["num_accepted_tokens"] for s in good)
    assert sum(rows["good"]["acceptance_histogram"]) == len(good)


def test_bad_config_fails_before_loading_models(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"prompt": "x"}\n')
    proc = subprocess.run([sys.executable, "-m", "speckv.cli", "generate", "--input", str(src), "--output",
                           str(tmp_path / "o"), "--policy", "fixed", "--gamma", "40"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "gamma" in proc.stderr


def fake_steps(n_prompts: int, rng: np.random.Generator) -> list[dict]:
    """Step rows of a recorded tree (a chain of 6 top choices, each with one second choice beside it) whose
    acceptance follows the draft's probability the way real drafts' does (accept ~ prob)."""
    rows = []
    for p in range(n_prompts):
        for step in range(20):
            parents, probs, ranks, accept = [], [], [], []
            chain_parent = 0
            for depth in range(6):
                top = rng.uniform(0.05, 1.0)
                second, u = rng.uniform(0, 1 - top), rng.uniform()  # the target's argmax is one token or the other
                for rank, prob, hit in ((0, top, u < top), (1, second, top <= u < top + second)):
                    parents.append(chain_parent)
                    probs.append(prob)
                    ranks.append(rank)
                    accept.append(bool(hit))
                chain_parent = len(parents) - 1  # node id of this level's top choice (added before its sibling)
            on_path, node = 0, 0
            for j, (par, a) in enumerate(zip(parents, accept)):
                if par == node and a:
                    node, on_path = j + 1, on_path + 1  # (below a second choice nothing was drafted: it ends there)
            rows.append({"request_id": f"p{p}", "step": step, "policy": "fixed", "num_draft_tokens": len(parents),
                         "num_accepted_tokens": on_path, "node_parent": parents, "node_prob": probs,
                         "node_rank": ranks, "node_source": [0] * len(parents), "node_match": [0] * len(parents),
                         "draft_top1": [probs[j - r] for j, r in enumerate(ranks)],
                         "draft_entropy": [3 * (1 - probs[j - r]) for j, r in enumerate(ranks)],
                         "draft_accept": accept, "temperature": 0.0, "context_len": 50 + step, "compression": "bf16",
                         "accept_rate": 0.5, "lookup_rate": 0.5, "batch_size": 1, "actor_id": "a",
                         "batch_step_id": p * 100 + step})
    return rows


def write_steps(rows: list[dict], out, name: str) -> None:
    result = GenerationResult(id="x", task=None, prompt="", steps=rows)
    write_parts([result], out, name=name)


def train_policy_args(tmp_path):
    import argparse

    from speckv import train_policy

    parser = argparse.ArgumentParser()
    train_policy.add_arguments(parser)
    return parser.parse_args([str(tmp_path / "col"), "--output", str(tmp_path / "pol.safetensors"), "--epochs", "15"])


def test_train_policy_learns_acceptance_and_beats_fixed_in_replay(tmp_path):
    from speckv import train_policy
    from speckv.policies.learned import LearnedPolicy

    rng = np.random.default_rng(0)
    write_steps(fake_steps(60, rng), tmp_path / "col", name="bf16")
    costs = CostModel([1, 8], [1, 2, 3, 5, 9, 17], [[42, 42, 41, 44, 46, 54], [69, 70, 72, 86, 100, 130]], [5.5, 8])
    (tmp_path / "col" / "costs").mkdir()
    (tmp_path / "col" / "costs" / "bf16.json").write_text(costs.to_json())
    assert train_policy.run(train_policy_args(tmp_path)) == 0
    meta = json.loads((tmp_path / "pol.json").read_text())
    assert meta["metrics"]["test_auc"] > 0.7
    rep = meta["replay_report"]["bf16/batch1"]
    assert rep["learned"]["tokens_per_s"] >= max(rep["chain4"]["tokens_per_s"], rep["tree8"]["tokens_per_s"])
    assert rep["oracle"]["tokens_per_s"] >= rep["learned"]["tokens_per_s"]
    assert rep["oracle"]["tokens_per_step"] >= rep["tree8"]["tokens_per_step"] >= rep["chain4"]["tokens_per_step"]
    # the headroom sweep: a predictor told more of the truth ranks better and buys more, up to near the oracle
    room = meta["headroom"]["bf16"]["rows"]
    assert [r["auc"] for r in room] == sorted(r["auc"] for r in room) and room[-1]["auc"] > 0.99
    assert room[0]["x_chain4"] == pytest.approx(rep["learned"]["tokens_per_s"] / rep["chain4"]["tokens_per_s"])
    assert room[-1]["oracle_share"] > max(room[0]["oracle_share"], 0.5)
    policy = LearnedPolicy.load(tmp_path / "pol.safetensors", gamma_max=8, depth=8)
    assert policy.model is not None


def test_the_acceptance_model_learns_only_from_nodes_whose_parent_was_accepted():
    from speckv.train_policy import reached

    # one step: node 1 under the root (accepted), nodes 2 and 3 under node 1 (2 rejected, 3 accepted), node 4 under
    # node 2 (its verdict answers a prefix the target did not take), then a padding slot
    arr = {"real": np.array([[True, True, True, True, False]]), "parent": np.array([[0, 1, 1, 2, 0]]),
           "on_path": np.array([[True, False, True, False, False]])}
    assert reached(arr).tolist() == [[True, True, True, False, False]]


def test_train_policy_refuses_telemetry_without_trees(tmp_path):
    from speckv import train_policy

    import pyarrow as pa

    rows = fake_steps(2, np.random.default_rng(0))
    for r in rows:  # what speckv wrote before trees: chains only, no node lists
        for key in ("node_parent", "node_rank", "node_source", "node_prob", "node_match"):
            del r[key]
    (tmp_path / "col" / "telemetry").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "col" / "telemetry" / "bf16.parquet")
    with pytest.raises(ValueError, match="node_parent"):
        train_policy.load_steps(tmp_path / "col")


def test_replayed_true_path_follows_the_recorded_accepts():
    import pandas as pd

    rows = fake_steps(1, np.random.default_rng(1))
    arr = tree_arrays(pd.DataFrame(rows))
    assert (arr["on_path"].sum(axis=1) == [r["num_accepted_tokens"] for r in rows]).all()
    assert (arr["depth"][:, ::2] == np.arange(1, 7)).all() and (arr["head_chain"][:, 1::2] == 0).all()


def test_replayed_drafting_prices_each_head_forward_at_its_width():
    """Row 0: the root's children A, B; A's children C, D; B's child E; C's child F; a lookup node beside them. The
    head ran the root's forward (one node), one feeding A and B (two: both have children), one feeding C: 1 + 1.5 + 1
    ms where a forward of w nodes a row costs the calibrated draft read at batch × w. Keeping only the chain A, C, F
    is three forwards of one node; a batched step's forwards are as wide as its widest row."""
    import pandas as pd

    from speckv.oracle import draft_ms

    base = fake_steps(1, np.random.default_rng(0))[0]
    tree = {"node_parent": [0, 0, 1, 1, 2, 3, 0], "node_source": [0, 0, 0, 0, 0, 0, 1]}
    chain = {"node_parent": [0, 1], "node_source": [0, 0]}
    rows = []
    for nodes in (tree, chain):
        n = len(nodes["node_parent"])
        rows.append({**base, **nodes, "num_draft_tokens": n, **{k: [0] * n for k in ("node_rank", "node_match")},
                     **{k: [0.5] * n for k in ("node_prob", "draft_top1", "draft_entropy")}, "draft_accept": [True] * n})
    arr = tree_arrays(pd.DataFrame(rows))
    costs = CostModel(batch_sizes=[1, 2, 4], tokens=[1, 9], verify_ms=[[10.0, 10.0]] * 3, draft_ms=[1.0, 1.5, 2.5])
    alone = np.arange(2)
    np.testing.assert_allclose(draft_ms(arr, arr["real"], costs, 1, alone, 2), [1.0 + 1.5 + 1.0, 1.0 + 1.0])
    chain_only = arr["real"] & np.isin(np.arange(arr["real"].shape[1]), [0, 2, 5])[None, :]
    np.testing.assert_allclose(draft_ms(arr, chain_only & (alone == 0)[:, None], costs, 1, alone, 2), [3.0, 0.0])
    np.testing.assert_allclose(draft_ms(arr, arr["real"], costs, 2, np.zeros(2, int), 1), [1.5 + 2.5 + 1.5])


def proposal(parents, ranks, sources, depths) -> Proposal:
    n = len(parents)
    t = lambda v: torch.tensor([v])  # noqa: E731
    zeros = torch.zeros(1, n)
    return Proposal(tokens=t(list(range(n))), parents=t(parents), depth=t(depths), num_nodes=torch.tensor([n]),
                    prob=zeros, top1=zeros, entropy=zeros, rank=t(ranks), source=t(sources),
                    match=torch.zeros(1, n, dtype=torch.long), value=zeros)


def test_acceptance_history_counts_judged_top_choices():
    history = History.new(1)
    # a root with two head children (top choice accepted, the second not) and a lookup child (rejected), then the
    # accepted node's own top choice (rejected): judged top choices 2 (1 accepted), judged lookup nodes 1 (0)
    p = proposal(parents=[0, 0, 0, 1], ranks=[0, 1, 0, 0], sources=[0, 0, 1, 0], depths=[1, 1, 1, 2])
    history.update(p, torch.tensor([[True, True, False, False, False]]))
    (a, j), (la, lj) = PRIOR, PRIOR
    assert torch.allclose(history.sums[0], torch.tensor([[DECAY * a + 1, DECAY * j + 2], [DECAY * la, DECAY * lj + 1]]))
    assert history.first.item() > 0.5  # the first top choice was accepted
    before = history.sums.clone()
    history.update(Proposal.empty(1, torch.device("cpu")), torch.tensor([[True]]))  # a plain step changes nothing
    assert torch.equal(history.sums, before)


def test_acceptance_history_does_not_depend_on_gamma():
    """Chains accepted position by position with probability 0.7: the history reads about 0.7 whether the policy
    drafts 8, 3 or 1 a step (accepted ÷ drafted would read 0.27, 0.52 and 0.70)."""
    gen = torch.Generator().manual_seed(0)
    rows, steps, p = 2000, 40, 0.7
    rates = []
    for gamma in (8, 3, 1):
        history = History.new(rows)
        chain = Proposal.chain(torch.zeros(rows, gamma, dtype=torch.long))
        for _ in range(steps):
            accepted = (torch.rand(rows, gamma, generator=gen) < p).long().cumprod(dim=1).sum(dim=1)
            on_path = torch.arange(gamma + 1)[None, :] <= accepted[:, None]
            history.update(chain, on_path)
        rates.append(float(history.accept_rate.mean()))
    assert max(rates) - min(rates) < 0.03 and all(abs(r - p) < 0.03 for r in rates), rates


def test_acceptance_model_in_numpy_matches_the_torch_mlp():
    torch.manual_seed(0)
    mlp = AcceptanceMLP()
    mlp.mean.uniform_()
    mlp.std.uniform_(0.5, 2)
    import pandas as pd

    arr = tree_arrays(pd.DataFrame(fake_steps(2, np.random.default_rng(2))))
    x = node_features(arr)
    with torch.no_grad():
        expected = torch.sigmoid(mlp(torch.from_numpy(x).float())).numpy()
    np.testing.assert_allclose(AcceptanceModel(mlp).prob(x), expected, rtol=1e-5, atol=1e-6)


def online(costs: CostModel) -> OnlineCosts:
    return OnlineCosts(costs, max_tokens=6)


def measured_step(costs: OnlineCosts, batch: int, tokens: int, wall_ms: float, delivered: float) -> None:
    times = StepTimes(batch=batch, tokens=tokens, draft_widths=(1,) * (tokens - 1), draft_ms=3.0 * (tokens - 1),
                      verify_ms=wall_ms - 3.0 * (tokens - 1), decision_ms=0.0, wall_ms=wall_ms, delivered=delivered,
                      drafted=tokens > 1)
    if (batch, tokens, tokens > 1) not in costs._warm:  # the first step of a shape is a warm-up the costs do not count
        costs.observe(times)
    costs.observe(times)


def test_the_first_step_of_a_shape_is_not_counted():
    costs = online(CostModel([1, 8], [1, 2], [[40, 45], [70, 80]], [5, 30]))
    first = StepTimes(batch=1, tokens=2, draft_widths=(1,), draft_ms=3.0, verify_ms=400.0, decision_ms=0.0,
                      wall_ms=403.0, delivered=1.5, drafted=True)  # a 2-token verify building its kernels
    costs.observe(first)
    assert not costs.measured(1, 2) and costs.verify(1, 2) == pytest.approx(45.0)
    costs.observe(StepTimes(**{**first.__dict__, "verify_ms": 47.0, "wall_ms": 50.0}))
    assert costs.measured(1, 2) and costs.verify(1, 2) == pytest.approx(47.0)


def test_verify_costs_pool_the_cells_into_one_curve_per_batch_size():
    """A width run twice, slow both times, must not make every wider width dear: the cells share one fitted
    curve (plain + jump + per-token slope), so a rare cell's noise is outweighed by the widths run often."""
    flat = CostModel([1], [1, 9], [[40.0, 48.0]], [2.0])  # calibration: 1 ms per further token, no jump
    costs = online(flat)
    for tokens, ms, times in ((1, 40.0, 30), (2, 52.0, 30), (4, 54.0, 30), (3, 80.0, 2)):  # 3 tokens: a rare outlier
        for _ in range(times + 1):  # + the uncounted first step of the shape
            costs.observe(StepTimes(batch=1, tokens=tokens, draft_widths=(1,) * (tokens - 1), draft_ms=0.0,
                                    verify_ms=ms, decision_ms=0.0, wall_ms=ms, delivered=1.0, drafted=tokens > 1))
    step = costs.step(1)
    assert step[0] == pytest.approx(40.0, abs=1.5)
    # the measured jump (12 ms) kept; the outlier outweighed (cell by cell, 3 and 4 tokens would read 67 ms)
    assert 50.0 < step[1] < 54.0 and step[2] < 56.0 and step[3] < 57.0
    assert all(b >= a for a, b in zip(step, step[1:]))  # never cheaper to verify more


def test_gate_falls_back_to_plain_decoding_and_reprobes_with_backoff():
    costs = online(CostModel([1, 8], [1, 2], [[40, 45], [70, 80]], [5, 30]))  # a drafted column costs 40 ms at b8
    gate = Gate()
    assert gate.decide(costs, 8, np.full(8, 1.0), 0.1) == 0  # a batch size not seen yet: measure a plain step first
    measured_step(costs, 8, 1, 70.0, 1.0)
    # in a batch drafting pays when (B + Σa)/(T + ΔT) > (1 + m) · B/T: (8 + 2.4)/110 < 1.1 · 8/70
    decisions = [gate.decide(costs, 8, np.full(8, 0.3), 0.1) for _ in range(40)]
    probes = [i for i, d in enumerate(decisions) if d]
    assert probes[:2] == [8, 25] and decisions[8] == 1  # a one-column probe after 8 plain steps, then after 16 more
    assert gate.decide(costs, 8, np.full(8, 1.0), 0.1) == 1  # it pays again: but two tokens a row were never verified at b8
    measured_step(costs, 8, 2, 110.0, 1.5)
    assert gate.decide(costs, 8, np.full(8, 1.0), 0.1) == -1  # ... now measured: as many columns as the rule likes
    # one row alone sees its first token's signals before paying for its verify: only the draft forward (5 ms)
    # must pay: (1 + a)/45 > 1.05 · 1/40 needs a > 0.18
    one = online(CostModel([1, 8], [1, 2], [[40, 45], [70, 80]], [5, 30]))
    measured_step(one, 1, 1, 40.0, 1.0)
    assert Gate().decide(one, 1, np.full(1, 0.25), 0.05) != 0 and Gate().decide(one, 1, np.full(1, 0.15), 0.05) == 0


def test_gate_drafts_where_a_longer_chain_pays_though_its_first_column_alone_would_not():
    """Batch 4, a plain step 50 ms, a second verified token +16 ms and each further one +1 ms, 2 ms a draft forward,
    first-token acceptance 0.45 (a chain's k-th token taken as accepted with 0.45^k), margin 0.1 (4.4 tokens per
    50 ms to beat): one column delivers 4 + 1.8 tokens in 68 ms (4.26 per 50 ms), two 4 + 2.61 in 71 ms (4.65)."""
    costs = online(CostModel([1, 4], [1, 2, 3, 5], [[40, 56, 57, 59], [50, 66, 67, 69]], [1, 2]))
    measured_step(costs, 4, 1, 50.0, 1.0)
    a = np.full(4, 0.45)
    assert Gate().decide(costs, 4, a, 0.1, depth=1) == 0
    assert Gate().decide(costs, 4, a, 0.1, depth=4) != 0
    assert Gate().decide(costs, 4, np.full(4, 0.3), 0.1, depth=4) == 0  # 4 + 1.2 + 0.36 + 0.11 tokens: too few


def test_gate_stops_drafting_where_drafted_steps_measure_slower_than_plain_ones():
    costs = online(CostModel([1, 4], [1, 2, 5], [[40, 42, 50], [50, 52, 60]], [3, 4]))  # on paper drafting pays well
    gate = Gate()

    def step(first_accept: float, drafted_ms: float, delivered: float) -> int:
        decision = gate.decide(costs, 4, np.full(4, first_accept), 0.1)
        if decision:
            measured_step(costs, 4, 2 if decision == 1 else 5, drafted_ms, delivered)
        else:
            measured_step(costs, 4, 1, 50.0, 1.0)
        return decision

    assert [step(0.05, 0, 1) for _ in range(GUARD_STEPS)] == [0] * GUARD_STEPS
    # drafted steps that deliver 1 token per row in 70 ms: slower than plain, whatever was expected of them
    decisions = [step(0.9, 70.0, 1.0) for _ in range(GUARD_STEPS + 2)]
    assert decisions[0] != 0 and decisions[-1] == 0
    # plain from then on, except the periodic probes, which deliver 2 tokens per row in 55 ms (2/55 > 1/50): after
    # enough of them, drafting comes back
    decisions = [step(0.9, 55.0, 2.0) for _ in range(200)]
    assert decisions[:4] == [0, 0, 0, 0] and decisions[-1] == -1


def test_gate_at_batch_1_keeps_drafting_through_slow_drafted_steps():
    """One row's steps swing from 1 to γ+1 tokens: its measured rate is no reason to stop."""
    costs = online(CostModel([1, 4], [1, 2, 5], [[40, 42, 50], [50, 52, 60]], [3, 4]))
    gate = Gate()
    decisions = []
    for i in range(30):  # plain steps at first (acceptance too low), then drafted ones that all come out slow
        decision = gate.decide(costs, 1, np.full(1, 0.05 if i < 10 else 0.9), 0.05)
        decisions.append(decision)
        measured_step(costs, 1, 2 if decision else 1, 70.0 if decision else 50.0, 1.0)
    assert decisions[:10].count(0) >= 9 and all(d != 0 for d in decisions[12:])


def test_learned_expands_as_many_new_nodes_as_the_wider_draft_forward_pays_for():
    """EAGLE-2 expands a fixed top-k; the selector expands the j-th best new node only while its children's worth
    pays for the j-th node a row in the next draft forward (read off the calibrated draft curve) and the column."""
    from speckv.drafters.tree import TreeBuilder
    from speckv.policies.base import StepContext
    from speckv.policies.learned import LearnedPolicy

    def frontier(draft_ms: list[float], probs: list[float]) -> int:
        costs = OnlineCosts(CostModel([1, 2, 4], [1, 2, 3, 5, 9], [[40, 40.1, 40.2, 40.4, 40.8]] * 3, draft_ms), 11)
        ctx = StepContext(batch_size=1, context_len=torch.tensor([20]), num_generated=torch.tensor([0]),
                          max_new_tokens=torch.tensor([64]), accept_rate=torch.tensor([0.5]),
                          lookup_rate=torch.tensor([0.5]), first_accept=torch.tensor([0.5]), compression="bf16",
                          costs=costs, gamma_max=8, greedy=True)
        tree = TreeBuilder(1, depth_cap=torch.tensor([8]), device=torch.device("cpu"))
        dist = torch.full((16,), (1 - sum(probs)) / (16 - len(probs)))  # the rest of the mass spread thin
        dist[: len(probs)] = torch.tensor(probs)
        logits = dist.clamp(min=1e-12).log()[None, None]
        tree.add_children(torch.zeros(1, 1, dtype=torch.long), logits, 4)
        tree.count_forward()
        # no trained weights: a node's acceptance is its draft probability (the documented fallback)
        policy = LearnedPolicy(None, gamma_max=8, depth=4, topk=4)
        policy.plan(ctx)  # sets the step's margins (batch 1: none after the first column)
        return policy.expand(ctx, tree)

    probs = [0.4, 0.3, 0.2, 0.1]
    assert frontier([1.0, 1.01, 1.02], probs) == 4  # a wider head forward costs next to nothing: EAGLE-2's top-k
    assert frontier([1.0, 10.0, 30.0], probs) == 1  # each further node a row costs ~9 ms: only the best one
    assert frontier([1.0, 1.01, 1.02], [0.02, 0.01, 0.01, 0.01]) == 0  # children worth ~0.0004 tokens: stop drafting


def test_draft_cost_per_forward_counts_a_wider_forward_as_its_calibrated_multiple():
    costs = OnlineCosts(CostModel([1, 2, 4], [1, 2, 5], [[40, 41, 42]] * 3, [1.0, 1.5, 2.0]), 6)
    step = StepTimes(batch=1, tokens=5, draft_widths=(1, 4), draft_ms=6.0, verify_ms=42.0, decision_ms=0.0,
                     wall_ms=48.0, delivered=2.0, drafted=True)
    for _ in range(2):  # the first step of a shape is not counted
        costs.observe(step)
    # 6 ms over a forward of one node and one of four (calibrated: 2× one): 2 ms per one-node forward
    assert costs.draft(1) == pytest.approx(2.0) and costs.draft(1, 4) == pytest.approx(4.0)
