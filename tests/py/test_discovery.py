"""Auto-discovery on one host, from the client's side: pp.Server(ppservers=
("*:port",)) fed with announcement datagrams that the test signs itself (so
every field, the secret and the clock can be chosen), against real
bin/ppserver nodes on 127.0.0.1. Multi-host discovery with ppserver -a
broadcasting across network namespaces is in test_netns_cluster.py."""
import io
import json
import logging
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import pp
import ppwire
from helpers import SECRET, free_port, holds, needs_ppserver, settled, wait_for
from test_cluster import square

pytestmark = needs_ppserver


def free_udp_port():
    return free_port("udp")


class Announcer:
    """Sends signed announcements to the client's discovery port."""

    def __init__(self, port):
        self.port = port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def send(self, datagram):
        self.sock.sendto(datagram, ("127.0.0.1", self.port))

    def announce(self, tcp_port, secret=SECRET, **kw):
        kw.setdefault("interval_ms", 200)
        d = ppwire.disco_datagram(secret, ppwire.DISCO_ANNOUNCE, port=tcp_port, **kw)
        self.send(d)
        return d

    def close(self):
        self.sock.close()


@pytest.fixture
def client():
    """(server, log buffer, announcer) for a client discovering on a free port."""
    made = []

    def make(ncpus=0, **kw):
        port = free_udp_port()
        buf = io.StringIO()
        s = pp.Server(ncpus, ppservers=("*:%d" % port,), secret=SECRET,
                      logstream=buf, loglevel=logging.INFO, **kw)
        a = Announcer(port)
        made.append((s, a))
        return s, buf, a
    yield make
    for s, a in made:
        s.destroy()
        a.close()


@pytest.fixture
def node(ppserver):
    return ppserver


def test_star_entries_are_checked():
    with pytest.raises(ValueError, match="secret"):
        pp.Server(0, ppservers=("*",))
    for bad in ("*:0", "*:x", "*:70000"):
        with pytest.raises(ValueError, match="port"):
            pp.Server(0, ppservers=(bad,), secret="s")
    with pp.Server(0, ppservers=("*", "*:%d" % free_udp_port()), secret="s") as s:
        assert s.ppservers[0] == "*" and s.ppservers[1].startswith("*:")
        assert s.get_active_nodes() == {"local": 0}


def test_announced_node_is_found_and_used(client, node):
    n = node(workers=2)
    s, buf, a = client()
    name = "127.0.0.1:%d" % n.port
    wait_for(lambda: name in s.get_active_nodes(), 10, every=lambda: a.announce(n.port),
             interval=0.1, what=buf.getvalue)
    assert s.get_active_nodes()[name] == 2
    jobs = [s.submit(square, (i,)) for i in range(50)]
    assert [j() for j in jobs] == [i * i for i in range(50)]
    assert s.get_stats()[name].njobs == 50
    log = buf.getvalue()
    assert "discovered node %s" % name in log
    assert log.count("discovered node") == 1  # repeats update, not duplicate


def test_announcement_address_field_wins_over_source(client, node):
    n = node()
    s, buf, a = client()
    # sent from 127.0.0.1, but names 127.0.0.2 (also this host) as the node
    name = "127.0.0.2:%d" % n.port
    wait_for(lambda: any(k.startswith("127.0.0.2:") for k in s.get_stats()), 10,
             every=lambda: a.announce(n.port, addr="127.0.0.2"), interval=0.1,
             what=buf.getvalue)
    # the node listens on 127.0.0.1 only, so this is a failed connect
    wait_for(lambda: "cannot use node %s" % name in buf.getvalue(), 10, what=buf.getvalue)


