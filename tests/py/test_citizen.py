"""pp as a Python citizen (issue 10): jobs as standard futures with
concurrent.futures and asyncio, pp.Executor against ProcessPoolExecutor,
progress bars and lazy imap, the pp logger's handlers, and pp 1.x's
submit conventions."""
import asyncio
import concurrent.futures as cf
import io
import itertools
import logging
import math
import sys
import time

import pytest

import pp
from helpers import wait_for
from pp import _progress


# ---------------------------------------------------------------------------
# job functions (module level: pp ships them by reference, PPE pickles them)

def square(x):
    return x * x


def sleep_return(x, secs):
    time.sleep(secs)
    return x


def boom(msg):
    raise ValueError(msg)


def with_kwargs(a, b=1, *, c=0):
    return a * b + c


class Shape:
    sides = 4

    @classmethod
    def make(cls, n):
        return "%s:%d:%d" % (cls.__name__, cls.sides, n)


class Triangle(Shape):
    sides = 3


# ---------------------------------------------------------------------------
# futures with concurrent.futures

def test_job_is_a_future_and_concurrent_futures_wait(server):
    jobs = [server.submit(square, (i,)) for i in range(20)]
    assert all(isinstance(j, cf.Future) for j in jobs)
    done, not_done = cf.wait(jobs, timeout=60)
    assert not not_done and len(done) == 20
    assert sorted(j.result() for j in done) == [i * i for i in range(20)]


def test_wait_first_completed_and_timeout(server):
    slow = server.submit(sleep_return, (1, 3.0))
    fast = server.submit(sleep_return, (2, 0.05))
    done, not_done = cf.wait([slow, fast], timeout=30, return_when=cf.FIRST_COMPLETED)
    assert fast in done and slow in not_done
    done, not_done = cf.wait([slow], timeout=0.05)
    assert not done and not_done == {slow}
    with pytest.raises(cf.TimeoutError):
        slow.result(timeout=0.05)
    assert slow.running()
    assert slow.result(timeout=30) == 1


def test_wait_first_exception(server):
    bad = server.submit(boom, ("first",))
    slow = server.submit(sleep_return, (1, 2.0))
    done, not_done = cf.wait([bad, slow], timeout=30, return_when=cf.FIRST_EXCEPTION)
    assert bad in done and slow in not_done
    assert isinstance(bad.exception(), ValueError)


def test_as_completed_yields_each_job_once_in_completion_order(server):
    # two workers: the quick job ends while the slow one still runs
    jobs = [server.submit(sleep_return, (0, 1.5)), server.submit(sleep_return, (1, 0.05))]
    got = [j.result() for j in cf.as_completed(jobs, timeout=60)]
    assert got == [1, 0]
    # already finished jobs are yielded too, once
    assert sorted(j.result() for j in cf.as_completed(jobs + jobs, timeout=5)) == [0, 1]


def test_as_completed_timeout(server):
    slow = server.submit(sleep_return, (1, 3.0))
    with pytest.raises(cf.TimeoutError):
        list(cf.as_completed([slow], timeout=0.1))
    slow.cancel()  # running: not cancelled
    assert slow.result(timeout=30) == 1


def test_many_waiters_on_racing_jobs_are_each_told(server):
    # jobs finish while waits are being installed: every wait must return
    for _ in range(5):
        jobs = [server.submit(square, (i,)) for i in range(200)]
        done, not_done = cf.wait(jobs, timeout=60)
        assert not not_done
        assert len(list(cf.as_completed(jobs, timeout=60))) == 200


def test_cancel_semantics(server1):
    blocker = server1.submit(sleep_return, (0, 1.0))
    queued = server1.submit(square, (3,))
    wait_for(blocker.running, 30, what="the blocker to start")
    assert queued.cancel() is True
    assert queued.cancel() is True  # already cancelled: still True
    assert queued.cancelled() and queued.done()
    with pytest.raises(cf.CancelledError):
        queued.result()
    with pytest.raises(cf.CancelledError):
        queued.exception()
    done, _ = cf.wait([queued], timeout=5)
    assert queued in done
    assert blocker.result(timeout=30) == 0
    assert blocker.cancel() is False  # finished
    with pytest.raises(RuntimeError):
        blocker.set_result(1)


# ---------------------------------------------------------------------------
# futures with asyncio (a real event loop)

