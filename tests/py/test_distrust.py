"""Clients that distrust nodes (issue: a node that knows the secret but
misbehaves). A fake node on 127.0.0.1 passes the handshake (it has the
secret) and then: announces 65,536 workers and holds every job; answers
with job ids it was never given; or breaks the protocol right after its
HELLO, on every connection. The client caps the announced count
(max_node_workers), keeps no more in flight on a node than it has returned
results for (plus a start window of 16), closes a connection that answers
for a job it does not hold (its jobs run elsewhere), and backs off
exponentially from a node that keeps failing. Each runs over plain
connections and over TLS (the fake node's side of TLS through
tests/c/bin/tls_shim --server-fd)."""
import io
import logging
import socket
import threading
import time

import pytest

import pp
import ppwire
from helpers import SECRET, wait_for

START_WINDOW = 16  # PP__REMOTE_START_WINDOW in src/core/peer.h


def slow_square(x):
    import time
    time.sleep(0.005)
    return x * x


class FakeNode:
    """Accepts connections on 127.0.0.1 and runs behave(conn, node) for each
    authenticated one in its own thread; counts what it sees. With tls, it
    speaks inside TLS (PSK from the secret)."""

    def __init__(self, behave, tls=False):
        self.behave = behave
        self.tls = tls
        self.lst = socket.socket()
        self.lst.bind(("127.0.0.1", 0))
        self.lst.listen(16)
        self.lst.settimeout(0.1)
        self.port = self.lst.getsockname()[1]
        self.addr = "127.0.0.1:%d" % self.port
        self.lock = threading.Lock()
        self.connections = []  # monotonic time of each accepted connection
        self.jobs = 0          # JOB frames received, all connections
        self.conns = []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self.accept_loop, daemon=True)]
        self.threads[0].start()

    def accept_loop(self):
        deadline = time.monotonic() + 120
        while not self.stopping.is_set() and time.monotonic() < deadline:
            try:
                s, _ = self.lst.accept()
            except OSError:
                continue
            with self.lock:
                self.connections.append(time.monotonic())
            t = threading.Thread(target=self.serve, args=(s,), daemon=True)
            self.threads.append(t)
            t.start()

    def serve(self, s):
        try:
            if self.tls:
                s = ppwire.accept_tls(s, SECRET)
            c = ppwire.NodeConn(s, SECRET, tls=self.tls)
        except (OSError, ppwire.ProtocolError):
            s.close()
            return
        with self.lock:
            self.conns.append(c)
        try:
            self.behave(c, self)
        except (OSError, ppwire.ProtocolError):
            pass
        finally:
            c.close()

    def frames(self, c):
        """Yield the client's JOB frames, answering PINGs, until it closes."""
        while not self.stopping.is_set():
            ftype, flags, attempt, fid, payload = c.recv()
            if ftype == ppwire.PING:
                c.send(ppwire.PONG, payload)
            elif ftype == ppwire.JOB:
                with self.lock:
                    self.jobs += 1
                yield fid, attempt
            elif ftype == ppwire.BYE:
                return

    def drop_all(self):
        with self.lock:
            for c in self.conns:
                try:
                    c.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.stopping.set()
        self.drop_all()
        for t in self.threads:
            t.join(10)
        self.lst.close()


@pytest.fixture(params=[False, True], ids=["plain", "tls"])
def fake_node(request):
    made = []

    def make(behave):
        n = FakeNode(behave, request.param)
        made.append(n)
        return n
    yield make
    for n in made:
        n.close()


def client(node, ncpus=1, **kw):
    buf = io.StringIO()
    s = pp.Server(ncpus, ppservers=(node.addr,), secret=SECRET, logstream=buf,
                  loglevel=logging.INFO, tls=node.tls, **kw)
    return s, buf


def test_node_announcing_65536_workers_gets_a_start_window(fake_node):
    def hold(c, node):
        c.hello(65536)
        for _ in node.frames(c):
            pass  # holds every job, answers only heartbeats
    n = fake_node(hold)
    s, buf = client(n)
    try:
        wait_for(lambda: "connected to node %s" % n.addr in buf.getvalue(), 20,
                 what=buf.getvalue)
        assert "node %s announces 65536 workers; using 256 (max_node_workers)" % n.addr \
            in buf.getvalue()
        jobs = [s.submit(slow_square, (i,)) for i in range(300)]
        # the local worker runs everything the node was not given
        wait_for(lambda: sum(j.done() for j in jobs) >= 300 - START_WINDOW, 60,
                 what=lambda: "%d done, node got %d" % (sum(j.done() for j in jobs), n.jobs))
        held = n.jobs
        assert 0 < held <= START_WINDOW, held
        n.drop_all()  # the node goes away: what it held runs locally
        assert [j.result(timeout=60) for j in jobs] == [i * i for i in range(300)]
    finally:
        s.destroy()


def test_max_node_workers_caps_what_a_node_announces(fake_node):
    def announce(c, node):
        c.hello(65536)
        for _ in node.frames(c):
            pass
    n = fake_node(announce)
    s, buf = client(n, ncpus=0, max_node_workers=4)
    try:
        wait_for(lambda: "connected to node %s (4 workers" % n.addr in buf.getvalue(), 20,
                 what=buf.getvalue)
        assert "announces 65536 workers; using 4 (max_node_workers)" in buf.getvalue()
        # the transport really is the one asked for
        assert ("TLSv1.3" in buf.getvalue()) == n.tls, buf.getvalue()
    finally:
        s.destroy()
    with pytest.raises(ValueError):
        pp.Server(0, max_node_workers=0)


def test_result_for_a_job_the_node_does_not_hold_closes_it(fake_node):
    def lie(c, node):
        c.hello(2)
        for fid, attempt in node.frames(c):
            c.result(fid + 1000, attempt, 0)  # a job id it was never given
    n = fake_node(lie)
    s, buf = client(n)
    try:
        wait_for(lambda: "connected to node %s" % n.addr in buf.getvalue(), 20,
                 what=buf.getvalue)
        jobs = [s.submit(slow_square, (i,)) for i in range(50)]
        assert [j.result(timeout=60) for j in jobs] == [i * i for i in range(50)]
        assert n.jobs > 0  # it was given some, and they ran elsewhere
        log = buf.getvalue()
        assert "which it does not hold: closing the connection" in log, log
        assert "lost node %s" % n.addr in log
        assert s.get_stats()[n.addr].njobs == 0
    finally:
        s.destroy()


def test_node_that_keeps_breaking_the_protocol_is_tried_ever_more_rarely(fake_node):
    def broken(c, node):
        c.hello(2)
        c.send(99, b"what is this")  # a sealed frame of no known type
        for _ in node.frames(c):
            pass
    n = fake_node(broken)
    s, buf = client(n)
    try:
        wait_for(lambda: len(n.connections) >= 1, 20, what=buf.getvalue)
        t0 = n.connections[0]
        time.sleep(6.5)
        with n.lock:
            within = [t - t0 for t in n.connections if t - t0 <= 6.0]
        # 0.25, 0.5, 1, 2, 4 s apart: 5 connections in 6 s (it was one
        # every 0.25 s: the backoff started again at every HELLO)
        assert 3 <= len(within) <= 6, within
        assert s.submit(slow_square, (3,)).result(timeout=30) == 9
    finally:
        s.destroy()
