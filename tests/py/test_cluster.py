"""Clusters from the client's side: pp.Server(ppservers=...) against real
bin/ppserver processes on 127.0.0.1 — remote execution, load balancing,
statistics, node failure and return, hung nodes, no capacity, wrong secret."""
import io
import signal
import sys

import pytest

import pp
from helpers import SECRET, free_port, needs_ppserver, wait_for

pytestmark = needs_ppserver


@pytest.fixture
def nodes(ppserver):
    """nodes(workers=1, ...): ppservers on 127.0.0.1 with SECRET."""
    return ppserver


def square(x):
    return x * x


def slow_square(x, secs):
    import time
    time.sleep(secs)
    return x * x


def whoami(secs):
    import os
    import time
    time.sleep(secs)
    return os.getpid()


def raise_value():
    raise ValueError("remote failure")


def test_remote_only_results_stats_and_nodes(nodes):
    n = nodes(workers=2)
    with pp.Server(0, ppservers=(n.addr,), secret=SECRET) as s:
        import math
        assert s.submit(math.sin, (math.pi / 2,), (), ("math",)).result(timeout=30) == 1.0
        assert s.submit(min, (3.2, 10.0, 7.5)).result(timeout=30) == 3.2
        jobs = [s.submit(square, (i,)) for i in range(500)]
        assert [j.result(timeout=60) for j in jobs] == [i * i for i in range(500)]
        assert s.get_active_nodes() == {"local": 0, n.addr: 2}
        stats = s.get_stats()
        assert stats[n.addr].njobs == 502
        assert stats["local"].njobs == 0
        out = io.StringIO()
        sys_stdout, sys.stdout = sys.stdout, out
        try:
            s.print_stats()
        finally:
            sys.stdout = sys_stdout
        rows = [l for l in out.getvalue().splitlines() if l.endswith(n.addr)]
        assert len(rows) == 1 and rows[0].split("|")[0].strip() == "502"
        assert "0 active tasks, 0 cores" in out.getvalue()


def test_remote_exception_reraised_with_traceback(nodes):
    n = nodes()
    with pp.Server(0, ppservers=(n.addr,), secret=SECRET) as s:
        with pytest.raises(ValueError, match="remote failure") as ei:
            s.submit(raise_value).result(timeout=30)
        assert isinstance(ei.value.__cause__, pp.RemoteTraceback)
        assert "raise_value" in str(ei.value.__cause__)


def test_local_and_remote_share_the_work(nodes):
    n = nodes(workers=1)
    with pp.Server(1, ppservers=(n.addr,), secret=SECRET) as s:
        assert wait_for(lambda: n.addr in s.get_active_nodes())
        jobs = [s.submit(slow_square, (i, 0.05)) for i in range(40)]
        assert [j.result(timeout=60) for j in jobs] == [i * i for i in range(40)]
        stats = s.get_stats()
        assert stats["local"].njobs > 5
        assert stats[n.addr].njobs > 5
        assert stats["local"].njobs + stats[n.addr].njobs == 40


def test_node_killed_mid_run_jobs_rerun_elsewhere(nodes):
    a, b = nodes(workers=1), nodes(workers=1)
    with pp.Server(0, ppservers=(a.addr, b.addr), secret=SECRET,
                   node_timeout=2.0, logstream=io.StringIO()) as s:
        assert wait_for(lambda: len(s.get_active_nodes()) == 3)
        jobs = [s.submit(slow_square, (i, 0.05)) for i in range(40)]
        # a has results back, and more of its jobs are in flight
        wait_for(lambda: s.get_stats()[a.addr].njobs >= 2, 30)
        assert not all(j.done() for j in jobs)
        a.kill()
        assert [j.result(timeout=60) for j in jobs] == [i * i for i in range(40)]
        assert s.get_stats()[b.addr].njobs > 0


