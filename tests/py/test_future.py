"""pp.Job as a future; pp.as_completed; Server.map / imap / imap_unordered."""
import concurrent.futures
import threading
import time

import pytest

import pp
from helpers import wait_for


# ---------------------------------------------------------------------------
# job functions

def square(x):
    return x * x


def inv(x):
    return 1.0 / x


def sleep_return(x, secs):
    time.sleep(secs)
    return x


def touch(path):
    with open(path, "w") as f:
        f.write("ran")
    return "touched"


def touch_then_sleep(path, value, secs):
    with open(path, "w") as f:
        f.write("started")
    time.sleep(secs)
    return value


def raise_value_error(msg):
    raise ValueError(msg)


def slow_first(x):
    # item 0 is slow, the rest are quick
    time.sleep(1.5 if x == 0 else 0.01)
    return x * 10


def reversed_delay(x):
    # earlier items take longer: completion order is the reverse of input order
    time.sleep(0.05 * (6 - x))
    return x


# ---------------------------------------------------------------------------
# result / exception / done

def test_result_and_done(server):
    job = server.submit(square, (12,))
    assert job.result(timeout=30) == 144
    assert job.done()
    assert job.ready()
    assert job.successful()
    assert job.exception(timeout=30) is None
    assert not job.cancelled()


def test_result_timeout_raises_timeouterror(server):
    job = server.submit(sleep_return, ("late", 2.0))
    with pytest.raises(TimeoutError):
        job.result(timeout=0.05)
    with pytest.raises(concurrent.futures.TimeoutError):
        job.get(timeout=0.05)
    with pytest.raises(TimeoutError):
        job.exception(timeout=0.05)
    assert not job.done()
    assert not job.ready()
    assert job.wait(timeout=0.05) is False
    with pytest.raises(ValueError):
        job.successful()
    # still completes normally afterwards
    assert job.wait(timeout=30) is True
    assert job.result(timeout=30) == "late"
    assert job.get(timeout=30) == "late"
    assert job.successful()


def test_exception_method(server):
    job = server.submit(raise_value_error, ("bad thing",))
    exc = job.exception(timeout=30)
    assert isinstance(exc, ValueError)
    assert "bad thing" in str(exc)
    assert job.done()
    assert job.successful() is False
    with pytest.raises(ValueError, match="bad thing"):
        job.result(timeout=30)
    with pytest.raises(ValueError, match="bad thing"):
        job.get(timeout=30)
    with pytest.raises(ValueError, match="bad thing"):
        job()


def test_wait_and_get(server):
    job = server.submit(sleep_return, (7, 0.1))
    assert job.wait() is True
    assert job.get() == 7
    assert job.wait(timeout=0) is True


# ---------------------------------------------------------------------------
# add_done_callback

def test_add_done_callback_before_completion(server):
    called = []
    ev = threading.Event()

    def fn(j):
        called.append(j)
        ev.set()

    job = server.submit(sleep_return, ("x", 0.3))
    job.add_done_callback(fn)
    assert job.result(timeout=30) == "x"
    assert ev.wait(30)
    assert called == [job]


def test_add_done_callback_after_completion_runs_at_once(server):
    job = server.submit(square, (3,))
    assert job.result(timeout=30) == 9
    server.wait()
    called = []
    job.add_done_callback(called.append)
    assert called == [job]


def test_add_done_callback_on_failed_job(server):
    ev = threading.Event()
    called = []

    def fn(j):
        called.append(j)
        ev.set()

    job = server.submit(raise_value_error, ("nope",))
    job.add_done_callback(fn)
    assert ev.wait(30)
    assert called == [job]
    assert isinstance(job.exception(timeout=30), ValueError)


def test_add_done_callback_raising_does_not_break_others(server):
    ev = threading.Event()

    def bad(j):
        raise RuntimeError("done-callback failure")

    job = server.submit(sleep_return, (1, 0.2))
    job.add_done_callback(bad)
    job.add_done_callback(lambda j: ev.set())
    assert job.result(timeout=30) == 1
    assert ev.wait(30)
    assert server.submit(square, (4,)).result(timeout=30) == 16


# ---------------------------------------------------------------------------
# cancel

