"""The ring buffer returns exactly the samples asked for, or an error — never stale audio."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from monitor.audio.ringbuffer import NotYetWritten, Overwritten, RingBuffer


def test_absolute_indices_across_wraparound():
    ring = RingBuffer(100, 16000)
    data = np.arange(1000, dtype=np.float32)
    for i in range(0, 1000, 37):
        ring.write(data[i : i + 37])
    assert ring.written == 1000 and ring.oldest == 900
    np.testing.assert_array_equal(ring.read(900, 1000), data[900:1000])
    np.testing.assert_array_equal(ring.read(950, 960), data[950:960])


def test_overwritten_and_future_samples_are_errors():
    ring = RingBuffer(100, 16000)
    ring.write(np.zeros(250, dtype=np.float32))
    with pytest.raises(Overwritten):
        ring.read(149, 200)
    with pytest.raises(NotYetWritten):
        ring.read(200, 251)
    with pytest.raises(ValueError):
        ring.read(220, 210)


def test_write_larger_than_capacity_keeps_the_newest():
    ring = RingBuffer(10, 16000)
    data = np.arange(25, dtype=np.float32)
    ring.write(data)
    assert ring.written == 25
    np.testing.assert_array_equal(ring.read(15, 25), data[15:])


def test_time_of_follows_the_anchor():
    ring = RingBuffer(16000, 16000)
    ring.write(np.zeros(16000, dtype=np.float32), wall_time=1000.0)
    assert ring.time_of(16000) == pytest.approx(1000.0)
    assert ring.time_of(8000) == pytest.approx(999.5)


def test_a_gap_of_any_length_moves_the_index_on_by_all_of_it():
    """An outage far longer than the ring: the index follows time, only a ring's worth is stored."""
    ring = RingBuffer(100, 10)
    ring.write(np.ones(50, dtype=np.float32), wall_time=1000.0)
    started = time.monotonic()
    ring.write_gap(10**12)  # about three thousand years at 10 Hz: constant time and memory
    assert time.monotonic() - started < 1.0
    end = 50 + 10**12
    assert ring.written == end and ring.oldest == end - 100
    np.testing.assert_array_equal(ring.read(end - 100, end), np.zeros(100, dtype=np.float32))
    with pytest.raises(Overwritten):
        ring.read(end - 101, end)
    assert ring.gaps == ((50, end),)
    assert ring.silent_samples == 10**12  # never captured: silence, not sound
    assert ring.time_of(end) == pytest.approx(1000.0 + 10**11)  # the clock went on through the gap
    ring.write_gap(30)  # the same outage, filled in a second step: still one gap
    ring.write(np.arange(1, 21, dtype=np.float32))
    assert ring.gaps == ((50, end + 30),)
    np.testing.assert_array_equal(ring.read(end + 20, end + 50), np.r_[np.zeros(10), np.arange(1, 21)].astype(np.float32))
    # a short gap inside the ring zeroes exactly its own samples
    ring.write_gap(5)
    ring.write(np.full(3, 7.0, dtype=np.float32))
    np.testing.assert_array_equal(ring.read(end + 45, end + 58), np.r_[np.arange(16, 21), np.zeros(5), [7, 7, 7]].astype(np.float32))
    assert ring.gaps[-1] == (end + 50, end + 55)


def test_wait_for_wakes_on_write_and_on_close():
    ring = RingBuffer(1000, 16000)
    got: list[tuple[bool, float]] = []

    def waiter(index: int) -> None:
        started = time.monotonic()
        got.append((ring.wait_for(index, timeout=10), time.monotonic() - started))

    t = threading.Thread(target=waiter, args=(500,))
    t.start()
    time.sleep(0.2)  # the waiter is waiting: nothing written yet
    assert t.is_alive()
    ring.write(np.zeros(500, dtype=np.float32))
    t.join(5)
    assert got[0][0] is True and got[0][1] < 5
    # a waiter for samples that never come is woken by close(), long before its timeout
    t = threading.Thread(target=waiter, args=(2000,))
    t.start()
    time.sleep(0.2)
    assert t.is_alive()
    ring.close()
    t.join(5)
    assert not t.is_alive()
    assert got[1][0] is False and got[1][1] < 2
    assert RingBuffer(10, 16000).wait_for(5, timeout=0.05) is False


def test_concurrent_writer_never_yields_torn_reads():
    """A reader racing a fast writer gets either the exact samples or Overwritten."""
    ring = RingBuffer(4096, 16000)
    stop = threading.Event()
    block = 257

    def writer():
        i = 0
        while not stop.is_set():
            ring.write(np.arange(i, i + block, dtype=np.float64).astype(np.float32))
            i += block

    t = threading.Thread(target=writer)
    t.start()
    checked = overwritten = 0
    try:
        while checked < 2000:
            end = ring.written
            start = max(0, end - 4096)
            try:
                got = ring.read(start, end)
            except Overwritten:
                overwritten += 1
                continue
            # float32 holds integers exactly up to 2**24; keep the test inside that range
            if end > 2**24:
                break
            np.testing.assert_array_equal(got, np.arange(start, end, dtype=np.float32))
            checked += 1
    finally:
        stop.set()
        t.join()
    assert checked > 0