def test_node_that_returns_is_used_again(nodes):
    a = nodes(workers=1)
    with pp.Server(0, ppservers=(a.addr,), secret=SECRET,
                   logstream=io.StringIO()) as s:
        assert s.submit(square, (3,)).result(timeout=30) == 9
        a.kill()
        assert wait_for(lambda: a.addr not in s.get_active_nodes())
        job = s.submit(square, (4,))
        assert not job.wait(0.3)       # no capacity: it waits
        a.start()                      # same address
        assert job.result(timeout=30) == 16
        assert a.addr in s.get_active_nodes()


def test_no_capacity_warns_and_times_out(nodes):
    port = free_port()                 # nothing listens there
    buf = io.StringIO()
    with pp.Server(0, ppservers=("127.0.0.1:%d" % port,), secret=SECRET,
                   logstream=buf, no_capacity_timeout=2.0) as s:
        job = s.submit(square, (2,))
        with pytest.raises(TimeoutError):
            job.result(timeout=1.2)
        with pytest.raises(pp.PPError, match="no_capacity_timeout"):
            job.result(timeout=30)
    log = buf.getvalue()
    assert "no local worker and no reachable node" in log
    assert "127.0.0.1:%d" % port in log


def test_hung_node_detected_by_heartbeat(nodes):
    a, b = nodes(workers=1), nodes(workers=1)
    with pp.Server(0, ppservers=(a.addr, b.addr), secret=SECRET,
                   node_timeout=1.0, logstream=io.StringIO()) as s:
        assert wait_for(lambda: len(s.get_active_nodes()) == 3)
        a.kill(signal.SIGSTOP)
        try:
            jobs = [s.submit(slow_square, (i, 0.02)) for i in range(20)]
            assert [j.result(timeout=60) for j in jobs] == [i * i for i in range(20)]
            assert wait_for(lambda: a.addr not in s.get_active_nodes())
        finally:
            a.kill(signal.SIGCONT)


def test_wrong_secret_never_gets_a_job(nodes):
    n = nodes(secret="the-right-one")
    buf = io.StringIO()
    with pp.Server(1, ppservers=(n.addr,), secret="a-wrong-one",
                   logstream=buf) as s:
        jobs = [s.submit(square, (i,)) for i in range(20)]
        assert [j.result(timeout=30) for j in jobs] == [i * i for i in range(20)]
        wait_for(lambda: "authentication failed" in buf.getvalue(), 10,
                 what=buf.getvalue)
        assert n.addr not in s.get_active_nodes()
        assert s.get_stats()[n.addr].njobs == 0
    assert "authentication failed" in buf.getvalue()


def test_ppservers_need_a_secret_and_valid_entries():
    with pytest.raises(ValueError, match="secret"):
        pp.Server(0, ppservers=("127.0.0.1:1",))
    with pytest.raises(ValueError):
        pp.Server(0, ppservers=("127.0.0.1:notaport",), secret="x")
    with pytest.raises(ValueError, match="secret"):
        pp.Server(0, ppservers=("*",))


def test_thirty_two_configured_nodes(nodes):
    """Scale: 32 ppservers (1 worker each) named by one client; every job
    correct and every node used."""
    ns = [nodes(workers=1) for _ in range(32)]
    with pp.Server(0, ppservers=tuple(n.addr for n in ns), secret=SECRET) as s:
        wait_for(lambda: len(s.get_active_nodes()) == 33, 60,
                 what=lambda: s.get_active_nodes())
        jobs = [s.submit(square, (i,)) for i in range(6400)]
        assert [j.result(timeout=60) for j in jobs] == [i * i for i in range(6400)]
        slow = [s.submit(slow_square, (i, 0.05)) for i in range(64)]
        assert [j.result(timeout=60) for j in slow] == [i * i for i in range(64)]
        st = s.get_stats()
        assert sum(st[n.addr].njobs for n in ns) == 6464
        assert all(st[n.addr].njobs > 0 for n in ns)
