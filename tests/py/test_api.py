"""pp.Server API: construction, submit, wait, groups, stats, set_ncpus, callbacks, logging."""
import concurrent.futures
import io
import logging
import math
import os
import pickle
import re
import threading
import time

import pytest

import pp
from conftest import bounded
from helpers import wait_for, wait_pids_gone


# ---------------------------------------------------------------------------
# job functions (module level: shipped to the workers)

def square(x):
    return x * x


def add(a, b):
    return a + b


def dep_add1(x):
    return x + 1


def uses_dep(x):
    return dep_add1(x) * 2


def sleep_return(x, secs):
    time.sleep(secs)
    return x


def mark_sleep_return(d, x, secs):
    """Marks that it started (a file named x in directory d), then sleeps."""
    import os
    import time
    open(os.path.join(d, str(x)), "w").close()
    time.sleep(secs)
    return x


def sleep_pid(secs):
    time.sleep(secs)
    return os.getpid()


def sleep_log(x, secs, logpath):
    import os
    import time
    time.sleep(secs)
    fd = os.open(logpath, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"%d\n" % x)
    finally:
        os.close(fd)
    return x


def raise_boom():
    raise ValueError("boom")


def uses_math_sqrt(x):
    return math.sqrt(x)


# ---------------------------------------------------------------------------
# construction, ncpus

def test_default_server_uses_all_cores():
    with pp.Server() as s:
        assert s.get_ncpus() == os.cpu_count()
        assert s.submit(square, (7,)).result(timeout=30) == 49


def test_autodetect_equals_cpu_count():
    with pp.Server("autodetect") as s:
        assert s.get_ncpus() == os.cpu_count()
        assert s.get_active_nodes() == {"local": os.cpu_count()}


def test_explicit_ncpus():
    with pp.Server(4) as s:
        assert s.get_ncpus() == 4
        assert s.get_active_nodes() == {"local": 4}
        jobs = [s.submit(square, (i,)) for i in range(8)]
        assert [j.result(timeout=30) for j in jobs] == [i * i for i in range(8)]


def test_constructor_keyword_arguments():
    buf = io.StringIO()
    with pp.Server(ncpus=1, ppservers=(), secret=None, loglevel=logging.WARNING,
                   logstream=buf, restart=False, proto=pickle.HIGHEST_PROTOCOL,
                   socket_timeout=3600, max_retries=2) as s:
        assert s.get_ncpus() == 1
        assert s.submit(add, (2, 3)).result(timeout=30) == 5


