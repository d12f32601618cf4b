"""The Serve app over real HTTP on loopback: a real Ray Serve instance, tiny models, the real ``openai`` client.

One Ray cluster and one app for the whole module (starting Serve costs ~15 s on 2 cores); the overload test adds
a second, deliberately tiny-capacity app next to it.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `deploy/` is a top-level folder, not part of the installed package;
    # the replicas get it through runtime_env PYTHONPATH below
    sys.path.insert(0, str(REPO))

openai = pytest.importorskip("openai")
requests = pytest.importorskip("requests")
ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

MODEL = "tiny-speckv"
MAX_TOKENS = 12
PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time", "2 + 2 ="]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _engine_args(target: Path, draft: Path) -> dict:
    return {
        "target": {"source": str(target), "dtype": "fp32", "device": "cpu"},
        "draft": {"kind": "lm", "source": str(draft), "lookup": False},
        "policy": {"name": "fixed", "gamma": 3},
        "max_batch_size": 8,
        "threads": 1,
    }


@pytest.fixture(scope="module")
def engine_args(tiny_pair_dirs) -> dict:
    return _engine_args(*tiny_pair_dirs)


@pytest.fixture(scope="module")
def telemetry_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("serve_telemetry")


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return _free_port()


@pytest.fixture(scope="module")
def base_url(engine_args, telemetry_dir, metrics_port):
    from deploy.app import build_app

    port = _free_port()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False,
             _metrics_export_port=metrics_port, runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app = build_app({
            "model_name": MODEL,
            "engine": engine_args,
            "num_cpus": 0.5,
            "serving": {"max_pending": 128, "telemetry_dir": str(telemetry_dir), "telemetry_every": 4},
        })
        serve.run(app, name="speckv", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def client(base_url):
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", timeout=120, max_retries=0)


@pytest.fixture(scope="module")
def reference(engine_args):
    """The same engine, in-process: greedy results for raw prompts (completions) and chat prompts."""
    from speckv.config import EngineConfig, GenerationRequest, SamplingParams
    from speckv.engine import SpecEngine

    engine = SpecEngine(EngineConfig.model_validate(engine_args))
    sampling = SamplingParams(max_new_tokens=MAX_TOKENS, temperature=0.0)

    def run(prompts: list[str], raw: bool) -> list[str]:
        requests = [GenerationRequest(id=str(i), prompt=p, raw_prompt=raw, sampling=sampling)
                    for i, p in enumerate(prompts)]
        return [r.text for r in engine.generate(requests)]

    return run


def test_models_lists_the_served_model(client):
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_completion_matches_engine_and_reports_usage_and_spec_metrics(client, reference):
    expected = reference(PROMPTS[:1], raw=True)[0]
    resp = client.completions.create(model=MODEL, prompt=PROMPTS[0], max_tokens=MAX_TOKENS, temperature=0)
    assert resp.choices[0].text == expected
    assert resp.choices[0].finish_reason in ("stop", "length")
    assert resp.usage.prompt_tokens > 0 and 0 < resp.usage.completion_tokens <= MAX_TOKENS
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    spec = resp.model_extra["metrics"]["speculative_decoding"]
    assert spec["num_draft_tokens"] > 0 and 0 <= spec["num_accepted_tokens"] <= spec["num_draft_tokens"]
    steps = spec["num_spec_steps"]
    assert steps > 0 and spec["mean_acceptance_length"] == pytest.approx((spec["num_accepted_tokens"] + steps) / steps)
    # every generated token is the prefill's first one or came out of a verify step
    assert resp.usage.completion_tokens <= 1 + spec["num_accepted_tokens"] + steps


def test_chat_greedy_matches_speckv_generate_cli(client, tiny_pair_dirs, tmp_path):
    """Chat completions give exactly what `speckv generate` writes for the same prompts (chat template both)."""
    target, draft = tiny_pair_dirs
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"id": str(i), "prompt": p}) + "\n"
                                               for i, p in enumerate(PROMPTS)))
    subprocess.run([sys.executable, "-m", "speckv.cli", "generate", "--input", str(tmp_path / "in.jsonl"),
                    "--output", str(tmp_path / "out"), "--target", str(target), "--draft", str(draft),
                    "--draft-kind", "lm", "--dtype", "fp32", "--device", "cpu", "--policy", "fixed", "--gamma", "3",
                    "--max-new-tokens", str(MAX_TOKENS), "--threads", "1"], check=True, timeout=300)
    from speckv.io import read_table

    cli = {row["id"]: row["text"] for row in read_table(tmp_path / "out" / "outputs").to_pylist()}
    for i, prompt in enumerate(PROMPTS):
        resp = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}],
                                              max_tokens=MAX_TOKENS, temperature=0)
        assert resp.choices[0].message.content == cli[str(i)], prompt
        assert resp.choices[0].message.role == "assistant"


def test_streaming_completion_and_chat_join_to_the_full_text(client):
    full = client.completions.create(model=MODEL, prompt=PROMPTS[1], max_tokens=MAX_TOKENS, temperature=0)
    stream = client.completions.create(model=MODEL, prompt=PROMPTS[1], max_tokens=MAX_TOKENS, temperature=0,
                                       stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == full.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == full.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens

    messages = [{"role": "user", "content": PROMPTS[2]}]
    chat = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=MAX_TOKENS, temperature=0)
    pieces = [c.choices[0].delta.content or "" for c in
              client.chat.completions.create(model=MODEL, messages=messages, max_tokens=MAX_TOKENS,
                                             temperature=0, stream=True) if c.choices]
    assert "".join(pieces) == chat.choices[0].message.content


def test_tokens_stream_as_they_are_committed(base_url):
    """Chunks leave the server while the reply is still being generated, one engine step's text each: the first
    arrives long before the last (the whole reply is not replayed after the fact)."""
    body = {"model": MODEL, "prompt": PROMPTS[2], "max_tokens": 96, "temperature": 0, "stream": True,
            "stop": None}
    arrivals, texts = [], []
    with requests.post(f"{base_url}/v1/completions", json=body, timeout=120, stream=True) as resp:
        for line in resp.iter_lines(decode_unicode=True):
            if line.startswith("data: {"):
                choices = json.loads(line[len("data: "):])["choices"]
                if choices and choices[0]["text"]:
                    arrivals.append(time.perf_counter())
                    texts.append(choices[0]["text"])
    assert len(texts) > 5  # many steps' worth of chunks (a chain of 3 commits at most 4 tokens a step)
    spread = arrivals[-1] - arrivals[0]
    assert spread > 0 and arrivals[1] - arrivals[0] < spread  # they came over time, not in one burst


def test_a_disconnected_client_frees_its_slot(base_url, metrics_port):
    """Closing a stream mid-reply aborts the request in the engine: its slot is free again, nothing is left running."""
    body = {"model": MODEL, "prompt": PROMPTS[1], "max_tokens": 600, "temperature": 0, "stream": True}
    with requests.post(f"{base_url}/v1/completions", json=body, timeout=120, stream=True) as resp:
        for line in resp.iter_lines(decode_unicode=True):
            if '"text": "' in line and '"text": ""' not in line:
                break  # one chunk of text, then hang up
    deadline, health = time.time() + 30, {}
    while time.time() < deadline:
        health = requests.get(f"{base_url}/health", timeout=10).json()
        if health["running"] == 0 and health["waiting"] == 0:
            break
        time.sleep(0.2)
    assert health == {"status": "ok", "running": 0, "waiting": 0}


def test_stream_is_server_sent_events_ending_in_done(base_url):
    body = {"model": MODEL, "prompt": PROMPTS[0], "max_tokens": 4, "temperature": 0, "stream": True}
    with requests.post(f"{base_url}/v1/completions", json=body, timeout=60, stream=True) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = [line for line in resp.iter_lines(decode_unicode=True) if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    assert "speculative_decoding" in json.loads(events[-2][len("data: "):])["metrics"]


def test_32_concurrent_requests_are_batched_and_all_correct(client, reference, telemetry_dir):
    prompts = [f"Request number {i}: tell me about {w}" for i, w in
               enumerate(["cats", "dogs", "rivers", "stars", "code", "tea", "rain", "salt"] * 4)]
    expected = reference(prompts, raw=True)

    def ask(prompt: str) -> str:
        resp = client.completions.create(model=MODEL, prompt=prompt, max_tokens=MAX_TOKENS, temperature=0)
        return resp.choices[0].text

    with ThreadPoolExecutor(32) as pool:
        got = list(pool.map(ask, prompts))
    assert got == expected
    # telemetry parts: some engine batch held more than one request
    from speckv.io import read_table

    deadline = time.time() + 10
    while not list((telemetry_dir / "telemetry").glob("*.parquet")) and time.time() < deadline:
        time.sleep(0.2)
    steps = read_table(telemetry_dir / "telemetry")
    assert max(steps.column("batch_size").to_pylist()) > 1
    assert read_table(telemetry_dir / "outputs").num_rows >= 32


def test_sampling_with_seed_is_reproducible(client):
    kwargs = dict(model=MODEL, prompt=PROMPTS[3], max_tokens=MAX_TOKENS, temperature=0.8, top_p=0.9)
    texts = [client.completions.create(**kwargs, seed=seed).choices[0].text for seed in (7, 7, 8, 9, 10)]
    assert texts[0] == texts[1]  # the same seed, the same text
    greedy = client.completions.create(**{**kwargs, "temperature": 0}).choices[0].text
    assert len(set(texts[1:] + [greedy])) > 2  # other seeds sample other texts: the sampling parameters were used


@pytest.mark.parametrize("body, status", [
    ('{"model": "tiny-speckv", "prompt": "hi", ', 400),  # broken JSON
    ({"model": MODEL, "prompt": "hi", "max_tokens": -5}, 400),
    ({"model": MODEL, "prompt": "hi", "temperature": -0.1}, 400),
    ({"model": MODEL, "prompt": "hi", "top_p": 0}, 400),
    ({"model": MODEL, "prompt": "hi", "top_p": 1.5}, 400),
    ({"model": MODEL, "prompt": "hi", "n": 3}, 400),
    ({"model": MODEL}, 400),  # no prompt
    ({"model": "no-such-model", "prompt": "hi"}, 404),
    ({"model": MODEL, "prompt": "word " * 1500, "max_tokens": 4}, 400),  # over-long: tiny context is 1024
])
def test_bad_completion_input_gets_4xx_with_openai_error(base_url, body, status):
    content = body if isinstance(body, str) else json.dumps(body)
    resp = requests.post(f"{base_url}/v1/completions", data=content, timeout=60,
                      headers={"content-type": "application/json"})
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["message"] and error["type"] == "invalid_request_error"


def test_bad_chat_input_gets_4xx_through_the_client(client):
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[], max_tokens=4)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], temperature=-1)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "word " * 1500}])
    assert "context" in str(info.value)


def test_spec_metrics_reach_prometheus(client, metrics_port):
    """Latency (time to first token, per output token), load (running, waiting) and the spec-decoding figures are
    exported by Ray's metrics agent (Prometheus text format)."""
    client.completions.create(model=MODEL, prompt=PROMPTS[0], max_tokens=MAX_TOKENS, temperature=0)
    wanted = ("ray_speckv_draft_tokens", "ray_speckv_accepted_tokens", "ray_speckv_acceptance_rate",
              "ray_speckv_acceptance_length_bucket", "ray_speckv_time_to_first_token_seconds_bucket",
              "ray_speckv_time_per_output_token_seconds_bucket", "ray_speckv_num_requests_running",
              "ray_speckv_num_requests_waiting")
    deadline, text = time.time() + 60, ""
    while time.time() < deadline:
        try:
            text = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        except requests.ConnectionError:
            text = ""
        if all(name in text for name in wanted):
            break
        time.sleep(2)
    missing = [name for name in wanted if name not in text]
    assert not missing, f"not exported: {missing}"


