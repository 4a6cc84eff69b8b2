"""Job control and observation, locally and on a ppserver node: timeouts
(submit(timeout=), Server(job_timeout=), Template), abort (a job blocked in
a C call, one that catches KeyboardInterrupt, queued jobs, Server.abort),
clients that leave a node, memory limits, retries of jobs that raise, and
each job's status, timestamps, node, worker pid and attempts."""
import os
import signal
import subprocess
import sys
import time

import pytest

import pp
from helpers import REPO, SECRET, wait_for

# Stop latency asserted here is generous (a shared 2-core machine); the
# figures themselves are measured by bench/jobcontrol.py.
SLACK = 1.5


def spin():
    while True:
        pass


def nap(t):
    import time
    time.sleep(t)
    return t


def inc(x):
    return x + 1


def pid():
    import os
    return os.getpid()


def cleanup_on_interrupt(path):
    import time
    try:
        time.sleep(1e9)
    except KeyboardInterrupt:
        open(path, "w").write("cleaned up")
        raise


def stubborn():
    import time
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            time.sleep(10)
        except KeyboardInterrupt:
            pass  # keeps running: must be killed after the grace


def touch_then_stubborn(path):
    """stubborn, once it has said (in path) that it runs."""
    open(path, "w").write("running")
    stubborn()


def touch_then_nap(path, t):
    import time
    open(path, "w").write("ran")
    time.sleep(t)


def hog(n):
    return len(bytearray(n))


def crash_once(path):
    import os
    if not os.path.exists(path):
        open(path, "w").write(str(os.getpid()))
        os._exit(3)
    return os.getpid()


def raise_until(path, n):
    import os
    k = len(open(path).read()) if os.path.exists(path) else 0
    open(path, "a").write("x")
    if k < n:
        raise ValueError("attempt %d fails" % k)
    return k


@pytest.fixture(params=["local", "node"])
def where(request, ppserver):
    """A Server with 2 local workers, or one using only a 2-worker node."""
    if request.param == "local":
        s = pp.Server(2)
    else:
        node = ppserver(workers=2, ready_workers=2)
        s = pp.Server(0, ppservers=(node.addr,), secret=SECRET)
    try:
        assert s.submit(inc, (1,))() == 2  # workers or node ready
        yield s
    finally:
        s.destroy()


def wait_running(job, timeout=10):
    wait_for(job.running, timeout, "job %d running" % job.tid)
    time.sleep(0.2)  # let it get into its loop or sleep


@pytest.mark.parametrize("fn,args", [(spin, ()), (nap, (1e9,))],
                         ids=["busy-loop", "sleep"])
def test_timeout_stops_the_job_and_not_the_pool(where, fn, args):
    t0 = time.monotonic()
    job = where.submit(fn, args, (), ("time",), timeout=0.5)
    other = where.submit(nap, (0.3,), (), ("time",))
    with pytest.raises(pp.JobTimeoutError) as ei:
        job()
    took = time.monotonic() - t0
    assert isinstance(ei.value, TimeoutError)
    assert "0.500 s" in str(ei.value), ei.value
    assert 0.5 <= took < 0.5 + SLACK, took
    assert job.status == "failed" and job.attempts == 1  # never retried
    assert other() == 0.3  # the other job was unaffected
    assert where.submit(inc, (41,))() == 42  # the pool serves on


def test_default_timeout_and_template():
    with pp.Server(1, job_timeout=0.3) as s:
        with pytest.raises(pp.JobTimeoutError):
            s.submit(spin)()
        assert s.submit(nap, (0.05,), (), ("time",), timeout=5)() == 0.05
        t = pp.Template(s, spin, timeout=0.2)
        with pytest.raises(pp.JobTimeoutError):
            t.submit()()
    with pytest.raises(ValueError):
        pp.Server(1, job_timeout=-1)


def test_abort_running_job_gets_keyboardinterrupt(where, tmp_path):
    marker = tmp_path / "cleanup"
    job = where.submit(cleanup_on_interrupt, (str(marker),))
    wait_running(job)
    assert job.cancel() is False  # cancel() is only for jobs not started
    t0 = time.monotonic()
    assert job.abort(grace=5.0) is True
    with pytest.raises(pp.JobAbortedError):
        job()
    assert time.monotonic() - t0 < 2.0  # it ended by itself, well before 5 s
    if where.get_active_nodes().get("local"):
        assert marker.read_text() == "cleaned up"  # same file system
    assert where.submit(inc, (1,))() == 2


def test_abort_stubborn_job_is_killed_after_grace(where):
    job = where.submit(stubborn)
    wait_running(job)
    t0 = time.monotonic()
    job.abort(grace=0.5)
    with pytest.raises(pp.JobAbortedError):
        job()
    took = time.monotonic() - t0
    assert 0.45 <= took < 0.5 + SLACK, took
    assert where.submit(inc, (1,))() == 2  # a replacement worker serves


