"""Self-test of the network-namespace harness (tests/py/netns.py).

Checks that broadcast UDP reaches every other host, that TCP works between hosts and
that unplug()/plug() cut and restore a host, that Lab.close() leaves no namespace or
process behind (also when the `with` body raised), and that namespaces left by a
crashed run are removed.  Skipped, with the reason, where namespaces are unavailable.
"""
import queue
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

import netns
from helpers import pid_alive, wait_for, wait_pids_gone

PORT = 47123


class Proc:
    """A process running inside a lab host, with stdin/stdout lines and a read timeout."""

    def __init__(self, host, code):
        self.proc = host.popen([sys.executable, "-u", "-c", textwrap.dedent(code)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        self.lines = queue.Queue()
        self.err = []
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines.put),
                         daemon=True).start()
        self.err_thread = threading.Thread(target=self._pump,
                                           args=(self.proc.stderr, self.err.append),
                                           daemon=True)
        self.err_thread.start()

    @staticmethod
    def _pump(stream, put):
        try:
            for line in stream:
                put(line.rstrip("\n"))
        except (OSError, ValueError):
            pass
        put(None)

    def readline(self, timeout=10):
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no output within {timeout} s; stderr:\n" + "\n".join(map(str, self.err)))
        if line is None:
            self.err_thread.join(5)  # all of its stderr
            pytest.fail(f"process ended (rc={self.proc.poll()}); stderr:\n"
                        + "\n".join(e for e in self.err if e))
        return line

    def send(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()


def ns_names_with(prefix):
    return [n for n in netns.list_namespaces() if n.startswith(prefix)]


RECEIVER = f"""
    import socket
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", {PORT}))
    s.settimeout(5)
    print("ready")
    data, addr = s.recvfrom(100)
    print(data.decode(), addr[0])
"""


def test_broadcast_reaches_all_other_hosts():
    with netns.lab_or_skip("bcast") as lab:
        a, b = lab.add_host("a"), lab.add_host("b")
        assert (a.ip, b.ip) == ("10.77.0.11", "10.77.0.12")
        assert lab.broadcast == "10.77.0.255"
        receivers = [Proc(h, RECEIVER) for h in (a, b)]
        for r in receivers:
            assert r.readline() == "ready"
        # the sender is created last: broadcast must work right after add_host returns
        c = lab.add_host("c")
        res = c.run([sys.executable, "-c", textwrap.dedent(f"""
            import socket
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            s.sendto(b"hello", ("{lab.broadcast}", {PORT}))
        """)], timeout=10, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        for r in receivers:
            assert r.readline() == f"hello {c.ip}"
            assert r.proc.wait(timeout=5) == 0


TCP_SERVER = f"""
    import socket, threading
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", {PORT}))
    srv.listen(16)
    print("ready")
    def echo(c):
        while True:
            d = c.recv(100)
            if not d:
                return
            c.sendall(d)
    while True:
        c, _ = srv.accept()
        threading.Thread(target=echo, args=(c,), daemon=True).start()
"""

# Reads commands on stdin: "connect" tries a new connection (1 s timeout) and prints
# "ok"/"fail ..."; "send X" sends X on the first connection and prints what comes back
# within 0.5 s ("echo X") or "timeout"; "wait X" waits up to 10 s for X to come back.
TCP_CLIENT = f"""
    import socket, sys
    conn = None
    for line in sys.stdin:
        cmd, _, arg = line.strip().partition(" ")
        if cmd == "connect":
            try:
                c = socket.create_connection((sys.argv[1], {PORT}), timeout=1)
                c.sendall(b"ping")
                c.settimeout(1)
                assert c.recv(4) == b"ping"
                print("ok")
                if conn is None:
                    conn = c
                else:
                    c.close()
            except OSError as e:
                print("fail", type(e).__name__, e)
        elif cmd in ("send", "wait"):
            if cmd == "send":
                conn.sendall(arg.encode())
            conn.settimeout(0.5 if cmd == "send" else 10)
            try:
                got = b""
                while len(got) < len(arg):
                    d = conn.recv(100)
                    if not d:
                        print("closed")
                        break
                    got += d
                else:
                    print("echo", got.decode())
            except socket.timeout:
                print("timeout")
"""


def test_tcp_and_unplug_plug():
    with netns.lab_or_skip("tcp") as lab:
        a, b = lab.add_host("a"), lab.add_host("b")
        server = Proc(b, TCP_SERVER)
        assert server.readline() == "ready"
        client = Proc(a, TCP_CLIENT.replace("sys.argv[1]", repr(b.ip)))
        client.send("connect")
        assert client.readline() == "ok"
        client.send("send 1")
        assert client.readline() == "echo 1"

        b.unplug()
        client.send("connect")
        assert client.readline().startswith("fail")
        client.send("send 2")          # the established connection gets no answer
        assert client.readline() == "timeout"
        assert server.proc.poll() is None

        b.plug()
        client.send("connect")
        assert client.readline() == "ok"
        # the old connection was never reset: the retransmitted data gets through
        client.send("wait 2")
        assert client.readline() == "echo 2"
        client.send("send 3")
        assert client.readline() == "echo 3"
        assert a.kill(server.proc) == -signal.SIGKILL


def test_close_kills_everything_and_deletes_namespaces():
    spawner = """
        import subprocess, sys, time
        p = subprocess.Popen(["sleep", "60"], start_new_session=True)
        print(p.pid, flush=True)
        time.sleep(60)
    """
    with pytest.raises(RuntimeError, match="boom"):
        with netns.lab_or_skip("close") as lab:
            hosts = [lab.add_host(f"n{i}") for i in range(3)]
            assert len(ns_names_with(lab.prefix)) == 4          # 3 hosts + switch
            procs = [h.popen(["sleep", "60"]) for h in hosts]
            sp = Proc(hosts[0], spawner)
            grandchild = int(sp.readline())                     # not tracked by the lab
            pids = [p.pid for p in procs] + [sp.proc.pid, grandchild]
            assert all(pid_alive(p) for p in pids)
            assert set(pids) <= set(lab.pids())
            raise RuntimeError("boom")
    assert lab.closed
    assert ns_names_with(lab.prefix) == []
    assert wait_pids_gone(pids, timeout=5) == []
    assert all(p.returncode is not None for p in procs)
    lab.close()                                                 # idempotent
    with pytest.raises(RuntimeError):
        hosts[0].popen(["true"])


def test_stale_namespaces_are_removed():
    reason = netns.check_available()
    if reason is not None:
        pytest.skip(f"network namespaces unavailable: {reason}")
    dead = subprocess.Popen(["true"])
    dead.wait()
    assert netns._pid_dead(dead.pid)
    stale = f"ppt{dead.pid}-x-y"
    subprocess.run(["ip", "netns", "add", stale], check=True, timeout=10)
    squatter = None
    try:
        squatter = subprocess.Popen(["ip", "netns", "exec", stale, "sleep", "60"],
                                    start_new_session=True)
        wait_for(lambda: squatter.pid in netns._ns_pids([stale]), 5, interval=0.01)
        with netns.Lab("stale") as lab:
            assert stale not in netns.list_namespaces()
            assert squatter.wait(timeout=5) == -signal.SIGKILL
            assert lab.switch in netns.list_namespaces()     # our own live lab is kept
    finally:
        if squatter is not None and squatter.poll() is None:
            squatter.kill()
            squatter.wait(timeout=5)
        subprocess.run(["ip", "netns", "del", stale], capture_output=True, timeout=10)
    assert ns_names_with(lab.prefix) == []