def test_await_gather_wait_for_and_wrap_future(server):
    async def main():
        a = await server.submit(square, (7,))
        many = await asyncio.gather(*[server.submit(square, (i,)) for i in range(6)])
        wrapped = await asyncio.wrap_future(server.submit(square, (5,)))
        quick = await asyncio.wait_for(server.submit(square, (4,)), timeout=30)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(server.submit(sleep_return, (0, 2.0)), timeout=0.1)
        with pytest.raises(ValueError, match="async boom"):
            await server.submit(boom, ("async boom",))
        return a, many, wrapped, quick

    a, many, wrapped, quick = asyncio.run(asyncio.wait_for(main(), 60))
    assert (a, many, wrapped, quick) == (49, [i * i for i in range(6)], 25, 16)


def test_await_cancelled_job_raises_cancelled_error(server1):
    async def main():
        blocker = server1.submit(sleep_return, (0, 1.0))
        queued = server1.submit(square, (2,))
        wait_for(blocker.running, 30, what="the blocker to start")
        assert queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        return await blocker

    assert asyncio.run(asyncio.wait_for(main(), 60)) == 0


# ---------------------------------------------------------------------------
# Executor, against ProcessPoolExecutor on the same workloads

WORKLOAD = list(range(30))


def _run_workload(ex):
    out = {}
    out["submit"] = [f.result(timeout=60) for f in [ex.submit(square, x) for x in WORKLOAD]]
    out["kwargs"] = ex.submit(with_kwargs, 2, b=3, c=4).result(timeout=60)
    out["map"] = list(ex.map(square, WORKLOAD, timeout=60))
    out["map2"] = list(ex.map(pow, WORKLOAD, itertools.repeat(3), timeout=60))
    out["chunked"] = list(ex.map(square, WORKLOAD, chunksize=7, timeout=60))
    out["math"] = ex.submit(math.factorial, 20).result(timeout=60)
    try:
        ex.submit(boom, "exec boom").result(timeout=60)
    except ValueError as e:
        out["error"] = str(e)
    return out


def test_executor_matches_process_pool_executor():
    with cf.ProcessPoolExecutor(max_workers=2) as ref_ex:
        ref = _run_workload(ref_ex)
    with pp.Executor(2) as ex:
        assert isinstance(ex, cf.Executor)
        got = _run_workload(ex)
    assert got == ref
    with pytest.raises(RuntimeError):
        ex.submit(square, 1)


def test_executor_with_run_in_executor():
    def ref_run(executor):
        async def main():
            loop = asyncio.get_running_loop()
            return await asyncio.gather(*[loop.run_in_executor(executor, square, i)
                                          for i in range(8)])
        return asyncio.run(asyncio.wait_for(main(), 60))

    with pp.Executor(2) as ex:
        got = ref_run(ex)
    with cf.ProcessPoolExecutor(2) as ref_ex:
        assert got == ref_run(ref_ex) == [i * i for i in range(8)]


def test_executor_shutdown_cancel_futures_and_server_executor(server1):
    ex = server1.executor()
    running = ex.submit(sleep_return, 1, 1.0)
    wait_for(running.running, 30, what="the first job to start")
    queued = [ex.submit(square, i) for i in range(5)]
    ex.shutdown(wait=True, cancel_futures=True)
    assert running.result(timeout=1) == 1
    assert all(q.cancelled() for q in queued)
    # the Server outlives its executor
    assert server1.submit(square, (6,)).result(timeout=30) == 36
    with pytest.raises(ValueError):
        pp.Executor(0)


def test_executor_map_timeout():
    with pp.Executor(1) as ex:
        it = ex.map(sleep_return, [1, 2], [2.0, 2.0], timeout=0.2)
        with pytest.raises(cf.TimeoutError):
            list(it)


# ---------------------------------------------------------------------------
# progress and lazy imap

def test_imap_reads_an_endless_generator_lazily(server):
    got = list(itertools.islice(server.imap(square, itertools.count()), 50))
    assert got == [i * i for i in range(50)]
    got = sorted(itertools.islice(server.imap_unordered(square, itertools.count(),
                                                        chunksize=4), 40))
    assert len(got) == 40 and all(math.isqrt(v) ** 2 == v for v in got)


def test_imap_read_ahead_is_bounded(server):
    pulled = []

    def source():
        for i in itertools.count():
            pulled.append(i)
            yield i

    it = server.imap(square, source(), chunksize=2)
    assert next(it) == 0
    # a few chunks per worker, never the whole (endless) input
    assert len(pulled) <= 2 * 3 * 2 + 2 * 2, len(pulled)
    it.close()


def test_plain_progress_bar_redraws_at_most_ten_times_a_second():
    buf = io.StringIO()
    bar = _progress.TextBar(1000, stream=buf)
    t0 = time.monotonic()
    for _ in range(1000):
        bar.update(1)
    bar.close()
    elapsed = time.monotonic() - t0
    assert bar.draws <= 2 + int(elapsed * 10)
    text = buf.getvalue()
    assert text.endswith("\n") and "1000/1000 100%" in text.splitlines()[-1].split("\r")[-1]


