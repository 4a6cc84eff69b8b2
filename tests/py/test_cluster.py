"""Clusters from the client's side: pp.Server(ppservers=...) against real
bin/ppserver processes on 127.0.0.1 — remote execution, load balancing,
statistics, node failure and return, hung nodes, no capacity, wrong secret."""
import io
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import pp

ROOT = Path(__file__).resolve().parents[2]
PPSERVER = ROOT / "bin" / "ppserver"
SECRET = "test-cluster-secret"

pytestmark = pytest.mark.skipif(not PPSERVER.exists(),
                                reason="bin/ppserver not built (make)")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    """A ppserver on 127.0.0.1, stopped by pid when the test ends."""

    def __init__(self, workers=1, port=None, secret=SECRET, extra=()):
        self.port = port or free_port()
        self.workers = workers
        self.secret = secret
        self.extra = list(extra)
        self.proc = None
        self.start()

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def start(self):
        env = dict(os.environ, PP_SECRET=self.secret,
                   PYTHONPATH=str(ROOT / "python"))
        self.proc = subprocess.Popen(
            [str(PPSERVER), "-i", "127.0.0.1", "-p", str(self.port),
             "-w", str(self.workers), "--python", sys.executable] + self.extra,
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError("ppserver exited: %r" % self.proc.stderr.read())
                time.sleep(0.05)
        raise RuntimeError("ppserver did not start listening")

    def kill(self, sig=signal.SIGKILL):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            if sig in (signal.SIGKILL, signal.SIGTERM):
                self.proc.wait(10)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)
        if self.proc and self.proc.stderr:
            self.proc.stderr.close()


@pytest.fixture
def nodes():
    made = []

    def make(*a, **kw):
        n = Node(*a, **kw)
        made.append(n)
        return n
    yield make
    for n in made:
        n.stop()


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


def wait_for(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


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
        time.sleep(0.4)
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
        time.sleep(0.3)
        assert not job.done()          # no capacity: it waits
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
        time.sleep(0.5)
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
        deadline = time.monotonic() + 60
        while len(s.get_active_nodes()) < 33 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(s.get_active_nodes()) == 33, s.get_active_nodes()
        jobs = [s.submit(square, (i,)) for i in range(6400)]
        assert [j.result(timeout=60) for j in jobs] == [i * i for i in range(6400)]
        slow = [s.submit(slow_square, (i, 0.05)) for i in range(64)]
        assert [j.result(timeout=60) for j in slow] == [i * i for i in range(64)]
        st = s.get_stats()
        assert sum(st[n.addr].njobs for n in ns) == 6464
        assert all(st[n.addr].njobs > 0 for n in ns)
