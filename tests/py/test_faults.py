"""Failures: job exceptions, dying workers, destroy, Ctrl-C, client death."""
import ast
import io
import operator
import os
import signal
import threading
import time

import pytest

import pp
from conftest import Script, bounded, run_script
from helpers import (descendants, in_futex_wait, holds, kill_pids, pid_alive, pid_state,
                     wait_for, wait_pids_gone)


# ---------------------------------------------------------------------------
# job functions

def raise_boom():
    raise ValueError("boom")


def square(x):
    return x * x


def worker_pid():
    import os
    return os.getpid()


def sleep_pid(secs):
    import os
    import time
    time.sleep(secs)
    return os.getpid()


def record_run(path):
    import os
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"%d\n" % os.getpid())
    finally:
        os.close(fd)


def exit_hard(path, code):
    import os
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, b"%d\n" % os.getpid())
    os.close(fd)
    os._exit(code)


def segfault(path):
    import ctypes
    import os
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, b"%d\n" % os.getpid())
    os.close(fd)
    ctypes.string_at(0)


def pid_file_then_sleep(path, secs):
    """First run: publish the pid and sleep.  A rerun (marker present): return at once."""
    import os
    import time
    if not os.path.exists(path):
        with open(path + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(path + ".tmp", path)
        time.sleep(secs)
        return ("first", os.getpid())
    return ("rerun", os.getpid())


def pid_into_dir_then_sleep(dirpath, secs):
    import os
    import time
    with open(os.path.join(dirpath, str(os.getpid())), "w") as f:
        f.write("x")
    time.sleep(secs)
    return os.getpid()


def runs(path):
    try:
        with open(path) as f:
            return [int(l) for l in f.read().split()]
    except FileNotFoundError:
        return []


# ---------------------------------------------------------------------------
# exceptions raised by jobs

def test_job_exception_reraised_with_remote_traceback(server):
    job = server.submit(raise_boom)
    with pytest.raises(ValueError, match="boom") as ei:
        job.result(timeout=30)
    exc = ei.value
    assert isinstance(exc.__cause__, pp.RemoteTraceback)
    assert "raise_boom" in str(exc.__cause__)
    assert hasattr(exc, "remote_traceback")
    assert "raise_boom" in str(exc.remote_traceback)
    assert "boom" in str(exc.remote_traceback)
    # job() raises too
    with pytest.raises(ValueError, match="boom"):
        job()


def test_worker_survives_job_exception(server1):
    pid = server1.submit(worker_pid).result(timeout=30)
    with pytest.raises(ValueError):
        server1.submit(raise_boom).result(timeout=30)
    assert server1.submit(square, (8,)).result(timeout=30) == 64
    assert server1.submit(worker_pid).result(timeout=30) == pid


def test_builtin_exceptions_keep_type(server):
    with pytest.raises(ZeroDivisionError):
        server.submit(divmod, (1, 0)).result(timeout=30)
    with pytest.raises(KeyError):
        server.submit(operator.getitem, ({}, "missing")).result(timeout=30)
    with pytest.raises(TypeError):
        server.submit(len, (5,)).result(timeout=30)


def test_custom_exception_defined_in_main(tmp_path):
    proc = run_script(tmp_path, """
        import io
        import pp

        class MyError(Exception):
            pass

        class TwoArgError(Exception):
            def __init__(self, a, b):
                super().__init__(a)
                self.b = b

        def fail(x):
            raise MyError("custom %d" % x)

        def fail2():
            raise TwoArgError("first", "second")

        out = []
        with pp.Server(1, logstream=io.StringIO()) as s:
            try:
                s.submit(fail, (7,), (MyError,)).result(timeout=30)
            except MyError as e:
                out.append((type(e).__name__, str(e), type(e.__cause__).__name__))
            try:
                s.submit(fail2, (), (TwoArgError,)).result(timeout=30)
            except pp.RemoteError as e:
                text = str(e) + str(getattr(e, "remote_traceback", "")) + str(e.__cause__)
                out.append(("RemoteError", "TwoArgError" in text))
            except Exception as e:
                out.append(("other", repr(e)))
            out.append(s.submit(abs, (-3,)).result(timeout=30))
        print(repr(out))
    """)
    lines = [l for l in proc.stdout.splitlines() if l.strip()]
    assert ast.literal_eval(lines[-1]) == [("MyError", "custom 7", "RemoteTraceback"),
                                           ("RemoteError", True), 3]


# ---------------------------------------------------------------------------
# workers dying

def test_worker_exit_fails_job_after_retries(tmp_path, logbuf):
    path = str(tmp_path / "runs")
    with pp.Server(2, logstream=logbuf) as s:
        job = s.submit(exit_hard, (path, 3))
        with pytest.raises(pp.WorkerLostError) as ei:
            job.result(timeout=60)
        err = ei.value
        assert err.exitstatus == 3
        assert "3" in str(err)
        assert len(runs(path)) == 3            # max_retries=2 -> 3 runs
        # the pool is intact
        assert s.get_ncpus() == 2
        jobs = [s.submit(square, (i,)) for i in range(10)]
        assert [j.result(timeout=60) for j in jobs] == [i * i for i in range(10)]
        pids = {j.result(timeout=60) for j in [s.submit(sleep_pid, (0.3,)) for _ in range(2)]}
        assert len(pids) == 2
        assert not (pids & set(runs(path)))


def test_max_retries_zero_fails_at_once(tmp_path, logbuf):
    path = str(tmp_path / "runs")
    with pp.Server(1, max_retries=0, logstream=logbuf) as s:
        job = s.submit(exit_hard, (path, 5))
        with pytest.raises(pp.WorkerLostError) as ei:
            job.result(timeout=60)
        assert ei.value.exitstatus == 5
        assert len(runs(path)) == 1
        assert s.submit(square, (3,)).result(timeout=30) == 9


def test_max_retries_custom(tmp_path, logbuf):
    path = str(tmp_path / "runs")
    with pp.Server(1, max_retries=4, logstream=logbuf) as s:
        with pytest.raises(pp.WorkerLostError):
            s.submit(exit_hard, (path, 1)).result(timeout=60)
        assert len(runs(path)) == 5


def test_segfault_reports_signal(tmp_path, logbuf):
    path = str(tmp_path / "runs")
    with pp.Server(1, max_retries=1, logstream=logbuf) as s:
        job = s.submit(segfault, (path,))
        with pytest.raises(pp.WorkerLostError) as ei:
            job.result(timeout=60)
        err = ei.value
        assert err.termsignal == signal.SIGSEGV
        msg = str(err)
        assert "SIGSEGV" in msg or "11" in msg, msg
        assert len(runs(path)) == 2
        assert s.submit(square, (4,)).result(timeout=30) == 16


def test_sigkill_from_outside_job_is_rerun(tmp_path, logbuf):
    marker = str(tmp_path / "pid")
    with pp.Server(2, logstream=logbuf) as s:
        job = s.submit(pid_file_then_sleep, (marker, 5.0))
        wait_for(lambda: os.path.exists(marker), 30, what="job never started")
        with open(marker) as f:
            victim = int(f.read())
        assert victim != os.getpid()
        os.kill(victim, signal.SIGKILL)
        tag, pid = job.result(timeout=60)
        assert tag == "rerun"
        assert pid != victim
        assert wait_pids_gone([victim], timeout=10) == []
        # the pool still has two live workers, none of them the killed one
        assert s.get_ncpus() == 2
        pids = {j.result(timeout=60) for j in [s.submit(sleep_pid, (0.3,)) for _ in range(2)]}
        assert len(pids) == 2
        assert victim not in pids


def test_job_crashing_every_worker_cannot_take_pool_down(tmp_path, logbuf):
    path = str(tmp_path / "runs")
    with pp.Server(2, logstream=logbuf) as s:
        bad = [s.submit(exit_hard, (path, 9)) for _ in range(3)]
        good = [s.submit(square, (i,)) for i in range(10)]
        for j in bad:
            with pytest.raises(pp.WorkerLostError):
                j.result(timeout=60)
        assert [j.result(timeout=60) for j in good] == [i * i for i in range(10)]
        more = [s.submit(square, (i,)) for i in range(10)]
        assert [j.result(timeout=60) for j in more] == [i * i for i in range(10)]
        assert s.get_ncpus() == 2
        assert s.get_active_nodes() == {"local": 2}


# ---------------------------------------------------------------------------
# destroy with work in flight

def test_destroy_with_running_and_queued_jobs(tmp_path):
    d = tmp_path / "pids"
    d.mkdir()
    s = pp.Server(2, logstream=io.StringIO())
    try:
        jobs = [s.submit(pid_into_dir_then_sleep, (str(d), 20)) for _ in range(6)]
        wait_for(lambda: len(os.listdir(d)) >= 2, 30, what="jobs never started")
        pids = [int(p) for p in os.listdir(d)]
        t0 = time.monotonic()
        bounded(s.destroy, timeout=30)
        elapsed = time.monotonic() - t0
    finally:
        s.destroy()
    assert elapsed < 5, f"destroy() took {elapsed:.1f} s"
    for j in jobs:
        with pytest.raises(pp.DestroyedError):
            j.result(timeout=5)
        assert j.done()
    assert wait_pids_gone(pids, timeout=10) == []


def test_wait_released_by_destroy(tmp_path):
    marker = str(tmp_path / "pid")
    s = pp.Server(1, logstream=io.StringIO())
    try:
        job = s.submit(pid_file_then_sleep, (marker, 20))
        wait_for(lambda: os.path.exists(marker), 30, what="job never started")
        # destroy() while wait() blocks
        threading.Timer(0.5, s.destroy).start()
        try:
            bounded(s.wait, timeout=15)
        except pp.DestroyedError:
            pass
        with pytest.raises(pp.DestroyedError):
            job.result(timeout=5)
    finally:
        s.destroy()


# ---------------------------------------------------------------------------
# Ctrl-C in the client

CTRL_C_SCRIPT = """
import os, sys, time
import pp

s = pp.Server(1)
pid = s.submit(os.getpid).result(timeout=30)
job = s.submit(time.sleep, (30,))
print(pid, flush=True)
print("ready", flush=True)
{call}
print("returned", flush=True)
"""


@pytest.mark.parametrize("call", ["job()", "s.wait()", "job.result()"])
def test_ctrl_c_interrupts_blocking_call(tmp_path, call):
    sc = Script(tmp_path, CTRL_C_SCRIPT.format(call=call))
    try:
        worker = int(sc.readline(timeout=60))
        assert sc.readline(timeout=30) == "ready"
        # the main thread is blocked in the call (on the engine's condition
        # variable, in 50 ms slices), not still on its way to it
        wait_for(lambda: holds(lambda: in_futex_wait(sc.proc.pid), 0.3), 30,
                 what=lambda: "the client's main thread never blocked")
        sc.proc.send_signal(signal.SIGINT)
        try:
            rc = sc.proc.wait(timeout=5)
        except Exception:
            pytest.fail("client did not exit within 5 s of SIGINT; stderr:\n" + sc.stderr())
        err = sc.stderr(complete=True)
        assert rc != 0
        assert "KeyboardInterrupt" in err, err
        # the worker does not outlive the client
        assert wait_pids_gone([worker], timeout=10) == [], "worker left running after Ctrl-C"
    finally:
        sc.cleanup()


# ---------------------------------------------------------------------------
# client killed

KILLED_CLIENT_SCRIPT = """
import os, time
import pp

def pid_sleep():
    import os, time
    time.sleep(0.2)
    return os.getpid()

s = pp.Server(2)
pids = set()
for _ in range(25):
    jobs = [s.submit(pid_sleep) for _ in range(2)]
    pids.update(j.result(timeout=30) for j in jobs)
    if len(pids) >= 2:
        break
print(" ".join(str(p) for p in sorted(pids)), flush=True)
{extra}
time.sleep(60)
"""

# both workers busy: each job marks that it started, then sleeps
BUSY = """
def mark_sleep(d):
    import os, time
    open(os.path.join(d, str(os.getpid())), "w").close()
    time.sleep(60)

for _ in range(2):
    s.submit(mark_sleep, ({d!r},))
"""


@pytest.mark.parametrize("busy", [False, True], ids=["idle", "busy"])
def test_workers_die_with_killed_client(tmp_path, busy):
    d = tmp_path / "started"
    d.mkdir()
    extra = BUSY.format(d=str(d)) if busy else ""
    sc = Script(tmp_path, KILLED_CLIENT_SCRIPT.format(extra=extra))
    procs = []
    try:
        line = sc.readline(timeout=60)
        workers = [int(p) for p in line.split()]
        assert len(workers) == 2
        if busy:
            wait_for(lambda: len(os.listdir(d)) == 2, 30, what=sc.stderr)
        procs = sorted(set(workers) | set(descendants(sc.proc.pid)))
        assert all(pid_alive(p) for p in workers)
        sc.proc.kill()
        sc.proc.wait(timeout=10)
        left = wait_pids_gone(procs, timeout=5)
        assert left == [], "processes outlived the SIGKILLed client: %s" % (
            [(p, pid_state(p)) for p in left],)
    finally:
        kill_pids(procs)
        sc.cleanup()