def test_abort_queued_job_never_runs(tmp_path):
    with pp.Server(1) as s:
        blocker = s.submit(nap, (1.0,), (), ("time",))
        marker = tmp_path / "ran"
        queued = s.submit(touch_then_nap, (str(marker), 0))
        assert queued.status == "queued" and not queued.running()
        assert queued.abort() is True
        with pytest.raises(pp.JobAbortedError):
            queued()
        assert blocker() == 1.0
        assert not marker.exists()
        assert queued.status == "cancelled"
        assert queued.abort() is False  # already finished


def test_server_abort_group(where):
    jobs = [where.submit(nap, (30,), (), ("time",), group="slow") for _ in range(4)]
    keep = where.submit(nap, (0.5,), (), ("time",), group="fast")
    time.sleep(0.3)
    where.abort("slow", grace=0.2)
    for j in jobs:
        with pytest.raises(pp.JobAbortedError):
            j.result(timeout=10)
    assert keep.result(timeout=10) == 0.5


def test_departed_client_frees_the_node(ppserver):
    node = ppserver(workers=1)
    code = ("import pp, time\n"
            "s = pp.Server(0, ppservers=(%r,), secret=%r)\n"
            "j = s.submit(time.sleep, (1e9,))\n"
            "while not j.running(): time.sleep(0.01)\n"
            "print('running', flush=True)\n"
            "time.sleep(1e9)\n" % (node.addr, SECRET))
    env = dict(os.environ, PYTHONPATH=str(REPO / "python"))
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                         env=env)
    try:
        assert p.stdout.readline().strip() == b"running"
        time.sleep(0.3)
        p.kill()
        p.wait(10)
        t0 = time.monotonic()
        with pp.Server(0, ppservers=(node.addr,), secret=SECRET) as s:
            assert s.submit(inc, (1,))(), 2
        took = time.monotonic() - t0
        assert took < 1.0 + SLACK, took  # the node's only worker was freed
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_memory_limit_local():
    with pp.Server(1) as s:
        p0 = s.submit(pid)()
        with pytest.raises(MemoryError):
            s.submit(hog, (400 << 20,), memory_limit=40 << 20)()
        # the same worker, limit lifted: the big allocation works now
        assert s.submit(hog, (400 << 20,))() == 400 << 20
        assert s.submit(pid)() == p0
    with pp.Server(1, job_memory_limit=40 << 20) as s:
        with pytest.raises(MemoryError):
            s.submit(hog, (400 << 20,))()


def test_memory_limit_capped_by_node(ppserver):
    node = ppserver("--job-memory-limit", str(40 << 20), workers=1)
    with pp.Server(0, ppservers=(node.addr,), secret=SECRET) as s:
        with pytest.raises(MemoryError):
            s.submit(hog, (400 << 20,))()  # asks nothing: the node's cap
        with pytest.raises(MemoryError):
            s.submit(hog, (400 << 20,), memory_limit=1 << 40)()  # capped
        assert s.submit(hog, (1 << 20,))() == 1 << 20


def test_retries_of_a_raising_job(where, tmp_path):
    path = str(tmp_path / "n")
    assert where.submit(raise_until, (path, 2), retries=2)() == 2
    path2 = str(tmp_path / "m")
    with pytest.raises(ValueError, match="attempt 1 fails"):
        where.submit(raise_until, (path2, 5), retries=1)()
    assert open(path2).read() == "xx"  # ran twice, no more




def test_map_and_imap_chunks_have_timeouts():
    """map/imap/imap_unordered(timeout=) bound each chunk as submit's
    timeout bounds a job; the Server's job_timeout is their default."""
    with pp.Server(2) as s:
        t0 = time.monotonic()
        with pytest.raises(pp.JobTimeoutError):
            s.map(nap, [0.01, 60, 0.01], chunksize=1, timeout=0.5)
        with pytest.raises(pp.JobTimeoutError):
            list(s.imap(nap, [60], timeout=0.5))
        with pytest.raises(pp.JobTimeoutError):
            list(s.imap_unordered(nap, [0.01, 60], timeout=0.5))
        assert time.monotonic() - t0 < 30
        assert s.map(nap, [0.01] * 4, chunksize=2, timeout=30) == [0.01] * 4
    with pp.Server(2, job_timeout=0.5) as s:
        with pytest.raises(pp.JobTimeoutError):
            s.map(nap, [60], chunksize=1)
        assert list(s.imap(nap, [0.01, 0.02])) == [0.01, 0.02]