def test_cancel_queued_job(server1, tmp_path):
    marker = tmp_path / "cancelled-job-ran"
    started = tmp_path / "busy-started"
    busy = server1.submit(touch_then_sleep, (str(started), "busy", 1.5))
    wait_for(started.exists, 30, what="busy job never started")
    # the only worker is now running `busy`
    queued = server1.submit(touch, (str(marker),))
    ev = threading.Event()
    queued.add_done_callback(lambda j: ev.set())
    assert queued.cancel() is True
    assert queued.cancelled()
    assert queued.done()
    assert ev.wait(30)
    with pytest.raises(pp.CancelledError):
        queued.result(timeout=30)
    with pytest.raises(concurrent.futures.CancelledError):
        queued()
    # a running job cannot be cancelled
    assert busy.cancel() is False
    assert busy.result(timeout=30) == "busy"
    assert not busy.cancelled()
    server1.wait()
    assert not marker.exists(), "a cancelled job must not run"
    # cancel of a finished job returns False
    assert busy.cancel() is False
    assert not busy.cancelled()
    # the server still works
    assert server1.submit(square, (5,)).result(timeout=30) == 25


def test_cancelled_is_concurrent_futures_cancelled():
    assert pp.CancelledError is concurrent.futures.CancelledError


# ---------------------------------------------------------------------------
# as_completed

def test_as_completed_order(server):
    slow = server.submit(sleep_return, ("slow", 1.5))
    fast = [server.submit(sleep_return, (i, 0.01)) for i in range(4)]
    order = list(pp.as_completed([slow] + fast, timeout=60))
    assert len(order) == 5
    assert set(map(id, order)) == set(map(id, [slow] + fast))
    assert order[-1] is slow
    assert all(j.done() for j in order)


def test_as_completed_timeout(server):
    job = server.submit(sleep_return, ("x", 3.0))
    it = pp.as_completed([job], timeout=0.2)
    with pytest.raises(TimeoutError):
        next(it)


def test_as_completed_already_done(server):
    jobs = [server.submit(square, (i,)) for i in range(5)]
    server.wait()
    got = list(pp.as_completed(jobs, timeout=10))
    assert sorted(j.result() for j in got) == [0, 1, 4, 9, 16]


# ---------------------------------------------------------------------------
# map / imap / imap_unordered

def test_map_ordered(server):
    assert server.map(square, range(30)) == list(map(square, range(30)))


def test_map_returns_list(server):
    out = server.map(square, [1, 2, 3])
    assert isinstance(out, list)
    assert out == [1, 4, 9]


def test_map_empty(server):
    assert server.map(square, []) == []


@pytest.mark.parametrize("chunksize", [1, 3, 7, 100])
def test_map_chunksize(server, chunksize):
    assert server.map(square, range(50), chunksize=chunksize) == [i * i for i in range(50)]


def test_map_multiple_iterables(server):
    a, b = [2, 3, 4, 5], [5, 6, 7, 8]
    assert server.map(pow, a, b) == list(map(pow, a, b))
    # like the builtin map: stops at the shortest iterable
    assert server.map(pow, [1, 2, 3], [4, 5]) == list(map(pow, [1, 2, 3], [4, 5]))


def test_map_order_independent_of_completion(server):
    assert server.map(reversed_delay, range(6)) == list(range(6))


def test_map_generator_input(server):
    assert server.map(square, (i for i in range(10))) == [i * i for i in range(10)]


def test_map_propagates_exception(server):
    with pytest.raises(ZeroDivisionError):
        server.map(inv, [1, 2, 0, 4])
    # still usable afterwards
    assert server.map(inv, [1, 2, 4]) == [1.0, 0.5, 0.25]


def test_imap_ordered(server):
    it = server.imap(reversed_delay, range(6))
    assert iter(it) is it or hasattr(it, "__next__")
    assert list(it) == list(range(6))


def test_imap_chunksize_and_multiple_iterables(server):
    assert list(server.imap(pow, range(20), [2] * 20, chunksize=4)) == [i ** 2 for i in range(20)]


def test_imap_propagates_exception(server):
    it = server.imap(inv, [1, 2, 0, 4])
    assert next(it) == 1.0
    assert next(it) == 0.5
    with pytest.raises(ZeroDivisionError):
        next(it)


def test_imap_unordered_same_multiset(server):
    out = list(server.imap_unordered(square, range(40)))
    assert sorted(out) == sorted(map(square, range(40)))


def test_imap_unordered_completion_order(server):
    out = list(server.imap_unordered(slow_first, range(6)))
    assert sorted(out) == [0, 10, 20, 30, 40, 50]
    assert out[-1] == 0      # the slow item comes last


def test_imap_unordered_propagates_exception(server):
    with pytest.raises(ZeroDivisionError):
        list(server.imap_unordered(inv, [1, 0, 2]))
