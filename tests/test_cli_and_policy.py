"""The CLI contract (one output row per input line, errors per row) and the selector's train → load → decide loop."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from speckv.config import EngineConfig, GenerationRequest, PolicySpec, SamplingParams
from speckv.costs import CostModel
from speckv.drafters.draft_lm import DraftLM
from speckv.engine import ACCEPT_DECAY, ACCEPT_PRIOR, SpecEngine
from speckv.io import write_parquet
from speckv.policies.base import StepContext
from speckv.policies.learned import AcceptanceMLP, LearnedPolicy, feature_matrix

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
    """Step rows whose acceptance depends on top-1 the way real drafts do (accept ~ top1)."""
    rows = []
    for p in range(n_prompts):
        for step in range(20):
            top1 = rng.uniform(0.05, 1.0, 8)
            accept = rng.uniform(size=8) < top1
            first = int(np.argmin(accept)) if not accept.all() else 8
            rows.append({"request_id": f"p{p}", "step": step, "policy": "fixed", "num_draft_tokens": 8,
                         "num_accepted_tokens": first, "draft_top1": top1.tolist(),
                         "draft_entropy": (3 * (1 - top1)).tolist(), "draft_accept": accept.tolist(),
                         "temperature": 0.0, "context_len": 50 + step, "compression": "bf16",
                         "accept_rate": 0.5, "batch_size": 1})
    return rows


def test_train_policy_learns_acceptance_and_beats_fixed_in_replay(tmp_path):
    from speckv import train_policy

    rng = np.random.default_rng(0)
    write_parquet([], fake_steps(60, rng), tmp_path / "col", name="bf16")
    costs = CostModel([1, 8], [1, 2, 3, 5, 9, 17], [[42, 42, 41, 44, 46, 54], [69, 70, 72, 86, 100, 130]], [5.5, 8])
    (tmp_path / "col" / "costs").mkdir()
    (tmp_path / "col" / "costs" / "bf16.json").write_text(costs.to_json())
    args = train_policy_args(tmp_path)
    assert train_policy.run(args) == 0
    meta = json.loads((tmp_path / "pol.json").read_text())
    assert meta["metrics"]["test_auc"] > 0.7
    rep = meta["replay_report"]["bf16/batch1"]
    assert rep["learned"]["tokens_per_s"] >= rep["fixed4"]["tokens_per_s"]
    assert rep["oracle"]["tokens_per_s"] >= rep["learned"]["tokens_per_s"]
    # the headroom sweep: a predictor told more of the truth ranks better and buys more, up to near the oracle
    room = meta["headroom"]["bf16"]["rows"]
    assert [r["auc"] for r in room] == sorted(r["auc"] for r in room) and room[-1]["auc"] > 0.99
    assert room[0]["x_fixed4"] == pytest.approx(rep["learned"]["tokens_per_s"] / rep["fixed4"]["tokens_per_s"])
    assert room[-1]["oracle_share"] > max(room[0]["oracle_share"], 0.5)
    policy = LearnedPolicy.load(tmp_path / "pol.safetensors", gamma_max=8)
    assert policy.mlp is not None


def test_train_policy_refuses_telemetry_without_the_acceptance_history(tmp_path):
    from speckv import train_policy

    rows = fake_steps(2, np.random.default_rng(0))
    for r in rows:
        r["accept_rate_ema"] = r.pop("accept_rate")  # what speckv wrote before the γ-invariant history
    write_parquet([], rows, tmp_path / "col", name="bf16")
    with pytest.raises(ValueError, match="accept_rate"):
        train_policy.load_steps(tmp_path / "col")


def step_context(b: int, **fields) -> StepContext:
    """A policy's view of a batch of ``b`` fresh rows (100-token contexts, 64 tokens to go, no history yet, bf16, no
    costs), with ``fields`` overriding any of it."""
    ctx = {"context_len": torch.full((b,), 100), "num_generated": torch.zeros(b),
           "max_new_tokens": torch.full((b,), 64), "last_num_draft": torch.zeros(b),
           "last_num_accepted": torch.zeros(b),
           "accept_sums": torch.tensor([ACCEPT_PRIOR] * b),
           "compression": "bf16", "costs": None, "gamma_max": 8}
    return StepContext(batch_size=b, **{**ctx, **fields})


def test_acceptance_history_counts_judged_positions():
    ctx = step_context(3)
    # γ 8 with 2 accepted: 3 judged; γ 2 with both accepted: 2 judged; a plain step leaves the sums as they were
    SpecEngine._update_history(ctx, torch.tensor([8, 2, 0]), torch.tensor([2, 2, 0]))
    d = ACCEPT_DECAY
    prior_a, prior_j = ACCEPT_PRIOR
    assert torch.allclose(ctx.accept_sums, torch.tensor([[d * prior_a + 2, d * prior_j + 3],
                                                         [d * prior_a + 2, d * prior_j + 2], [prior_a, prior_j]]))
    rates = [(d * prior_a + 2) / (d * prior_j + 3), (d * prior_a + 2) / (d * prior_j + 2), prior_a / prior_j]
    assert torch.allclose(ctx.accept_rate, torch.tensor(rates))


def test_acceptance_history_does_not_depend_on_gamma():
    """Drafts accepted position by position with probability 0.7: the history reads about 0.7 whether the policy
    drafts 8, 3 or 1 a step (accepted ÷ drafted, the history before, read 0.27, 0.52 and 0.70)."""
    gen = torch.Generator().manual_seed(0)
    rows, steps, p = 4000, 40, 0.7
    rates = []
    for gamma in (8, 3, 1):
        ctx = step_context(rows)
        for _ in range(steps):
            accepted = (torch.rand(rows, gamma, generator=gen) < p).long().cumprod(dim=1).sum(dim=1)
            SpecEngine._update_history(ctx, torch.full((rows,), gamma), accepted)
        rates.append(float(ctx.accept_rate.mean()))
    assert max(rates) - min(rates) < 0.03 and all(abs(r - p) < 0.03 for r in rates), rates


def train_policy_args(tmp_path):
    import argparse

    from speckv import train_policy

    parser = argparse.ArgumentParser()
    train_policy.add_arguments(parser)
    return parser.parse_args([str(tmp_path / "col"), "--output", str(tmp_path / "pol.safetensors"), "--epochs", "15"])


def test_learned_acceptance_matches_the_torch_mlp():
    torch.manual_seed(0)
    mlp = AcceptanceMLP()
    mlp.mean.uniform_()
    mlp.std.uniform_(0.5, 2)
    policy = LearnedPolicy(mlp, 8)
    for b in (8, 1):  # a batch runs numpy, one row plain Python floats
        ctx = step_context(b, context_len=torch.randint(10, 300, (b,)), compression="nf4",
                           accept_sums=torch.stack([torch.rand(b), torch.ones(b)], dim=1))  # random histories
        policy.budget(ctx)
        top1, ent = torch.rand(b), torch.rand(b) * 3
        for pos in (0, 3):
            x = feature_matrix(top1, ent, torch.full((b,), pos), ctx.accept_rate, torch.ones(b), ctx.context_len,
                               "nf4")
            expected = torch.sigmoid(mlp(x)).detach().numpy()
            np.testing.assert_allclose(policy.acceptance(pos, top1.numpy(), ent.numpy()), expected, rtol=1e-5)


@pytest.mark.parametrize("with_weights", [False, True])
def test_learned_policy_keeps_greedy_parity(tokenizer, with_weights, tmp_path):
    from tests.conftest import related_draft, tiny_llama

    target = tiny_llama(0)
    draft = related_draft(target)
    path = None
    if with_weights:
        mlp = AcceptanceMLP()
        LearnedPolicy(mlp, 8).save(tmp_path / "p.safetensors", {"hidden": mlp.net[0].out_features})
        path = str(tmp_path / "p.safetensors")
    config = EngineConfig(policy=PolicySpec(name="learned", gamma_max=6, path=path), max_batch_size=4)
    engine = SpecEngine(config, target=target, tokenizer=tokenizer, drafter=DraftLM(draft, torch.device("cpu"),
                        49152), device=torch.device("cpu"))
    assert engine.costs is not None  # calibrated (and cached) because the policy asked for costs
    reqs = [GenerationRequest(id=str(i), prompt=p, sampling=SamplingParams(max_new_tokens=16, ignore_eos=True))
            for i, p in enumerate(["Hello", "Count to ten please", "x"])]
    for res, req in zip(engine.generate(reqs), reqs):
        ids = engine._encode(req)
        ref = target.generate(torch.tensor([ids]), max_new_tokens=16, min_new_tokens=16, do_sample=False)
        assert res.token_ids == ref[0, len(ids):].tolist()


def test_a_column_is_drafted_only_when_the_whole_batch_pays_for_it():
    from speckv.policies.learned import decide

    # verifying one more token per row costs 10 ms on a 100 ms step: worth it if the batch expects > 0.1 × its tokens
    costs = [(5.0, 100.0), (5.0, 110.0), (5.0, 120.0), (5.0, 130.0)]
    ones = np.ones(1)
    keep, _, _, _ = decide(np.array([0.5]), ones, ones, np.ones(1, bool), 0, costs)
    assert keep.all()  # alone, a 50 % token pays: 0.5 · 105 > 1 · 10
    # the same row in a batch of 8 where the others expect nothing: 0.5 · 105 < 8 · 10, so nobody drafts
    a = np.array([0.5] + [0.0] * 7)
    keep, _, _, _ = decide(a, np.ones(8), np.ones(8), np.ones(8, bool), 0, costs)
    assert not keep.any()
    # a batch that expects enough together drafts the column in every live row, a hopeless row included
    a = np.array([0.9] * 7 + [0.0])
    live = np.array([True] * 6 + [False, True])
    keep, _, _, _ = decide(a, np.ones(8), np.ones(8), live, 0, costs)
    assert keep.tolist() == live.tolist()
    # groups decide independently (the offline replay of batched steps)
    a = np.array([0.9, 0.9, 0.05, 0.05])
    keep, _, _, _ = decide(a, np.ones(4), np.ones(4), np.ones(4, bool), 0, costs, group=np.array([0, 0, 1, 1]))
    assert keep.tolist() == [True, True, False, False]


def test_one_row_decides_on_floats_exactly_as_on_arrays():
    from speckv.policies.learned import decide

    rng = np.random.default_rng(0)
    costs = [(2.0, 20.0 + 3 * k + rng.random()) for k in range(6)]
    for _ in range(200):
        a, p_all, pos = rng.random(), rng.random(), int(rng.integers(0, 4))
        expected, margin = 1 + rng.random() * pos, float(rng.choice([0.0, 0.05]))
        for c in (costs, None):
            on_floats = decide(a, p_all, expected, True, pos, c, margin=margin)
            on_arrays = decide(np.array([a]), np.array([p_all]), np.array([expected]), np.ones(1, bool), pos, c,
                               margin=margin)
            assert [float(x) for x in on_floats] == [float(x[0]) for x in on_arrays]


def test_learned_falls_back_to_plain_decoding_and_reprobes_with_backoff():
    costs = CostModel([1, 8], [1, 2], [[40, 45], [70, 80]], [5, 30])  # a drafted column costs 40 ms at batch 8

    def context(b: int) -> StepContext:
        ctx = step_context(b, costs=costs, gamma_max=4)
        policy.init_state(ctx)
        assert int(policy.budget(ctx).max()) == 0  # a batch size not seen yet: measure a plain step first
        plain = costs.verify(b, 1)  # ... which the engine reports as it measured it
        ctx.last_step = {"batch": b, "tokens": 1, "forwards": 0, "draft_ms": 0.0, "verify_ms": plain, "wall_ms": plain}
        return ctx

    policy = LearnedPolicy(None, 4)
    ctx = context(8)
    # in a batch drafting pays when (B + Σa)/(T + ΔT) > 1.2 · B/T: (8 + 2.4)/110 < 1.2 · 8/70
    ctx.state["first_accept_ema"][:] = 0.3
    budgets = [int(policy.budget(ctx).max()) for _ in range(40)]
    probes = [i for i, g in enumerate(budgets) if g > 0]
    assert probes[:2] == [8, 25]  # a probe after 8 plain steps, the next after 16 more
    assert budgets[8] == 1  # a probe drafts one token per row: enough to re-measure first-token acceptance
    ctx.state["first_accept_ema"][:] = 1.0  # (8 + 8)/110 > 1.2 · 8/70: it pays again
    assert int(policy.budget(ctx).min()) == 1  # ... but two tokens per row were never verified at batch 8: one first
    ctx.last_step = {"batch": 8, "tokens": 2, "forwards": 1, "draft_ms": 30.0, "verify_ms": 80.0, "wall_ms": 110.0}
    assert int(policy.budget(ctx).min()) == 4
    # one row alone (margin 5 %) sees its first token's draft signals before paying for its verify, so only the
    # first draft forward (5 ms) must pay: (1 + a)/45 > 1.05 · 1/40 needs a > 0.18
    one = context(1)
    one.state["first_accept_ema"][:] = 0.25
    assert int(policy.budget(one)[0]) == 1
    policy = LearnedPolicy(None, 4)  # a fresh batch, whose row has accepted a first token 15 % of the time
    one = context(1)
    one.state["first_accept_ema"][:] = 0.15
    assert int(policy.budget(one)[0]) == 0


def test_row_weights_favour_the_rows_the_batch_waits_for():
    b = 3
    ctx = step_context(b, num_generated=torch.tensor([30, 10, 20]), max_new_tokens=torch.tensor([40, 40, 40]),
                       gamma_max=4)
    # after 10 steps: 3, 1 and 2 tokens per step so far; steps left: 10/3, 30/1, 20/2 → relative to the longest
    np.testing.assert_allclose(LearnedPolicy.row_weights(ctx, 10), [10 / 3 / 30, 1.0, 1 / 3])


def test_learned_stops_drafting_where_drafted_steps_measure_slower_than_plain_ones():
    b = 4
    costs = CostModel([1, 4], [1, 2, 5], [[40, 42, 50], [50, 52, 60]], [3, 4])  # on paper drafting pays well
    policy = LearnedPolicy(None, 4)
    ctx = step_context(b, costs=costs, gamma_max=4)
    policy.init_state(ctx)

    def step(accepted: int, drafted_ms: float, plain_ms: float = 50.0, estimate: float = 0.9) -> int:
        """One engine step: a plain one takes ``plain_ms``; a drafted one ``drafted_ms``, each row accepting
        ``accepted``; the policy's first-token acceptance estimate is set to ``estimate``. Returns the step's γ."""
        ctx.state["first_accept_ema"][:] = estimate
        gamma = int(policy.budget(ctx).max())
        wall_ms = drafted_ms if gamma else plain_ms
        policy.observe(ctx, torch.full((b,), gamma), torch.full((b,), min(accepted, gamma)))
        ctx.last_step = {"batch": b, "tokens": 1 + gamma, "forwards": gamma, "draft_ms": 4.0 * gamma,
                         "verify_ms": wall_ms - 4.0 * gamma, "wall_ms": wall_ms}
        return gamma

    # plain steps while acceptance looks too low to pay (the first step at a new batch size is plain anyway):
    # 1 token per row in 50 ms
    assert [step(0, 0.0, estimate=0.05) for _ in range(LearnedPolicy.GUARD_STEPS)] == [0] * LearnedPolicy.GUARD_STEPS
    # drafted steps that deliver 1 token per row in 70 ms: slower than plain, whatever was expected of them
    gammas = [step(0, 70.0) for _ in range(LearnedPolicy.GUARD_STEPS + 2)]
    assert gammas[0] > 0 and gammas[-1] == 0
    # plain from then on, except the periodic one-token probes, which deliver 2 tokens per row in 55 ms
    # (2/55 > 1/50): after enough of them, drafting comes back
    gammas = [step(1, 55.0) for _ in range(200)]
    assert gammas[:4] == [0, 0, 0, 0] and gammas[-1] > 1


def test_learned_at_batch_1_keeps_drafting_through_slow_drafted_steps():
    """One row's steps swing from 1 to γ+1 tokens: its measured rate is no reason to stop (see _measured_pays)."""
    costs = CostModel([1, 4], [1, 2, 5], [[40, 42, 50], [50, 52, 60]], [3, 4])
    policy = LearnedPolicy(None, 4)
    ctx = step_context(1, costs=costs, gamma_max=4)
    policy.init_state(ctx)
    gammas = []
    for i in range(30):  # plain steps at first (estimate too low), then drafted ones that all come out slow
        estimate = 0.05 if i < 10 else 0.9
        ctx.state["first_accept_ema"][:] = estimate
        policy._first_accept_one = estimate
        gamma = int(policy.budget(ctx)[0])
        gammas.append(gamma)
        wall_ms = 70.0 if gamma else 50.0
        policy.observe(ctx, torch.tensor([gamma]), torch.tensor([0]))
        policy._first_accept_one = estimate
        ctx.last_step = {"batch": 1, "tokens": 1 + gamma, "forwards": gamma, "draft_ms": 3.0 * gamma,
                         "verify_ms": wall_ms - 3.0 * gamma, "wall_ms": wall_ms}
    assert gammas[:10].count(0) >= 9 and all(g > 0 for g in gammas[12:])
