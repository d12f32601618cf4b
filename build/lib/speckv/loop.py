"""The engine loop in a background thread: Serve streams from it, the batch job keeps it full from a queue of rows.

:class:`EngineLoop` owns one :class:`~speckv.engine.SpecEngine` and runs ``step()`` in its own thread while any
request is unfinished; callers in other threads (an asyncio event loop, Ray actor threads) hand it requests and
aborts through a queue, so a step never waits on a caller and a caller never waits on a step. Each request gets its
deltas through a callback run on the engine thread:

* :meth:`EngineLoop.stream` — an async iterator of :class:`~speckv.sequence.Delta` for one request (Serve): tokens
  as they are committed; closing the iterator early (a client that disconnected) aborts the request;
* :meth:`EngineLoop.submit` — a ``concurrent.futures.Future`` of the finished result (the batch job).

Input errors (a prompt over the context) surface in the caller's thread, from :meth:`SpecEngine.prepare`; a fault
in the engine itself finishes every request in flight with ``finish_reason='error'`` and is kept in :attr:`fault`.

**One OpenMP pool.** torch runs its CPU kernels on libgomp, which keeps a pool of worker threads for every thread
that ever ran a multi-threaded op, parked after use; once the process has more such workers than CPUs, libgomp cuts
every worker's spin-wait from ~300 000 to 100 iterations, so each op pays a futex wake-up. The thread that built the
engine (loading, dtype choice, cost calibration) owns such a pool; left parked, it made every step on the loop's thread
slower: an 8×576·576×2048 bf16 matmul 90 → 160 µs, batch-8 generation 102–141 → 70–85 tok/s (AMD EPYC, AVX512,
2 threads). So the loop releases the constructing thread's pool (``omp_pause_resource_all``) and runs every step on
its own thread with the same thread count: construct the loop on the thread that built the engine, and run no torch
ops on that thread afterwards.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, as_completed

import torch

from speckv.config import GenerationRequest
from speckv.engine import RequestError, SpecEngine
from speckv.sequence import Delta, GenerationResult

log = logging.getLogger(__name__)


class Overloaded(RuntimeError):
    """More requests in flight than the loop accepts (``max_pending``): the caller should back off (HTTP 429)."""


class EngineLoop:
    def __init__(self, engine: SpecEngine, max_pending: int = 256) -> None:
        self.engine, self.max_pending = engine, max_pending
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()  # ("add", seq, callback) | ("abort", id)
        self._callbacks: dict[str, Callable[[Delta], None]] = {}
        self._ids: set[str] = set()  # requests in flight, added and not yet finished
        self._lock = threading.Lock()  # guards _ids only
        self._wake = threading.Event()
        self._closed = False
        self.fault: str | None = None
        self.steps = 0
        self._threads = torch.get_num_threads()
        release_openmp_workers()
        self._thread = threading.Thread(target=self._run, name="speckv-engine", daemon=True)
        self._thread.start()

    # ---- callers' side ----------------------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        return len(self._ids)

    @property
    def running(self) -> int:
        return self.engine.num_running

    @property
    def waiting(self) -> int:
        return max(len(self._ids) - self.engine.num_running, 0)

    def add(self, request: GenerationRequest, callback: Callable[[Delta], None]) -> str:
        """Queue ``request``; ``callback(delta)`` runs on the engine thread for each of its deltas, the last one
        finished. Raises RequestError (bad input, an id already in flight) or Overloaded at once."""
        if self.fault is not None:
            raise RuntimeError(f"engine fault: {self.fault}")
        seq = self.engine.prepare(request)
        with self._lock:
            if seq.id in self._ids:
                raise RequestError(f"request id {seq.id!r} is already in flight; ids must be unique while running")
            if len(self._ids) >= self.max_pending:
                raise Overloaded(f"{len(self._ids)} requests in flight (max_pending={self.max_pending})")
            self._ids.add(seq.id)
        self._inbox.put(("add", seq, callback))
        self._wake.set()
        return seq.id

    def abort(self, request_id: str) -> None:
        self._inbox.put(("abort", request_id, None))
        self._wake.set()

    def submit(self, request: GenerationRequest) -> Future:
        """A Future of the request's GenerationResult."""
        future: Future = Future()

        def done(delta: Delta) -> None:
            if delta.finished:
                future.set_result(delta.result)

        self.add(request, done)
        return future

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        """The request's deltas as they are committed. Closing the iterator before the last one aborts it."""
        loop = asyncio.get_running_loop()
        deltas: asyncio.Queue = asyncio.Queue()
        request_id = self.add(request, lambda d: loop.call_soon_threadsafe(deltas.put_nowait, d))
        finished = False
        try:
            while not finished:
                delta = await deltas.get()
                finished = delta.finished
                yield delta
        finally:
            if not finished:
                self.abort(request_id)

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=30)

    # ---- the engine thread ------------------------------------------------------------------------------
    def _run(self) -> None:
        torch.set_num_threads(self._threads)  # per thread in OpenMP: the constructing thread's count
        engine = self.engine
        while not self._closed:
            self._drain_inbox()
            if not engine.has_unfinished():
                self._wake.wait(timeout=1.0)
                self._wake.clear()
                continue
            try:
                deltas = engine.step()
            except Exception as exc:  # noqa: BLE001 — an engine fault must not kill the thread silently
                log.exception("engine step failed")
                self.fault = f"{type(exc).__name__}: {exc}"
                self._fail_all(self.fault)
                return
            self.steps += 1
            for delta in deltas:
                self._deliver(delta)

    def _drain_inbox(self) -> None:
        while True:
            try:
                kind, item, callback = self._inbox.get_nowait()
            except queue.Empty:
                return
            if kind == "add":
                self._callbacks[item.id] = callback
                self.engine.add_request(item)
            else:
                self.engine.abort(item)

    def _deliver(self, delta: Delta) -> None:
        callback = self._callbacks.get(delta.request_id)
        if delta.finished:
            self._callbacks.pop(delta.request_id, None)
            with self._lock:
                self._ids.discard(delta.request_id)
        if callback is not None:
            try:
                callback(delta)
            except Exception:  # noqa: BLE001 — one caller's broken callback must not stop the others
                log.exception("delta callback for %s failed", delta.request_id)

    def _fail_all(self, message: str) -> None:
        self._drain_inbox()
        for request_id in list(self._callbacks):
            result = GenerationResult(id=request_id, task=None, prompt="", status="error",
                                      error=f"engine error: {message}", actor_id=self.engine.actor_id)
            self._deliver(Delta(request_id, [], "", "error", result))


def release_openmp_workers() -> bool:
    """Release the calling thread's parked OpenMP workers (see the module's docstring); False where torch's OpenMP
    runtime is not found in this process (it then has nothing to release, or is not one this can reach)."""
    try:
        with open("/proc/self/maps") as maps:
            path = next((line.split()[-1] for line in maps if "libgomp" in line or "libiomp" in line), None)
    except OSError:
        return False
    if path is None:
        return False
    try:
        return ctypes.CDLL(path).omp_pause_resource_all(1) == 0  # 1 = omp_pause_soft: threads go, state stays
    except (OSError, AttributeError):
        return False


def wait_all(futures: list[Future], progress: Callable[[GenerationResult], None] | None = None
             ) -> list[GenerationResult]:
    """Results in the futures' order, calling ``progress`` for each as it finishes (in completion order)."""
    for future in as_completed(futures):
        if progress:
            progress(future.result())
    return [f.result() for f in futures]