def test_a_stopped_job_keeps_when_it_started(tmp_path):
    """A job killed at its timeout or after its abort grace reports when it
    started, not its end time twice."""
    with pp.Server(1) as s:
        j = s.submit(nap, (30,), timeout=0.5)
        with pytest.raises(pp.JobTimeoutError):
            j()
        assert j.submit_time <= j.start_time < j.end_time
        assert 0.4 <= j.end_time - j.start_time < 10
        # it runs once the worker says so, not when it was handed over: a
        # replacement worker (even a forked one) may still be importing this
        # module then
        marker = tmp_path / "running"
        j = s.submit(touch_then_stubborn, (str(marker),))
        wait_for(marker.exists, 10, "the job running")
        time.sleep(0.5)
        j.abort(grace=0.2)
        with pytest.raises(pp.JobAbortedError):
            j()
        assert 0.4 <= j.end_time - j.start_time < 10


def raise_first_where(path):
    """Appends 'pid ppid' of the process running it; raises the first time."""
    import os
    with open(path, "a") as f:
        f.write("%d %d\n" % (os.getpid(), os.getppid()))
    if len(open(path).read().splitlines()) == 1:
        raise ValueError("first run fails")
    return os.getpid()


@pytest.mark.parametrize("remote", [False, True])
def test_retry_runs_on_another_worker_or_node(remote, tmp_path, ppserver):
    """retries= sends the job to another worker (locally) or node (two
    one-worker nodes: another ppserver) when one has room."""
    if remote:
        nodes = [ppserver(workers=1) for _ in range(2)]
        s = pp.Server(0, ppservers=tuple(n.addr for n in nodes), secret=SECRET)
    else:
        s = pp.Server(2)
    try:
        wait_for(lambda: len({j() for j in [s.submit(pid) for _ in range(8)]}) == 2, 20)
        for k in range(3):
            path = str(tmp_path / ("r%d" % k))
            job = s.submit(raise_first_where, (path,), retries=1)
            job()
            runs = [tuple(map(int, l.split())) for l in open(path).read().splitlines()]
            assert len(runs) == 2, runs
            if remote:
                assert runs[0][1] != runs[1][1], runs  # another ppserver
            else:
                assert runs[0][0] != runs[1][0], runs  # another worker
    finally:
        s.destroy()


def test_status_and_timing_after_a_crash(tmp_path):
    with pp.Server(1) as s:
        first = s.submit(pid)()
        marker = tmp_path / "crashed"
        before = time.time()
        job = s.submit(crash_once, (str(marker),))
        assert job.status in ("queued", "running")
        result = job()
        after = time.time()
        assert job.status == "done" and job.done() and not job.running()
        assert job.attempts == 2
        assert job.node == "local"
        assert job.worker_pid == result != int(marker.read_text())
        assert result != first
        assert before - 0.01 <= job.submit_time <= job.start_time <= \
            job.end_time <= after + 0.01


def test_status_and_timing_on_a_node(ppserver):
    node = ppserver(workers=1)
    with pp.Server(0, ppservers=(node.addr,), secret=SECRET) as s:
        job = s.submit(nap, (0.2,), (), ("time",))
        assert job() == 0.2
        assert job.status == "done" and job.node == node.addr
        assert job.worker_pid is None and job.attempts == 1
        assert job.end_time - job.start_time >= 0.19
        assert job.submit_time <= job.start_time


# ---- captured output -------------------------------------------------------

def talk(n):
    import os
    import sys
    print("out", n)
    sys.stderr.write("err %d\n" % n)
    os.system("echo hi from a child")
    return n


def print_mib(n):
    import sys
    sys.stdout.write("y" * (n << 20))


def test_output_captured_local_and_node(ppserver):
    node = ppserver(workers=1)
    for s in (pp.Server(1, output="capture"),
              pp.Server(0, ppservers=(node.addr,), secret=SECRET,
                        output="capture")):
        with s:
            j = s.submit(talk, (7,))
            assert j() == 7
            assert j.stdout == "out 7\nhi from a child\n"
            assert j.stderr == "err 7\n"
            quiet = s.submit(inc, (1,))
            assert quiet() == 2 and quiet.stdout == "" and quiet.stderr == ""


def test_output_cut_at_max_output():
    with pp.Server(1, output="capture") as s:
        j = s.submit(print_mib, (10,))
        j()
        assert j.stdout.startswith("y" * 1000)
        assert len(j.stdout) < (1 << 20) + 100
        assert "%d more bytes of output dropped" % (9 << 20) in j.stdout
    with pp.Server(1, output="capture", max_output=1000) as s:
        j = s.submit(print_mib, (1,))
        j()
        assert j.stdout.split("\n")[0] == "y" * 1000


def test_output_echoed_when_read(capfd):
    with pp.Server(1) as s:  # output="echo" is the default
        j = s.submit(talk, (3,))
        assert j() == 3
        j()  # echoed once
    out, err = capfd.readouterr()
    assert out.count("out 3\nhi from a child\n") == 1
    assert err.count("err 3\n") == 1


def test_output_inherit_captures_nothing(capfd):
    with pp.Server(1, output="inherit") as s:
        j = s.submit(talk, (5,))
        assert j() == 5
        assert j.stdout == "" and j.stderr == ""
    with pytest.raises(ValueError):
        pp.Server(1, output="loud")
