"""The engine loop in its own thread: requests from several threads share one running batch; async streams get
deltas as they are committed; closing a stream aborts its request; overload is refused, not queued for ever."""

from __future__ import annotations

import asyncio
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from speckv.config import EngineConfig, GenerationRequest, PolicySpec, SamplingParams
from speckv.drafters.draft_lm import DraftLM
from speckv.engine import RequestError, SpecEngine
from speckv.loop import EngineLoop, Overloaded, wait_all
from tests.conftest import related_draft, tiny_llama

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def engine(tokenizer):
    target = tiny_llama(0)
    return SpecEngine(EngineConfig(policy=PolicySpec(name="fixed", gamma=3), max_batch_size=4, max_context=200),
                      target=target, tokenizer=tokenizer, drafter=DraftLM(related_draft(target), CPU, 49152),
                      device=CPU)


def request(i: int, n: int = 12) -> GenerationRequest:
    return GenerationRequest(id=f"r{i}", prompt=f"Item {i}: say something", raw_prompt=True,
                             sampling=SamplingParams(max_new_tokens=n, ignore_eos=True))


def test_requests_from_many_threads_share_the_batch_and_match_generate(engine):
    alone = {r.id: r.token_ids for r in engine.generate([request(i) for i in range(10)])}
    loop = EngineLoop(engine)
    try:
        with ThreadPoolExecutor(10) as pool:
            futures = list(pool.map(lambda i: loop.submit(request(i)), range(10)))
        results = wait_all(futures)
        assert {r.id: r.token_ids for r in results} == alone
        assert all(len(r.steps) and max(s["batch_size"] for s in r.steps) > 1 for r in results)  # they shared steps
        assert loop.in_flight == 0 and loop.fault is None
    finally:
        loop.close()


def test_a_stream_yields_deltas_and_closing_it_aborts(engine):
    loop = EngineLoop(engine)

    async def scenario():
        deltas = [d async for d in loop.stream(request(1, 30))]
        assert len([d for d in deltas if d.token_ids]) > 2 and deltas[-1].finish_reason == "length"
        assert [t for d in deltas for t in d.token_ids] == deltas[-1].result.token_ids
        stream = loop.stream(request(2, 500))
        first = await stream.__anext__()
        await stream.aclose()  # the client went away
        for _ in range(200):
            if loop.in_flight == 0:
                break
            await asyncio.sleep(0.02)
        return first

    try:
        first = asyncio.run(scenario())
        assert not first.finished and loop.in_flight == 0 and engine.num_running == 0
    finally:
        loop.close()


def test_bad_input_and_overload_are_refused_at_once(engine):
    loop = EngineLoop(engine, max_pending=2)
    try:
        with pytest.raises(RequestError, match="context"):
            loop.submit(GenerationRequest(id="long", prompt="word " * 400, raw_prompt=True))
        futures = [loop.submit(request(i, 40)) for i in range(2)]
        with pytest.raises(RequestError, match="already in flight"):  # refused here, not in the engine's thread
            loop.submit(request(0))
        with pytest.raises(Overloaded):
            loop.submit(request(9))
        assert all(r.status == "ok" for r in wait_all(futures))
        assert loop.submit(request(10)).result(timeout=60).status == "ok"  # room again once they are done
    finally:
        loop.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts threads in /proc/self/task")
def test_the_loop_releases_the_constructing_threads_openmp_workers(engine):
    """A thread that ran a multi-threaded op keeps its OpenMP workers parked; with more of them than CPUs libgomp
    throttles every spin-wait, which slowed the loop's steps ~1.7×. The loop hands the constructing thread's back."""
    import os
    import threading

    def threads_in_process() -> int:
        return len(os.listdir("/proc/self/task"))

    before_threads = torch.get_num_threads()
    result: dict[str, int] = {}

    def construct() -> None:  # a fresh thread, so the count is its own pool's and nobody else's
        torch.set_num_threads(2)
        torch.randn(256, 256) @ torch.randn(256, 256)  # a parallel region: this thread now has a parked worker
        result["with_pool"] = threads_in_process()
        loop = EngineLoop(engine)  # releases this thread's worker, starts the loop's own thread
        result["after"] = threads_in_process()
        loop.close()

    try:
        worker = threading.Thread(target=construct)
        worker.start()
        worker.join()
    finally:
        torch.set_num_threads(before_threads)
    # -1 worker released, +1 engine thread (its own workers start only with its first step, and none ran)
    assert result["after"] == result["with_pool"], result
