"""Regression (issue 8, defect 13): large jobs never finish over a slow link.

4 jobs with 2 MB arguments go to a ppserver through a relay on 127.0.0.1
that carries 125,000 bytes/s (1 Mbit/s) each way, with node_timeout at its
default (5 s). Uploading one job takes 16 s, far longer than node_timeout,
but it moves: liveness must count that progress, so every job finishes and
the client never drops the node (the relay accepts exactly one connection).
The uploads alone take 64 s at that rate.

Before the fix (main daaf568): 0 of 4 jobs finished in 101 s; the client
logged "lost node ... (no answer to heartbeats)" every ~5 s, the relay
accepted 19 connections and carried 37 MB upstream for 8 MB of jobs."""
import io
import os
import socket
import threading
import time

import pytest

import pp
from helpers import SECRET, needs_ppserver, wait_for

RATE = 125_000          # bytes per second, each direction: 1 Mbit/s
ARG = 2_000_000         # bytes of arguments per job
NJOBS = 4
# the uploads take NJOBS * ARG / RATE = 64 s; the rest is slack for a loaded machine
DEADLINE = NJOBS * ARG / RATE * 1.4 + 10


def arg_len(data):
    return len(data)


class Relay:
    """A TCP relay on 127.0.0.1 to (host, port), limited to `rate` bytes/s in
    each direction (a token bucket per direction, 16 KiB of burst), with
    small socket buffers so that the link, not the kernel, holds the data.
    Counts the connections it accepts. Every loop is bounded by stop()."""

    CHUNK = 16 * 1024
    SOCKBUF = 64 * 1024

    def __init__(self, upstream, rate):
        self.upstream, self.rate = upstream, rate
        self.accepted = 0
        self.bytes = {"up": 0, "down": 0}
        self.stopping = threading.Event()
        self.socks = []
        self.threads = []
        self.lock = threading.Lock()
        self.ls = socket.socket()
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.SOCKBUF)
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(8)
        self.ls.settimeout(0.2)
        self.port = self.ls.getsockname()[1]
        self._spawn(self._accept)

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def _spawn(self, fn, *args):
        t = threading.Thread(target=fn, args=args, daemon=True)
        self.threads.append(t)
        t.start()

    def _accept(self):
        while not self.stopping.is_set():
            try:
                c, _ = self.ls.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                self.accepted += 1
            u = socket.socket()
            u.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.SOCKBUF)
            u.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.SOCKBUF)
            c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.SOCKBUF)
            try:
                u.connect(self.upstream)
            except OSError:
                c.close()
                u.close()
                continue
            for s in (c, u):
                s.settimeout(0.2)
            self.socks += [c, u]
            self._spawn(self._pump, c, u, "up")
            self._spawn(self._pump, u, c, "down")

    def _pump(self, src, dst, direction):
        t0, sent, burst = time.monotonic(), 0, self.CHUNK
        try:
            while not self.stopping.is_set():
                try:
                    data = src.recv(self.CHUNK)
                except socket.timeout:
                    # idle: the bucket does not fill beyond its burst
                    t0, sent = time.monotonic(), 0
                    continue
                if not data:
                    break
                view = memoryview(data)
                while view and not self.stopping.is_set():
                    allowed = burst + (time.monotonic() - t0) * self.rate - sent
                    if allowed <= 0:
                        time.sleep(min(0.05, -allowed / self.rate + 0.001))
                        continue
                    n = int(min(len(view), allowed))
                    try:
                        n = dst.send(view[:n])
                    except socket.timeout:
                        continue
                    sent += n
                    with self.lock:
                        self.bytes[direction] += n
                    view = view[n:]
        except OSError:
            pass
        finally:
            for s in (src, dst):  # one side closed: close both
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self):
        self.stopping.set()
        self.ls.close()
        for t in self.threads:
            t.join(5)
        for s in self.socks:
            s.close()


@needs_ppserver
@pytest.mark.watchdog(DEADLINE + 60)
def test_large_jobs_finish_over_a_slow_link(ppserver):
    n = ppserver(workers=2)
    relay = Relay(("127.0.0.1", n.port), RATE)
    buf = io.StringIO()
    try:
        with pp.Server(0, ppservers=(relay.addr,), secret=SECRET, logstream=buf) as s:
            wait_for(lambda: relay.addr in s.get_active_nodes(), 30, what=buf.getvalue)
            t0 = time.monotonic()
            jobs = [s.submit(arg_len, (os.urandom(ARG),)) for _ in range(NJOBS)]
            done = [j.wait(max(0.01, t0 + DEADLINE - time.monotonic())) for j in jobs]
            elapsed = time.monotonic() - t0
            results = [j.result(timeout=0) if d else None for j, d in zip(jobs, done)]
            summary = ("%d of %d jobs finished in %.0f s; the relay accepted %d "
                       "connections and carried %r bytes; the client's log:\n%s" % (
                           sum(done), NJOBS, elapsed, relay.accepted, relay.bytes,
                           buf.getvalue()[-3000:]))
            print(summary.split("; the client's log")[0])
            assert all(done), summary
            assert results == [ARG] * NJOBS, summary
            # the node was never dropped and reconnected
            assert relay.accepted == 1, summary
            assert relay.addr in s.get_active_nodes(), summary
    finally:
        relay.stop()
