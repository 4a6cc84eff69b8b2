"""Auto-discovery across hosts: every host is a Linux network namespace on a
bridged LAN (netns.py); ppserver -a runs in several of them, the client
(netns_client.py, driven over a pipe) in another, with ppservers=("*",).
Checks: every node discovered; work spread over all of them; a node killed
and another started mid-run (every job still gets its one correct result,
the new node is used within two announcement intervals); a node that
vanishes from the network; a rogue announcer with the wrong secret never
gets a job; 16 discovered nodes. Needs root (CI runs as root): otherwise
every test here is skipped with the reason."""
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from helpers import LogPump, wait_for
from netns import lab_or_skip

ROOT = Path(__file__).resolve().parents[2]
PPSERVER = ROOT / "bin" / "ppserver"
CLIENT = Path(__file__).with_name("netns_client.py")
SECRET = "netns-cluster-secret"
INTERVAL = 0.5  # --announce-interval of the nodes, seconds

pytestmark = pytest.mark.skipif(not PPSERVER.exists(),
                                reason="bin/ppserver not built (make)")


class PPNode:
    """bin/ppserver -a in one host; its log collected."""

    def __init__(self, host, secret=SECRET, workers=1, extra=()):
        self.host = host
        env = dict(os.environ, PP_SECRET=secret, PYTHONPATH=str(ROOT / "python"))
        self.proc = host.popen(
            [PPSERVER, "-a", "-d", "-w", str(workers), "--announce-interval",
             str(INTERVAL), "--python", sys.executable] + list(extra),
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True, errors="replace")
        self.name = "%s:60000" % host.ip
        self.log_pump = LogPump(self.proc.stderr, "ppserver on %s" % self.name)

    def wait_log(self, pattern, timeout=10):
        return self.log_pump.wait_log(pattern, timeout)

    def log(self):
        return self.log_pump.text()

    def kill(self):
        self.host.kill(self.proc)


class Client:
    """netns_client.py in one host, one JSON answer per command."""

    def __init__(self, host, ppservers=("*",), ncpus=0, node_timeout=2.0):
        env = dict(os.environ, PYTHONPATH=str(ROOT / "python"))
        self.proc = host.popen(
            [sys.executable, CLIENT, SECRET, str(ncpus), str(node_timeout)]
            + list(ppservers), env=env, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            errors="replace", cwd=str(CLIENT.parent))
        self.answers = queue.Queue()
        self.log_pump = LogPump(self.proc.stderr, "client in %s" % host.name)
        threading.Thread(target=self._read, daemon=True).start()
        first = self._next(30)
        assert first.get("event") == "ready", first

    def _read(self):
        for line in self.proc.stdout:
            self.answers.put(line)
        self.answers.put(None)

    def _next(self, timeout):
        try:
            line = self.answers.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("client silent for %.0f s; its log:\n%s"
                                 % (timeout, self.log()[-3000:]))
        if line is None:
            raise AssertionError("client exited; its log:\n%s" % self.log()[-3000:])
        return json.loads(line)

    def cmd(self, line, timeout=60):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self._next(timeout)

    def log(self):
        return self.log_pump.text()

    def wait_done_on(self, node, k, timeout=30):
        """Wait until node has finished at least k of this client's jobs."""
        wait_for(lambda: self.cmd("stats")["stats"].get(node.name, 0) >= k, timeout,
                 what=self.log, interval=0.05)

    def close(self):
        try:
            self.cmd("quit", timeout=20)
        except (AssertionError, OSError, ValueError):
            pass


def test_all_nodes_discovered_and_used():
    with lab_or_skip("disc") as lab:
        nodes = [PPNode(lab.add_host("n%d" % i)) for i in range(3)]
        c = Client(lab.add_host("client"))
        a = c.cmd("wait_nodes 3 15")
        assert a["ok"], c.log()
        assert sorted(a["active"]) == sorted(n.name for n in nodes)
        assert all(v == 1 for v in a["active"].values())
        c.cmd("submit 60 0.05")
        r = c.cmd("collect 60")
        assert r["ok"] and r["n"] == 60, r
        a = c.cmd("stats")
        st = a["stats"]
        for n in nodes:
            assert st.get(n.name, 0) > 0, (n.name, st)
            # print_stats has a row for each discovered node, like a configured one
            assert re.search(r"^\s+%d \|.*\| %s$" % (st[n.name], re.escape(n.name)),
                             a["table"], re.M), a["table"]
        assert sum(st[n.name] for n in nodes) == 60
        # each node authenticated the client before it ran anything
        for n in nodes:
            n.wait_log("authenticated")
        c.close()