def test_bad_announcements_are_ignored(client, node):
    n = node()
    s, buf, a = client()
    now = int(time.time() * 1000)
    bad = [ppwire.disco_datagram("another secret", ppwire.DISCO_ANNOUNCE, port=n.port),
           ppwire.disco_datagram(SECRET, ppwire.DISCO_ANNOUNCE, port=n.port,
                                 time_ms=now - 60000),
           ppwire.disco_datagram(SECRET, ppwire.DISCO_ANNOUNCE, port=n.port,
                                 time_ms=now + 60000),
           ppwire.disco_datagram(SECRET, ppwire.DISCO_ANNOUNCE, port=n.port)[:-1],
           ppwire.disco_datagram(SECRET, ppwire.DISCO_ANNOUNCE, port=n.port,
                                 version=2),
           ppwire.disco_datagram(SECRET, ppwire.DISCO_ANNOUNCE, port=0),
           b"\x00" * 52, b"x" * 2000]
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:  # a stream of bad datagrams for 1.5 s
        for d in bad:
            a.send(d)
        time.sleep(0.1)
    assert s.get_active_nodes() == {"local": 0}
    assert list(s.get_stats()) == ["local"]
    log = buf.getvalue()
    assert "discovery: ignored" in log and "bad signature" in log
    assert "discovered" not in log
    # the same node, announced properly, is found
    name = "127.0.0.1:%d" % n.port
    wait_for(lambda: name in s.get_active_nodes(), 10, every=lambda: a.announce(n.port),
             interval=0.1, what=buf.getvalue)


def test_forged_announcement_costs_one_failed_connect(client):
    """A validly signed announcement for an address where no node listens
    (a replayed one, say): a logged failed connect, jobs run elsewhere, and
    replaying the very same datagram changes nothing."""
    s, buf, a = client(ncpus=1)
    dead = free_udp_port()  # nothing listens on this TCP port
    name = "127.0.0.1:%d" % dead
    d = a.announce(dead)
    wait_for(lambda: "cannot use node %s" % name in buf.getvalue(), 10,
             every=lambda: a.send(d), interval=0.1, what=buf.getvalue)
    jobs = [s.submit(square, (i,)) for i in range(20)]
    assert [j() for j in jobs] == [i * i for i in range(20)]
    assert s.get_stats()[name].njobs == 0
    assert name not in s.get_active_nodes()
    for _ in range(5):
        a.send(d)  # a replay: not newer than what was seen
    assert holds(lambda: buf.getvalue().count("discovered node") == 1, 0.5), buf.getvalue()
    # it stops announcing: the client stops trying after 3 intervals
    wait_for(lambda: "node %s stopped announcing" % name in buf.getvalue(), 10,
             what=buf.getvalue)

    def tries():
        return buf.getvalue().count("cannot use node %s" % name)
    n = settled(tries, quiet=1.0, timeout=10)
    assert holds(lambda: tries() == n, 1.5), buf.getvalue()



class FakeNode:
    """An attacker's listener on 127.0.0.9: it records every byte a client
    sends, answers a plain HELLO with a CHALLENGE of its own (it cannot do
    more without the secret), and closes a connection 2 s after its last
    byte."""

    def __init__(self):
        self.lst = socket.socket()
        self.lst.bind(("127.0.0.9", 0))
        self.lst.listen(8)
        self.lst.settimeout(0.2)
        self.port = self.lst.getsockname()[1]
        self.conns = []  # bytes received, per connection
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        deadline = time.monotonic() + 60
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                c, _ = self.lst.accept()
            except OSError:
                continue
            got = bytearray()
            self.conns.append(got)
            c.settimeout(2)
            answered = False
            try:
                while time.monotonic() < deadline:
                    b = c.recv(65536)
                    if not b:
                        break
                    got += b
                    if not answered and len(got) >= ppwire.HDR_LEN + 36 and \
                            ppwire.HDR.unpack(bytes(got[:ppwire.HDR_LEN]))[2] == ppwire.AUTH_HELLO:
                        c.sendall(ppwire.frame(ppwire.AUTH_CHALLENGE,
                                               struct.pack("<I", 1) + os.urandom(32)))
                        answered = True
            except OSError:
                pass
            c.close()

    def close(self):
        self.stop.set()
        self.thread.join(10)
        self.lst.close()


