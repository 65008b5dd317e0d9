"""The engine thread around a real tiny model: order, dropping, blocking, heartbeat, stop, failures.

Timing is controlled with events the engine waits on (instrumented, not slept), so the tests
say the same on a slow machine as on a fast one.
"""

from __future__ import annotations

import threading
import time

import pytest

from monitor.engine.api import Question, Request, Result
from monitor.engine.local.engine import Engine
from monitor.engine.settings import ModelSettings
from monitor.engine.worker import IDLE_TICK, EngineWorker
from monitor.testing.signals import make_window, noise

QUESTIONS = (Question("dog", "Is a dog barking?"), Question("help", "Is someone calling for help?"))


@pytest.fixture(scope="module")
def loaded(tiny_model_dir) -> Engine:
    return Engine.load(ModelSettings(path=tiny_model_dir))


class GatedEngine(Engine):
    """A real engine whose `run` can be held at a gate, and which records the threads that touch it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_batch = 1  # these tests hold one window at the gate at a time
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Semaphore(0)
        self.threads: set[int] = {threading.get_ident()}
        self.fail_seqs: set[int] = set()  # windows whose forward pass raises
        self._seq = -1

    def answer(self, requests):
        out = []
        for request in requests:
            self.threads.add(threading.get_ident())
            self._seq = request.window.seq
            self.started.release()
            assert self.gate.wait(60), "test never opened the gate"
            out.extend(super().answer([request]))
        return out

    def _forward(self, **inputs):
        self.threads.add(threading.get_ident())
        if self._seq in self.fail_seqs:
            raise RuntimeError("injected fault")
        return super()._forward(**inputs)


class Collector:
    def __init__(self):
        self.results: list[Result] = []
        self.lock = threading.Lock()

    def __call__(self, result: Result) -> None:
        with self.lock:
            self.results.append(result)

    @property
    def seqs(self) -> list[int]:
        with self.lock:
            return [r.window.seq for r in self.results]


def make_worker(loaded: Engine, inbox_size: int = 2, on_result=None, **kwargs):
    made: dict[str, GatedEngine] = {}

    def factory(settings: ModelSettings) -> GatedEngine:
        engine = GatedEngine(loaded.model, loaded.processor, settings, loaded.placement)
        made["engine"] = engine
        return engine

    collector = Collector()
    worker = EngineWorker(loaded.settings, on_result or collector, inbox_size=inbox_size, engine_factory=factory, **kwargs)
    worker.start()
    assert worker.wait_ready(60) and worker.load_error is None
    return worker, made["engine"], collector


def request(seq: int) -> Request:
    return Request(make_window(noise(1.0, seed=seq), seq=seq, start=seq * 16000), QUESTIONS)


def wait_until(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_requests_are_answered_in_order_by_the_one_engine_thread(loaded):
    worker, engine, out = make_worker(loaded)
    try:
        for seq in range(5):
            assert worker.submit(request(seq), drop_oldest=False)
        assert worker.wait_idle(60)
        assert out.seqs == [0, 1, 2, 3, 4]
        assert all(r.error is None and set(r.scores) == {"dog", "help"} for r in out.results)
        assert worker.stats.processed == 5 and worker.stats.skipped == 0 and worker.stats.last_engine_ms > 0
        # the engine was built, and ran every forward, in the worker thread and nowhere else
        assert engine.threads == {worker.thread.ident} != {threading.get_ident()}
    finally:
        assert worker.stop(10)


def test_results_are_frozen_and_the_worker_delivers_copies_tagged_with_room_and_rules(loaded):
    """A Result is read by other threads (rules, sinks): nobody may change it after the engine made it."""
    import dataclasses

    answered: list[Result] = []

    class Keeping(GatedEngine):
        def answer(self, requests):
            answered.extend(super().answer(requests))
            return answered[-len(requests):]

    collector = Collector()
    worker = EngineWorker(loaded.settings, collector, engine_factory=lambda settings: Keeping(
        loaded.model, loaded.processor, settings, loaded.placement)).start()
    try:
        assert worker.wait_ready(60)
        asked = Request(make_window(noise(1.0, seed=7), seq=7), QUESTIONS, generation=3, source="porch")
        assert worker.submit(asked, drop_oldest=False) and worker.wait_idle(60)
    finally:
        assert worker.stop(10)
    (got,) = collector.results
    assert (got.generation, got.source, got.error) == (3, "porch", None) and set(got.scores) == {"dog", "help"}
    (made,) = answered
    assert (made.generation, made.source) == (0, "") and made is not got  # the engine's own Result is untouched
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.source = "kitchen"  # type: ignore[misc]


def test_a_full_inbox_drops_the_oldest_pending_request_never_waits(loaded):
    worker, engine, out = make_worker(loaded, inbox_size=2)
    try:
        engine.gate.clear()
        worker.submit(request(0), drop_oldest=True)
        assert engine.started.acquire(timeout=30)  # 0 is in flight, held at the gate
        for seq in (1, 2, 3, 4):
            assert worker.submit(request(seq), drop_oldest=True)  # returns at once even though full
        assert worker.stats.skipped == 2 and worker.stats.pending == 2
        engine.gate.set()
        assert worker.wait_idle(60)
        assert out.seqs == [0, 3, 4]
    finally:
        engine.gate.set()
        worker.stop(10)


def test_replay_submit_waits_for_room_instead_of_dropping(loaded):
    worker, engine, out = make_worker(loaded, inbox_size=2)
    try:
        engine.gate.clear()
        worker.submit(request(0), drop_oldest=False)
        assert engine.started.acquire(timeout=30)
        worker.submit(request(1), drop_oldest=False)
        worker.submit(request(2), drop_oldest=False)
        blocked = threading.Thread(target=worker.submit, args=(request(3), False))
        blocked.start()
        blocked.join(0.3)
        assert blocked.is_alive(), "a full inbox must make a replay submitter wait"
        assert not worker.submit(request(9), drop_oldest=False, timeout=0.05)  # a bounded wait gives up
        engine.gate.set()
        blocked.join(30)
        assert not blocked.is_alive()
        assert worker.wait_idle(60)
        assert out.seqs == [0, 1, 2, 3] and worker.stats.skipped == 0
    finally:
        engine.gate.set()
        worker.stop(10)


def test_heartbeat_advances_while_idle_and_stops_while_the_engine_hangs(loaded):
    worker, engine, _ = make_worker(loaded)
    try:
        first = worker.heartbeat
        wait_until(lambda: worker.heartbeat > first, timeout=10 * IDLE_TICK + 10)
        engine.gate.clear()
        worker.submit(request(0), drop_oldest=True)
        assert engine.started.acquire(timeout=30)
        stuck = worker.heartbeat
        time.sleep(3 * IDLE_TICK)  # three idle ticks' worth: a healthy loop would have beaten by now
        assert worker.heartbeat == stuck
        engine.gate.set()
        wait_until(lambda: worker.heartbeat > stuck)
    finally:
        engine.gate.set()
        worker.stop(10)


def test_stop_abandons_a_hung_request_within_the_deadline(loaded):
    worker, engine, out = make_worker(loaded)
    engine.gate.clear()
    worker.submit(request(0), drop_oldest=True)
    worker.submit(request(1), drop_oldest=True)
    assert engine.started.acquire(timeout=30)
    assert worker.stop(timeout=0.3) is False
    assert worker.stats.skipped == 1  # the pending one
    engine.gate.set()  # the hung call finally returns ...
    worker.thread.join(30)
    assert not worker.thread.is_alive()
    assert out.seqs == []  # ... but its result is not delivered after the stop
    assert not worker.submit(request(2), drop_oldest=True)


@pytest.mark.parametrize("drain, delivered, skipped", [(False, [0], 1), (True, [0, 1], 0)])
def test_stop_finishes_the_request_in_flight_and_drops_or_drains_the_rest(loaded, drain, delivered, skipped):
    worker, engine, out = make_worker(loaded)
    engine.gate.clear()
    worker.submit(request(0), drop_oldest=False)
    assert engine.started.acquire(timeout=30)
    worker.submit(request(1), drop_oldest=False)
    stopped: list[bool] = []
    stopper = threading.Thread(target=lambda: stopped.append(worker.stop(30, drain=drain)))
    stopper.start()
    wait_until(lambda: worker._stopping)
    engine.gate.set()
    stopper.join(60)
    assert stopped == [True]
    assert out.seqs == delivered and worker.stats.skipped == skipped


def test_a_failing_window_is_isolated_and_a_failing_consumer_does_not_kill_the_thread(loaded):
    calls = []

    def on_result(result: Result) -> None:
        calls.append(result)
        if len(calls) == 1:
            raise ValueError("consumer bug")

    worker, engine, _ = make_worker(loaded, on_result=on_result)
    try:
        engine.fail_seqs = {1}
        for seq in range(3):
            worker.submit(request(seq), drop_oldest=False)
        assert worker.wait_idle(60)
        assert [r.window.seq for r in calls] == [0, 1, 2]
        assert calls[0].error is None and calls[2].error is None
        assert calls[1].error == "RuntimeError: injected fault (window 1 skipped)"
        assert worker.stats.processed == 3 and worker.stats.failed == 1
        assert worker.thread.is_alive()
    finally:
        worker.stop(10)


def test_calibration_at_start_runs_in_the_engine_thread(loaded):
    worker, engine, _ = make_worker(loaded, calibrate=["Is a dog barking?", "Is it raining?"], calibrate_seconds=2.0)
    try:
        assert worker.wait_idle(60)
        assert engine.calibrated == 2 and engine.calibration_seconds == 2.0
        worker.calibrate(["Is a cat here?"])
        assert worker.wait_idle(60)
        assert set(engine.baselines) == {"Is a dog barking?", "Is it raining?", "Is a cat here?"}
    finally:
        worker.stop(10)


def test_the_model_loads_in_the_worker_thread_and_a_load_failure_is_reported(tiny_model_dir, tmp_path):
    results: list[Result] = []
    worker = EngineWorker(ModelSettings(path=tiny_model_dir), results.append).start()
    try:
        assert worker.wait_ready(120) and worker.load_error is None
        assert worker.submit(request(0), drop_oldest=True)
        assert worker.wait_idle(60) and results[0].error is None
    finally:
        assert worker.stop(10)

    bad = EngineWorker(ModelSettings(path=tmp_path / "missing"), results.append).start()
    assert bad.wait_ready(60) is False
    assert bad.load_error is not None and "model.path" in bad.load_error and "\n" not in bad.load_error
    assert not bad.submit(request(1), drop_oldest=True)
    assert bad.stop(5)


# ---------------------------------------------------------------------------- several rooms


def room_request(source: str, seq: int, live: bool = True) -> Request:
    return Request(make_window(noise(1.0, seed=seq), seq=seq, start=seq * 16000), QUESTIONS, source=source, live=live)


def test_a_full_inbox_drops_only_its_own_rooms_oldest_window(loaded):
    worker, engine, out = make_worker(loaded, inbox_size=2)
    try:
        engine.gate.clear()
        worker.submit(room_request("porch", 0), drop_oldest=True)
        assert engine.started.acquire(timeout=30)  # held at the gate
        worker.submit(room_request("kitchen", 100), drop_oldest=True)
        for seq in (1, 2, 3, 4):  # the porch floods its own inbox
            worker.submit(room_request("porch", seq), drop_oldest=True)
        assert worker.stats.skipped_by_source == {"porch": 2} and worker.pending("kitchen") == 1
        engine.gate.set()
        assert worker.wait_idle(60)
        assert sorted(r.window.seq for r in out.results if r.source == "kitchen") == [100]
        assert [r.window.seq for r in out.results if r.source == "porch"] == [0, 3, 4]
    finally:
        engine.gate.set()
        worker.stop(10)


class BatchEngine(GatedEngine):
    """Records the (source, seq) of every batch it is handed."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_batch = 3
        self.batches: list[list[tuple[str, int]]] = []

    def answer(self, requests):
        self.batches.append([(r.source, r.window.seq) for r in requests])
        self.started.release()
        assert self.gate.wait(60)
        return Engine.answer(self, requests)


