"""Regression (issue 8, defect 10): workers killed while starting kill the pool.

A thread SIGKILLs every live worker of a pp.Server every 50 ms for 3 s
(found through get_worker_stats(), so also workers that have not reported
ready yet) while 10,000 short jobs are queued. Deaths by signal are not a
worker that cannot start: when the kills stop the pool recovers by itself,
every job succeeds (none fails with "no worker process could be started")
and the pool has all its workers back.

Before the fix (main daaf568): after 11 workers were killed (60 rounds),
all 10,000 jobs failed with PPError "no worker process could be started
(5 attempts in a row failed; see the log)"."""
import io
import os
import signal
import threading
import time

import pytest

import pp
from helpers import pid_alive, wait_for

NWORKERS = 2
NJOBS = 10_000
KILL_EVERY = 0.05
KILL_FOR = 3.0


def square(x):
    return x * x


def parent_of(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            data = f.read()
        return int(data[data.rfind(")") + 2:].split()[1])
    except (OSError, ValueError, IndexError):
        return None


class Killer(threading.Thread):
    """SIGKILLs every live worker of server s every `every` s for `duration`
    s (only processes that are this process's children, or its fork
    server's)."""

    def __init__(self, s, every=KILL_EVERY, duration=KILL_FOR):
        super().__init__(daemon=True)
        self.s, self.every, self.duration = s, every, duration
        self.killed = set()
        self.rounds = 0
        self.stop = threading.Event()
        self.first_round = threading.Event()

    def run(self):
        me = os.getpid()
        deadline = time.monotonic() + self.duration
        while time.monotonic() < deadline and not self.stop.is_set():
            parents = {me, self.s._engine.stats()["template_pid"]} - {0}
            for pid in list(self.s.get_worker_stats()):
                if parent_of(pid) in parents:
                    try:
                        os.kill(pid, signal.SIGKILL)
                        self.killed.add(pid)
                    except ProcessLookupError:
                        pass
            self.rounds += 1
            self.first_round.set()
            self.stop.wait(self.every)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_workers_killed_while_starting_pool_recovers(method):
    # Kills also land on workers that are running jobs, and each such death
    # is charged to the job it was running: more retries than the default
    # keep that (correct) charging from failing a job in this test.
    buf = io.StringIO()
    with pp.Server(NWORKERS, max_retries=10, logstream=buf,
                   start_method=method) as s:
        assert s.submit(square, (3,)).result(timeout=30) == 9
        killer = Killer(s)
        killer.start()
        try:
            assert killer.first_round.wait(10)
            jobs = [s.submit(square, (i,)) for i in range(NJOBS)]
            killer.join(KILL_FOR + 10)
        finally:
            killer.stop.set()
            killer.join(10)
        assert not killer.is_alive()
        assert len(killer.killed) >= 5, "only %d workers were killed" % len(killer.killed)
        # the kills have stopped: every job finishes, successfully
        deadline = time.monotonic() + 60
        failed, pending = [], 0
        for i, j in enumerate(jobs):
            if not j.wait(max(0.01, deadline - time.monotonic())):
                pending += 1
                continue
            e = j.exception(timeout=0)
            if e is not None or j.result(timeout=0) != i * i:
                failed.append((i, repr(e)[:200]))
        assert not failed and not pending, (
            "after %d workers were killed in %d rounds: %d of %d jobs failed (e.g. %r), "
            "%d still pending; the log:\n%s" % (
                len(killer.killed), killer.rounds, len(failed), NJOBS, failed[:2], pending,
                buf.getvalue()[-2000:]))
        # and the pool has its workers back, and serves
        def all_back():
            live = [p for p in s.get_worker_stats() if pid_alive(p)]
            return live if len(live) == NWORKERS else None
        live = wait_for(all_back, 30, what=lambda: "workers: %r" % s.get_worker_stats())
        assert not set(live) & killer.killed
        more = [s.submit(square, (i,)) for i in range(100)]
        assert [j.result(timeout=30) for j in more] == [i * i for i in range(100)]