def test_relayed_announcement_costs_one_failed_connect(client):
    """A node's announcement relayed from the attacker's own address (its
    address field is empty, so the client connects to the source; on one
    host every local source counts as 127.0.0.1, so the datagram names the
    attacker's address in its field, which has the same effect): the
    client connects there, the attacker learns a handshake proof at most
    (whose offline check costs a scrypt run per guess, docs/protocol.md 6.1)
    and never a byte of a job; the client logs the failed connect and runs
    its jobs on its own workers."""
    s, buf, a = client(ncpus=1)
    fake = FakeNode()
    try:
        d = ppwire.disco_datagram(SECRET, ppwire.DISCO_ANNOUNCE, port=fake.port,
                                  addr="127.0.0.9", interval_ms=200)
        relay = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        relay.bind(("127.0.0.9", 0))
        name = "127.0.0.9:%d" % fake.port
        try:
            wait_for(lambda: "cannot use node %s" % name in buf.getvalue(), 20,
                     every=lambda: relay.sendto(d, ("127.0.0.1", a.port)),
                     interval=0.2, what=buf.getvalue)
        finally:
            relay.close()
        jobs = [s.submit(square, (i,)) for i in range(20)]
        assert [j() for j in jobs] == [i * i for i in range(20)]
        assert s.get_stats()[name].njobs == 0
        assert name not in s.get_active_nodes()
    finally:
        fake.close()
    assert fake.conns, "the client never connected to the relayed address"
    for got in fake.conns:
        assert len(got) < 4096, len(got)  # a handshake, nothing more
        assert b"square" not in got



def test_subnet_entry_uses_only_nodes_of_that_subnet(node):
    """pp 1.x's subnet entries: ppservers=("127.0.0.*:P",) discovers on UDP
    port P (also asking that subnet's broadcast address) and uses only
    nodes whose address is in 127.0.0.0/24."""
    port = free_udp_port()
    buf = io.StringIO()
    s = pp.Server(0, ppservers=("127.0.0.*:%d" % port,), secret=SECRET,
                  logstream=buf, loglevel=logging.INFO)
    a = Announcer(port)
    try:
        assert s.ppservers == ("127.0.0.*:%d" % port,)
        n = node()
        for _ in range(5):  # the same node, announced at an address outside
            a.announce(n.port, addr="127.0.1.1")
            time.sleep(0.05)
        assert holds(lambda: "discovered node" not in buf.getvalue(), 0.5), buf.getvalue()
        name = "127.0.0.1:%d" % n.port
        wait_for(lambda: name in s.get_active_nodes(), 10,
                 every=lambda: a.announce(n.port, addr="127.0.0.1"), interval=0.1,
                 what=buf.getvalue)
        assert s.submit(square, (7,))() == 49
        assert "127.0.1.1" not in buf.getvalue()
    finally:
        s.destroy()
        a.close()
    with pytest.raises(ValueError):
        pp.Server(0, ppservers=("127.0.*.1",), secret=SECRET)


def test_node_announced_later_is_used_mid_run(client, node):
    """Jobs queued with no capacity start once a node is announced."""
    n = node(workers=1)
    s, buf, a = client()
    jobs = [s.submit(square, (i,)) for i in range(10)]
    assert holds(lambda: not any(j.done() for j in jobs), 0.5)
    a.announce(n.port)
    assert [j.result(timeout=30) for j in jobs] == [i * i for i in range(10)]


# ---------------------------------------------------------------------------
# defect: a discovery port that cannot be bound crashed the interpreter

FIRST_PORT_TAKEN = r"""
import io, json, logging, socket, sys, time
sys.path[:0] = [sys.argv[1], sys.argv[2]]
import pp, ppwire
node_port = int(sys.argv[3])
holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
holder.bind(("0.0.0.0", 0))            # UDP P, held without SO_REUSEADDR
P = holder.getsockname()[1]
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
    u.bind(("127.0.0.1", 0))
    Q = u.getsockname()[1]
buf = io.StringIO()
s = pp.Server(1, ppservers=("*:%d" % P, "*:%d" % Q), secret="x",
              logstream=buf, loglevel=logging.INFO)
name = "127.0.0.1:%d" % node_port
tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
deadline = time.monotonic() + 10
while name not in s.get_active_nodes() and time.monotonic() < deadline:
    tx.sendto(ppwire.disco_datagram("x", ppwire.DISCO_ANNOUNCE, port=node_port,
                                    interval_ms=200), ("127.0.0.1", Q))
    time.sleep(0.05)
found = name in s.get_active_nodes()
result = s.submit(pow, (3, 4)).result(timeout=30)
s.destroy()
print(json.dumps({"P": P, "found": found, "result": result, "log": buf.getvalue()}))
"""