def test_progress_wraps_jobs_and_map_progress(server, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # the plain bar, even if tqdm exists
    jobs = [server.submit(square, (i,)) for i in range(10)]
    seen = [j.result(timeout=0) for j in pp.progress(jobs)]  # each finished when yielded
    assert seen == [i * i for i in range(10)]
    assert server.map(square, range(12), progress=True) == [i * i for i in range(12)]
    assert list(server.imap(square, range(5), progress=True)) == [0, 1, 4, 9, 16]
    err = capsys.readouterr().err
    assert "10/10 100%" in err and "12/12 100%" in err and "5/5 100%" in err


# ---------------------------------------------------------------------------
# logging

def _pp_handlers():
    return [h for h in logging.getLogger("pp").handlers]


def test_one_handler_and_no_duplicates_with_several_servers(monkeypatch):
    monkeypatch.setattr(logging.root, "handlers", [])  # no application config
    logger = logging.getLogger("pp")
    level0 = logger.level
    buf = io.StringIO()
    servers = [pp.Server(1, logstream=buf, loglevel=logging.INFO) for _ in range(3)]
    try:
        assert len(_pp_handlers()) == 1
        logger.warning("probe-once")
        assert buf.getvalue().count("probe-once") == 1
    finally:
        for s in servers:
            s.destroy()
    assert _pp_handlers() == [] and logger.level == level0


def test_no_handler_when_the_application_configured_logging(monkeypatch):
    app = io.StringIO()
    handler = logging.StreamHandler(app)
    monkeypatch.setattr(logging.root, "handlers", [handler])
    with pp.Server(1) as s, pp.Server(1) as s2:
        assert _pp_handlers() == []
        logging.getLogger("pp").error("probe-app")
        assert s.submit(square, (3,)).result(timeout=30) == 9
        assert s2.submit(square, (3,)).result(timeout=30) == 9
    assert app.getvalue().count("probe-app") == 1


def test_destroy_restores_the_level_it_changed(monkeypatch):
    monkeypatch.setattr(logging.root, "handlers", [])
    logger = logging.getLogger("pp")
    monkeypatch.setattr(logger, "level", logging.ERROR)
    with pp.Server(1, loglevel=logging.DEBUG, logstream=io.StringIO()):
        assert logger.level == logging.DEBUG
    assert logger.level == logging.ERROR


def test_each_server_logs_to_its_own_stream(monkeypatch):
    monkeypatch.setattr(logging.root, "handlers", [])
    a, b = io.StringIO(), io.StringIO()
    with pp.Server(1, logstream=a) as sa, pp.Server(1, logstream=b) as sb:
        sa.submit(boom, ("from-a",), callback=lambda r: None)
        sa.wait()
        sb.submit(boom, ("from-b",), callback=lambda r: None)
        sb.wait()
    assert "from-a" in a.getvalue() and "from-a" not in b.getvalue()
    assert "from-b" in b.getvalue() and "from-b" not in a.getvalue()


# ---------------------------------------------------------------------------
# pp 1.x conventions

def test_submit_type_errors_as_pp_1x(server):
    with pytest.raises(TypeError, match="args argument must be a tuple"):
        server.submit(square, "abc")
    with pytest.raises(TypeError, match="args argument must be a tuple"):
        server.submit(square, [3])
    with pytest.raises(TypeError, match="depfuncs argument must be a tuple"):
        server.submit(square, (1,), depfuncs=square)
    with pytest.raises(TypeError, match="depfuncs"):
        server.submit(square, (1,), depfuncs=("notafunction",))
    with pytest.raises(TypeError, match="modules argument must be a tuple"):
        server.submit(square, (1,), modules="math")
    with pytest.raises(TypeError, match="list of strings"):
        server.submit(square, (1,), modules=(math,))
    with pytest.raises(TypeError, match="globals"):
        server.submit(square, (1,), globals=[1])
    # lists of the right kind are fine
    assert server.submit(square, (4,), depfuncs=[sleep_return],
                         modules=["math"]).result(timeout=30) == 16


def test_classmethods_run_as_jobs(server):
    assert server.submit(Shape.make, (1,)).result(timeout=30) == "Shape:4:1"
    assert server.submit(Triangle.make, (2,)).result(timeout=30) == "Triangle:3:2"


def test_server_docstring_documents_every_argument():
    import inspect
    doc = pp.Server.__init__.__doc__
    for name in inspect.signature(pp.Server.__init__).parameters:
        if name != "self":
            assert name + ":" in doc or name + "," in doc, name
    assert "socket_timeout" in doc and "ignored" in doc