def test_overload_gets_429_or_503_not_a_crash_or_a_hang(base_url, engine_args):
    """A replica whose engine loop holds 2 requests and whose Serve queue holds 2 more: a burst of 12 gets some
    429s (the loop's own bound, with an OpenAI error body) or 503s (Serve's), quickly, then it serves again."""
    from deploy.app import SpecKVServer

    app = SpecKVServer.options(
        max_ongoing_requests=4, max_queued_requests=2, ray_actor_options={"num_cpus": 0.5},
        user_config={"max_pending": 2},
    ).bind({"model_name": MODEL, "engine": engine_args})
    serve.run(app, name="overload", route_prefix="/overload")
    try:
        body = {"model": MODEL, "prompt": "Count to one hundred:", "max_tokens": 300, "temperature": 0,
                "stop": None}

        def post(_: int) -> tuple[int, dict]:
            resp = requests.post(f"{base_url}/overload/v1/completions", json=body, timeout=120)
            return resp.status_code, resp.json() if resp.headers.get("content-type", "").startswith("application/json") else {}

        start = time.time()
        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(post, range(12)))
        codes = [c for c, _ in answers]
        assert set(codes) <= {200, 429, 503}, codes
        assert 200 in codes and (429 in codes or 503 in codes), codes
        assert all(b["error"]["type"] == "rate_limit_error" for c, b in answers if c == 429)
        assert time.time() - start < 120
        assert post(0)[0] == 200  # still serving
    finally:
        serve.delete("overload")