def test_first_discovery_port_taken_does_not_crash(node):
    """pp.Server(1, ppservers=("*:P", "*:Q"), secret="x") while another
    socket holds UDP P used to abort the interpreter (a libuv assertion in
    uv__finish_close: the failed handle's memory was reused for Q before its
    close callback ran). Run in a child process, so a crash is a failure
    here and not the end of the test run."""
    n = node(secret="x")
    here = str(Path(__file__).resolve().parent)
    r = subprocess.run([sys.executable, "-c", FIRST_PORT_TAKEN,
                        str(Path(pp.__file__).resolve().parents[1]), here,
                        str(n.port)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["result"] == 81
    assert out["found"], out["log"]  # the other port still discovers
    assert re.search(r"WARNING discovery: cannot listen on UDP port %d: "
                     r"address already in use" % out["P"], out["log"]), out["log"]


# ---------------------------------------------------------------------------
# defect: a node started after the client's start-up queries, on one host,
# was never found (its announcement went to 127.0.0.1, unicast, and landed on
# its own socket; with -i 127.0.0.1 it had no broadcast address at all)

LATE = Path(__file__).with_name("disco_late_node.py")
LATE_INTERVAL = 0.5
# the node must be in use within two announcement intervals; the slack is
# for the node's worker to start and the job's round trip
LATE_CONNECT_S = 2 * LATE_INTERVAL
LATE_JOB_S = 2 * LATE_INTERVAL + 1.5


def run_late_node(args, netns=False):
    """Run disco_late_node.py with ppserver ARGS (in a fresh namespace with
    only lo when netns); check the node was in use in time; its output."""
    prefix = ["unshare", "-n", "--"] if netns else []
    opts = ["--lo-up"] if netns else []
    r = subprocess.run(prefix + [sys.executable, str(LATE), "--interval",
                                 str(LATE_INTERVAL)] + opts + ["--"] + list(args),
                       capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    logs = "client:\n%s\nnode:\n%s" % (out["client_log"], out["node_log"])
    assert out["ready_s"] > 3.0  # after the client's last start-up query
    assert out["connected_s"] is not None, logs
    assert out["connected_s"] <= LATE_CONNECT_S, (out["connected_s"], logs)
    assert out["job_s"] is not None and out["job_s"] <= LATE_JOB_S, (out["job_s"], logs)
    assert out["name"].startswith("127.0.0.1:"), out["name"]
    assert out["client_log"].count("discovered node") == 1, logs  # one name
    return out


def test_late_node_with_interface_is_found():
    """ppserver -a -i 127.0.0.1 started 3.5 s after the client."""
    run_late_node(["-i", "127.0.0.1"])


def test_late_node_with_broadcast_to_this_host_is_found():
    """ppserver -a -i 127.0.0.1 -b 127.0.0.1 started 3.5 s after the client:
    an address of this host as -b is announced to by loopback broadcast."""
    out = run_late_node(["-i", "127.0.0.1", "-b", "127.0.0.1"])
    assert "announcing port" in out["node_log"]
    assert "127.0.0.1 via 127.255.255.255" in out["node_log"]


def _netns_usable():
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    return subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _netns_usable(), reason="needs root and unshare -n")
def test_late_node_on_a_host_without_lan_is_found():
    """ppserver -a (neither -i nor -b, so listening on 0.0.0.0) started 3.5 s
    after the client, in a network namespace that has only lo: with no LAN
    broadcast address the node announces to the loopback broadcast."""
    out = run_late_node([], netns=True)
    assert "announcing port" in out["node_log"]
    assert "to 127.255.255.255" in out["node_log"]