def test_windows_of_all_rooms_are_taken_round_robin_up_to_max_batch(loaded):
    collector = Collector()
    made: list[BatchEngine] = []
    worker = EngineWorker(loaded.settings, collector, inbox_size=3,
                          engine_factory=lambda s: made.append(BatchEngine(loaded.model, loaded.processor, s,
                                                                           loaded.placement)) or made[-1])
    worker.start()
    assert worker.wait_ready(60)
    engine = made[0]
    try:
        engine.gate.clear()
        worker.submit(room_request("a", 0), drop_oldest=True)
        assert engine.started.acquire(timeout=30)  # the first batch [a0] is held
        for seq in (1, 2, 3):
            worker.submit(room_request("a", seq), drop_oldest=True)
        for seq in (10, 11):
            worker.submit(room_request("b", seq), drop_oldest=True)
        worker.submit(room_request("c", 20), drop_oldest=True)
        engine.gate.set()
        assert worker.wait_idle(60)
        # one of each room per round; each batch starts one room further along (a, then b, then c)
        assert engine.batches == [[("a", 0)], [("b", 10), ("c", 20), ("a", 1)], [("a", 2), ("b", 11), ("a", 3)]]
        per_room = {s: [r.window.seq for r in collector.results if r.source == s] for s in "abc"}
        assert per_room == {"a": [0, 1, 2, 3], "b": [10, 11], "c": [20]}  # in order within each room
        assert all(r.error is None for r in collector.results)
    finally:
        engine.gate.set()
        worker.stop(10)