def test_node_killed_and_node_started_mid_run():
    with lab_or_skip("churn") as lab:
        n1, n2 = PPNode(lab.add_host("n1")), PPNode(lab.add_host("n2"))
        c = Client(lab.add_host("client"))
        assert c.cmd("wait_nodes 2 15")["ok"], c.log()
        c.cmd("submit 80 0.1")
        c.wait_done_on(n1, 2)
        n1.kill()  # its worker dies with it (PR_SET_PDEATHSIG)
        n3 = PPNode(lab.add_host("n3"))
        n3.wait_log("listening on")
        t0 = time.monotonic()
        a = c.cmd("wait_node %s 10" % n3.name)
        assert a["ok"], c.log()
        # announced at start-up: in use well within two intervals (plus the
        # time its worker takes to start, which the node reports in HELLO)
        assert time.monotonic() - t0 <= 2 * INTERVAL + 1.0, a
        assert n1.name not in a["active"]
        r = c.cmd("collect 60")
        assert r["ok"] and r["n"] == 80, (r, c.log()[-3000:])
        st = c.cmd("stats")["stats"]
        assert st.get(n3.name, 0) > 0 and st.get(n2.name, 0) > 0, st
        assert sum(st.get(n.name, 0) for n in (n1, n2, n3)) == 80, st
        assert "lost node %s" % n1.name in c.log()
        c.close()


def test_node_that_vanishes_from_the_network():
    """Unplugged (no FIN, no RST): heartbeats find it, its jobs run
    elsewhere, and it is not tried again while it does not announce."""
    with lab_or_skip("vanish") as lab:
        h1 = lab.add_host("n1")
        n1, n2 = PPNode(h1), PPNode(lab.add_host("n2"))
        c = Client(lab.add_host("client"), node_timeout=1.5)
        assert c.cmd("wait_nodes 2 15")["ok"], c.log()
        c.cmd("submit 40 0.1")
        c.wait_done_on(n1, 2)
        h1.unplug()
        r = c.cmd("collect 60")
        assert r["ok"] and r["n"] == 40, (r, c.log()[-3000:])
        assert "lost node %s (no answer to heartbeats)" % n1.name in c.log()
        a = c.cmd("stats")
        assert n1.name not in a["active"] and n2.name in a["active"]
        wait_for(lambda: "node %s stopped announcing" % n1.name in c.log(), 10,
                 what=c.log, interval=0.1)
        # back on the network: it announces again and is used again
        h1.plug()
        assert c.cmd("wait_node %s 10" % n1.name)["ok"], c.log()
        c.close()


def test_rogue_announcer_never_gets_a_job():
    with lab_or_skip("rogue") as lab:
        good = PPNode(lab.add_host("good"))
        rogue = PPNode(lab.add_host("rogue"), secret="not-the-secret")
        c = Client(lab.add_host("client"))
        assert c.cmd("wait_nodes 1 15")["ok"], c.log()
        rogue.wait_log("announcing port 60000")
        # the client has received and refused the rogue's announcements
        wait_for(lambda: re.search(r"discovery: ignored .* from %s" % re.escape(rogue.host.ip),
                                   c.log()), 10, what=c.log, interval=0.1)
        c.cmd("submit 30 0.01")
        assert c.cmd("collect 60")["ok"]
        st = c.cmd("stats")
        assert list(st["active"]) == [good.name]
        assert rogue.name not in st["stats"]
        assert st["stats"][good.name] == 30
        log = c.log()
        assert re.search(r"discovery: ignored \d+ announcement.*from %s.*bad signature"
                         % re.escape(rogue.host.ip), log), log
        assert "node %s" % rogue.name not in log
        # the rogue refused the datagrams signed with the real secret; nobody
        # connected to it
        # (the first one it logs may be the good node's announcement or the
        # client's query, whichever came first: both are under the other secret)
        rogue.wait_log(r"discovery: ignored .*bad signature")
        assert "connection from" not in rogue.log()  # -d logs every one
        assert "authenticated" not in rogue.log()
        c.close()


def test_sixteen_discovered_nodes():
    with lab_or_skip("scale") as lab:
        nodes = [PPNode(lab.add_host("n%d" % i)) for i in range(16)]
        c = Client(lab.add_host("client"))
        a = c.cmd("wait_nodes 16 60", timeout=90)
        assert a["ok"], (a, c.log()[-3000:])
        assert sorted(a["active"]) == sorted(n.name for n in nodes)
        c.cmd("submit 3200 0")
        r = c.cmd("collect 120", timeout=150)
        assert r["ok"] and r["n"] == 3200, r
        c.cmd("submit 64 0.05")
        assert c.cmd("collect 60")["ok"]
        st = c.cmd("stats")["stats"]
        assert sum(st.get(n.name, 0) for n in nodes) == 3264
        assert all(st.get(n.name, 0) > 0 for n in nodes), st
        c.close()