@pytest.mark.parametrize("proto", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_proto(proto):
    with pp.Server(1, proto=proto) as s:
        value = {"a": [1, 2.5, "x"], "b": (None, True), "c": b"\x00\xff"}
        assert s.submit(sleep_return, (value, 0)).result(timeout=30) == value


def test_zero_ncpus_then_grow_runs_pending_job():
    with pp.Server(0) as s:
        assert s.get_ncpus() == 0
        assert s.get_active_nodes() == {"local": 0}
        job = s.submit(square, (9,))
        assert not job.wait(0.3)       # nobody to run it
        s.set_ncpus(1)
        assert s.get_ncpus() == 1
        assert job.result(timeout=30) == 81


# ---------------------------------------------------------------------------
# submit basics (the ppft README calls)

def test_submit_readme_calls(server):
    assert server.submit(math.sin, (math.pi / 2,), (), ("math",))() == 1.0
    assert server.submit(min, (3.2, 10.0, 7.5))() == 3.2
    assert server.submit(sum, ([1, 2, 3],))() == 6


def test_submit_returns_job(server):
    job = server.submit(square, (5,))
    assert isinstance(job, pp.Job)
    assert isinstance(job.tid, int)
    assert job() == 25
    assert job() == 25              # calling again returns the same result
    job2 = server.submit(square, (6,))
    assert job2.tid != job.tid
    assert job2.result(timeout=30) == 36


def test_submit_no_args(server):
    assert server.submit(os.getpid).result(timeout=30) != os.getpid()


def test_many_jobs_in_order(server):
    jobs = [server.submit(add, (i, 1000)) for i in range(100)]
    assert [j.result(timeout=60) for j in jobs] == [i + 1000 for i in range(100)]


def test_jobs_run_in_other_processes(server):
    pid = server.submit(sleep_pid, (0,)).result(timeout=30)
    assert pid != os.getpid()


def test_depfuncs(server):
    assert server.submit(uses_dep, (3,), (dep_add1,)).result(timeout=30) == 8
    assert server.submit(uses_dep, (4,), depfuncs=(dep_add1,)).result(timeout=30) == 10


def test_modules_plain_name(server):
    job = server.submit(uses_math_sqrt, (16.0,), modules=("math",))
    assert job.result(timeout=30) == 4.0


def test_modules_import_statements(server):
    # statements are executed as written; builtins still work
    job = server.submit(math.floor, (2.5,), modules=("from os import path", "import math"))
    assert job.result(timeout=30) == 2


def test_globals_argument(server):
    job = server.submit(uses_dep, (5,), globals={"dep_add1": dep_add1, "math": math})
    assert job.result(timeout=30) == 12


def test_template(server):
    t = pp.Template(server, pow)
    jobs = [t.submit(2, n) for n in range(10)]
    assert [j.result(timeout=30) for j in jobs] == [2 ** n for n in range(10)]

    results = []
    t2 = pp.Template(server, uses_dep, depfuncs=(dep_add1,), callback=results.append)
    j = t2.submit(1)
    assert j.result(timeout=30) == 4
    server.wait()
    assert results == [4]


# ---------------------------------------------------------------------------
# wait and groups

def test_wait_all(server):
    jobs = [server.submit(sleep_return, (i, 0.05)) for i in range(6)]
    server.wait()
    assert all(j.done() for j in jobs)
    assert [j() for j in jobs] == list(range(6))


def test_wait_group_only_waits_for_that_group(server):
    slow = server.submit(sleep_return, ("slow", 3.0), group="slow")
    fast = [server.submit(sleep_return, (i, 0.01), group="fast") for i in range(4)]
    bounded(server.wait, "fast", timeout=30)
    assert all(j.done() for j in fast)
    assert not slow.done()
    server.wait("slow")
    assert slow.done()
    assert slow() == "slow"
    assert [j() for j in fast] == list(range(4))


def test_wait_group_keyword_and_unknown_group(server):
    j = server.submit(square, (3,), group="g1")
    server.wait(group="g1")
    assert j.done()
    bounded(server.wait, "no-such-group", timeout=10)   # nothing to wait for


# ---------------------------------------------------------------------------
# nodes and stats

def test_get_active_nodes(server):
    assert server.get_active_nodes() == {"local": 2}


def test_get_stats(server):
    jobs = [server.submit(sleep_return, (i, 0.05)) for i in range(5)]
    server.wait()
    assert [j() for j in jobs] == list(range(5))
    stats = server.get_stats()
    assert set(stats) == {"local"}
    st = stats["local"]
    assert st.ncpus == 2
    assert st.njobs == 5
    assert isinstance(st.time, float)
    assert st.time >= 0.2           # five jobs that each slept 0.05 s
    assert hasattr(st, "rworker")


def test_print_stats(server, capfd):
    for j in [server.submit(square, (i,)) for i in range(3)]:
        j.result(timeout=30)
    server.wait()
    capfd.readouterr()
    server.print_stats()
    out = capfd.readouterr().out
    lines = out.splitlines()
    assert "Job execution statistics:" in lines
    assert " job count | % of all jobs | job time sum | time per job | job server" in lines
    row = [l for l in lines if l.rstrip().endswith("| local")]
    assert len(row) == 1, out
    assert re.match(r"^\s+3 \|\s+100\.00 \|\s+\d+\.\d{4} \|\s+\d+\.\d{6} \| local$", row[0]), row[0]
    elapsed = [l for l in lines if l.startswith("Time elapsed since server creation ")]
    assert len(elapsed) == 1, out
    float(elapsed[0].split()[-1])
    assert "0 active tasks, 2 cores" in lines, out
    # order of the lines
    idx = [lines.index("Job execution statistics:"),
           lines.index(" job count | % of all jobs | job time sum | time per job | job server"),
           lines.index(row[0]), lines.index(elapsed[0]), lines.index("0 active tasks, 2 cores")]
    assert idx == sorted(idx)


def test_print_stats_counts_active_tasks(server, capfd):
    jobs = [server.submit(sleep_return, (i, 1.5)) for i in range(2)]
    capfd.readouterr()                 # queued or running: both are active
    server.print_stats()
    out = capfd.readouterr().out
    assert re.search(r"^2 active tasks, 2 cores$", out, re.M), out
    server.wait()
    assert [j() for j in jobs] == [0, 1]


# ---------------------------------------------------------------------------
# set_ncpus

def test_set_ncpus_while_jobs_queued(server, tmp_path):
    logpath = str(tmp_path / "runs.log")
    n = 200
    jobs = [server.submit(sleep_log, (i, 0.005, logpath)) for i in range(n)]
    server.set_ncpus(1)
    assert server.get_ncpus() == 1
    server.set_ncpus(3)
    assert server.get_ncpus() == 3
    assert server.get_active_nodes() == {"local": 3}
    results = [j.result(timeout=60) for j in jobs]
    assert results == list(range(n))
    server.wait()
    with open(logpath) as f:
        runs = sorted(int(l) for l in f.read().split())
    assert runs == list(range(n)), "every job must run exactly once"
    assert server.get_stats()["local"].njobs == n


def _pids_until(server, want, secs, batch, tries=10):
    """Submit batches of sleeping pid-returning jobs until `want` distinct pids were
    seen (bounded); returns the set of pids seen."""
    seen = set()
    for _ in range(tries):
        jobs = [server.submit(sleep_pid, (secs,)) for _ in range(batch)]
        seen |= {j.result(timeout=60) for j in jobs}
        if len(seen) >= want:
            break
    return seen


def test_set_ncpus_changes_worker_processes(server):
    # both workers up and serving
    assert len(_pids_until(server, 2, 0.1, 4)) == 2
    # shrink to 1: a batch submitted after the shrink runs on a single process
    server.set_ncpus(1)
    assert server.get_ncpus() == 1
    server.wait()
    pids = {j.result(timeout=30) for j in [server.submit(sleep_pid, (0.03,)) for _ in range(10)]}
    assert len(pids) == 1
    # grow to 3: sleeping jobs spread over three processes (and never more)
    server.set_ncpus(3)
    assert server.get_ncpus() == 3
    assert len(_pids_until(server, 4, 0.1, 9, tries=3)) == 3
    # back to 2
    server.set_ncpus(2)
    assert server.get_ncpus() == 2
    assert server.get_active_nodes() == {"local": 2}
    server.wait()
    assert len(_pids_until(server, 3, 0.1, 6, tries=3)) == 2


def test_shrink_right_after_creation():
    # set_ncpus(1) before the workers finished starting: afterwards only one process
    # may run jobs (checked a few times, the window is small)
    for _ in range(10):
        with pp.Server(2) as s:
            s.set_ncpus(1)
            assert s.get_ncpus() == 1
            pids = {j.result(timeout=30) for j in [s.submit(sleep_pid, (0.03,)) for _ in range(10)]}
            assert len(pids) == 1, "jobs ran on %d processes after set_ncpus(1)" % len(pids)


def test_set_ncpus_autodetect(server):
    server.set_ncpus()
    assert server.get_ncpus() == os.cpu_count()
    server.set_ncpus(1)
    assert server.get_ncpus() == 1
    assert server.submit(square, (4,)).result(timeout=30) == 16


def test_shrink_while_all_workers_busy(server, tmp_path):
    jobs = [server.submit(mark_sleep_return, (str(tmp_path), i, 0.3)) for i in range(2)]
    wait_for(lambda: len(os.listdir(tmp_path)) == 2, 30, what="the jobs never started")
    server.set_ncpus(1)
    more = [server.submit(sleep_return, (i, 0.01)) for i in range(2, 10)]
    assert [j.result(timeout=60) for j in jobs + more] == list(range(10))


# ---------------------------------------------------------------------------
# destroy, context manager, restart

def test_destroy_idempotent():
    s = pp.Server(2)
    assert s.submit(square, (3,)).result(timeout=30) == 9
    s.destroy()
    s.destroy()


def test_context_manager_destroys_workers():
    with pp.Server(2) as s:
        assert isinstance(s, pp.Server)
        pids = {j.result(timeout=30) for j in [s.submit(sleep_pid, (0.2,)) for _ in range(2)]}
    assert pids
    assert wait_pids_gone(pids, timeout=10) == []


def test_destroy_terminates_workers():
    s = pp.Server(2)
    try:
        pids = {j.result(timeout=30) for j in [s.submit(sleep_pid, (0.2,)) for _ in range(2)]}
    finally:
        s.destroy()
    assert wait_pids_gone(pids, timeout=10) == []


def test_restart_gives_fresh_worker_per_job():
    with pp.Server(2, restart=True) as s:
        pids = [s.submit(sleep_pid, (0,)).result(timeout=30) for _ in range(4)]
        pids += [j.result(timeout=30) for j in [s.submit(sleep_pid, (0.05,)) for _ in range(4)]]
        assert len(set(pids)) == len(pids) == 8
        assert s.get_ncpus() == 2


def test_no_restart_reuses_workers(server):
    pids = [server.submit(sleep_pid, (0,)).result(timeout=30) for _ in range(6)]
    assert len(set(pids)) <= 2


# ---------------------------------------------------------------------------
# callbacks

def test_callback_gets_callbackargs_and_result(server):
    got = []

    def cb(tag, i, result):
        got.append((tag, i, result))

    jobs = [server.submit(square, (i,), callback=cb, callbackargs=("sq", i)) for i in range(10)]
    server.wait()
    assert sorted(got) == [("sq", i, i * i) for i in range(10)]
    assert [j() for j in jobs] == [i * i for i in range(10)]


def test_callback_without_callbackargs(server):
    got = []
    server.submit(add, (1, 2), callback=got.append)
    server.wait()
    assert got == [3]


def test_callbacks_run_on_one_non_main_thread(server):
    threads = []
    lock = threading.Lock()

    def cb(result):
        with lock:
            threads.append(threading.get_ident())

    for i in range(12):
        server.submit(sleep_return, (i, 0.01), callback=cb)
    server.wait()
    assert len(threads) == 12
    assert len(set(threads)) == 1
    assert threads[0] != threading.main_thread().ident


def test_wait_returns_after_callbacks_ran(server):
    done = []

    def slow_cb(result):
        time.sleep(0.2)
        done.append(result)

    for i in range(4):
        server.submit(square, (i,), callback=slow_cb)
    server.wait()
    assert sorted(done) == [0, 1, 4, 9]


def test_raising_callback_is_logged_and_stops_nothing(server, logbuf):
    got = []

    def bad_cb(result):
        raise RuntimeError("callback exploded %d" % result)

    server.submit(square, (5,), callback=bad_cb)
    server.wait()
    later = [server.submit(square, (i,), callback=got.append) for i in range(5)]
    server.wait()
    assert sorted(got) == [0, 1, 4, 9, 16]
    assert [j.result(timeout=30) for j in later] == [0, 1, 4, 9, 16]
    assert "callback exploded 25" in logbuf.getvalue()


def test_failed_job_does_not_call_callback_and_is_logged(server, logbuf):
    got = []
    job = server.submit(raise_boom, callback=got.append)
    server.wait()
    with pytest.raises(ValueError):
        job.result(timeout=30)
    assert got == []
    log = logbuf.getvalue()
    assert "boom" in log or "ValueError" in log


def test_wait_inside_callback_raises_runtimeerror(server):
    seen = []

    def cb(result):
        try:
            server.wait()
        except RuntimeError as e:
            seen.append(e)
        else:
            seen.append(None)

    server.submit(square, (2,), callback=cb)
    bounded(server.wait, timeout=30)
    assert len(seen) == 1 and isinstance(seen[0], RuntimeError)


# ---------------------------------------------------------------------------
# logging

def _log_probe(level, msg):
    logging.getLogger("pp").log(level, msg)


def test_logging_goes_to_logstream_at_loglevel():
    buf = io.StringIO()
    with pp.Server(1, loglevel=logging.DEBUG, logstream=buf) as s:
        assert s.submit(square, (2,)).result(timeout=30) == 4
        _log_probe(logging.DEBUG, "probe-debug-1")
        assert "probe-debug-1" in buf.getvalue()

    buf2 = io.StringIO()
    with pp.Server(1, loglevel=logging.WARNING, logstream=buf2) as s:
        _log_probe(logging.INFO, "probe-info-2")
        _log_probe(logging.WARNING, "probe-warning-2")
        assert "probe-info-2" not in buf2.getvalue()
        assert "probe-warning-2" in buf2.getvalue()


def test_failure_logged_at_error_level():
    records = []

    class H(logging.Handler):
        def emit(self, record):
            records.append(record)

    h = H(level=logging.DEBUG)
    logger = logging.getLogger("pp")
    logger.addHandler(h)
    try:
        with pp.Server(1, logstream=io.StringIO()) as s:
            # a failing job whose callback cannot be called is logged
            job = s.submit(raise_boom, callback=lambda r: None)
            with pytest.raises(ValueError):
                job.result(timeout=30)
            s.wait()
    finally:
        logger.removeHandler(h)
    assert any(r.levelno == logging.ERROR for r in records), [(r.levelname, r.getMessage()) for r in records]


def test_loglevel_filters_job_failure():
    buf = io.StringIO()
    with pp.Server(1, loglevel=logging.CRITICAL, logstream=buf) as s:
        job = s.submit(raise_boom, callback=lambda r: None)
        with pytest.raises(ValueError):
            job.result(timeout=30)
        s.wait()
    assert "boom" not in buf.getvalue()
    buf2 = io.StringIO()
    with pp.Server(1, loglevel=logging.ERROR, logstream=buf2) as s:
        job = s.submit(raise_boom, callback=lambda r: None)
        with pytest.raises(ValueError):
            job.result(timeout=30)
        s.wait()
    assert "boom" in buf2.getvalue() or "ValueError" in buf2.getvalue()


# ---------------------------------------------------------------------------
# exception classes

def test_exception_hierarchy():
    for name in ("WorkerLostError", "DestroyedError", "SerializationError", "RemoteError"):
        cls = getattr(pp, name)
        assert issubclass(cls, pp.PPError), name
    assert issubclass(pp.PPError, Exception)
    assert pp.CancelledError is concurrent.futures.CancelledError
    assert issubclass(pp.RemoteTraceback, BaseException)