def test_a_room_fed_as_fast_as_possible_delays_a_live_room_by_at_most_one_batch(loaded):
    """A file read flat out beside a microphone: the microphone never drops a window, and waits
    at most for the batch in flight before its window is in the next one."""
    delivered: dict[tuple[str, int], float] = {}
    lock = threading.Lock()

    def collect(result: Result) -> None:
        with lock:
            delivered[(result.source, result.window.seq)] = time.monotonic()

    settings = loaded.settings.model_copy(update={"max_batch": 2})
    worker = EngineWorker(settings, collect, inbox_size=2,
                          engine_factory=lambda s: Engine(loaded.model, loaded.processor, s, loaded.placement)).start()
    assert worker.wait_ready(60)
    stop = threading.Event()

    def flood() -> None:  # the file: blocks for room, never drops
        seq = 0
        while not stop.is_set():
            if worker.submit(room_request("file", seq, live=False), drop_oldest=False, timeout=0.5):
                seq += 1

    feeder = threading.Thread(target=flood, daemon=True)
    feeder.start()
    submitted: dict[int, float] = {}
    batch_ms: list[float] = []
    try:
        time.sleep(1.0)  # the file's backlog is there first
        for seq in range(12):
            submitted[seq] = time.monotonic()
            assert worker.submit(room_request("mic", 1000 + seq), drop_oldest=True)
            batch_ms.append(worker.stats.last_engine_ms)
            time.sleep(0.25)
        assert worker.wait_idle(30, source="mic")
    finally:
        stop.set()
        feeder.join(5)
        worker.stop(10)
    assert worker.stats.skipped_by_source.get("mic", 0) == 0
    slowest = max(batch_ms + [worker.stats.last_engine_ms]) / 1000
    waits = [delivered[("mic", 1000 + seq)] - t for seq, t in submitted.items()]
    # the batch in flight when it arrived, then its own batch (and a little scheduling slack)
    assert max(waits) <= 2 * slowest + 0.25, (waits, slowest)
    assert sum(1 for key in delivered if key[0] == "file") > 12  # the file was answered meanwhile too