def test_64_streaming_clients_some_leaving_some_malformed(base_url, client):
    """Every well-formed request whose client stays completes exactly once; clients that leave and malformed
    bodies cost nothing else; no 5xx."""
    def one(i: int) -> tuple[str, object]:
        if i % 8 == 3:  # malformed: a 4xx, never a 5xx
            resp = requests.post(f"{base_url}/v1/completions", json={"model": MODEL, "prompt": "", "max_tokens": 5},
                                 timeout=60)
            return "bad", resp.status_code
        if i % 8 == 5:  # leaves after the first chunk
            body = {"model": MODEL, "prompt": f"Tell me about item {i}", "max_tokens": 200, "stream": True,
                    "temperature": 0}
            with requests.post(f"{base_url}/v1/completions", json=body, timeout=120, stream=True) as resp:
                next(resp.iter_lines())
                return "left", resp.status_code
        stream = client.completions.create(model=MODEL, prompt=f"Tell me about item {i}", max_tokens=MAX_TOKENS,
                                           temperature=0, stream=True)
        chunks = [c for c in stream if c.choices]
        return "ok", (chunks[-1].choices[0].finish_reason, "".join(c.choices[0].text for c in chunks))

    with ThreadPoolExecutor(64) as pool:
        answers = list(pool.map(one, range(64)))
    assert [code for kind, code in answers if kind == "bad"] == [400] * 8
    assert all(code == 200 for kind, code in answers if kind == "left")
    finished = [value for kind, value in answers if kind == "ok"]
    assert len(finished) == 48 and all(reason in ("stop", "length") and text for reason, text in finished)
    health = requests.get(f"{base_url}/health", timeout=10).json()
    deadline = time.time() + 30
    while (health["running"] or health["waiting"]) and time.time() < deadline:
        time.sleep(0.2)
        health = requests.get(f"{base_url}/health", timeout=10).json()
    assert health["running"] == 0 and health["waiting"] == 0  # the clients that left were aborted, not kept running
