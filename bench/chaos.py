#!/usr/bin/env python3
"""chaos.py — a long fault-injection run outside `make test` (`make chaos`).

One client sends --jobs jobs (default 1,000,000) over --local local workers
(default 2) and --nodes ppserver nodes on 127.0.0.1 (default 3, one worker
each) while, every --every seconds (default 2), a random local worker or
node is SIGKILLed (a node is restarted on the same port), and once, a node
is SIGSTOPped for --stop seconds (default 10). It checks that every job
gets exactly one correct result or one clear pp error, that no process is
left behind, and that the client's and the nodes' memory stays flat, and
prints the figures: jobs, kills, stops, retries (runs beyond the first),
errors, wrong results, wall time, RSS at the start and the end.

    PYTHONPATH=python python3 bench/chaos.py [--jobs N] [--seed S]
"""
import argparse
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "python"))
import pp  # noqa: E402

SECRET = "chaos-" + os.urandom(8).hex()


def f(x):
    return 2 * x + 1


def rss_kib(pid):
    try:
        with open("/proc/%d/status" % pid) as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid):
    """Pids whose parent is pid."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/stat" % d) as fh:
                    if int(fh.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    return out


def descendants(pid):
    out, todo = [], [pid]
    while todo:
        for c in children(todo.pop()):
            out.append(c)
            todo.append(c)
    return out


class Node:
    """A bin/ppserver on 127.0.0.1:port with one worker; restartable."""

    def __init__(self, port):
        self.port, self.proc = port, None

    def start(self):
        env = dict(os.environ, PP_SECRET=SECRET,
                   PYTHONPATH=os.path.join(ROOT, "python"))
        self.proc = subprocess.Popen(
            [os.path.join(ROOT, "bin", "ppserver"), "-i", "127.0.0.1", "-p", str(self.port),
             "-w", "1", "--python", sys.executable],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        raise RuntimeError("ppserver on port %d did not start" % self.port)

    def kill(self):
        tree = descendants(self.proc.pid)
        self.proc.kill()
        self.proc.wait(10)
        for p in tree:  # its workers follow it (they watch their parent)
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=1_000_000)
    ap.add_argument("--local", type=int, default=2)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--every", type=float, default=2.0)
    ap.add_argument("--stop", type=float, default=10.0)
    ap.add_argument("--batch", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=None)
    a = ap.parse_args()
    seed = a.seed if a.seed is not None else int.from_bytes(os.urandom(4), "little")
    rnd = random.Random(seed)
    nodes = [Node(free_port()) for _ in range(a.nodes)]
    for n in nodes:
        n.start()
    server = pp.Server(a.local, ppservers=tuple("127.0.0.1:%d" % n.port for n in nodes),
                       secret=SECRET, loglevel=50)
    me = os.getpid()
    node_pids = lambda: {n.proc.pid for n in nodes}  # noqa: E731
    counts = {"kills_local": 0, "kills_node": 0, "stops": 0}
    done = threading.Event()
    lock = threading.Lock()

    def stopper():
        """Once, after two kill intervals: SIGSTOP a node for a.stop s."""
        if done.wait(2 * a.every):
            return
        with lock:
            victim = rnd.choice(nodes)
            victim.stopped = True
            victim.proc.send_signal(signal.SIGSTOP)
            counts["stops"] += 1
        done.wait(a.stop)
        with lock:
            victim.proc.send_signal(signal.SIGCONT)
            victim.stopped = False

    def chaos():
        """Every a.every s: SIGKILL a random local worker or running node."""
        while not done.wait(a.every):
            with lock:
                if rnd.random() < 0.5:
                    workers = [p for p in children(me) if p not in node_pids()]
                    if workers:
                        try:
                            os.kill(rnd.choice(workers), signal.SIGKILL)
                            counts["kills_local"] += 1
                        except ProcessLookupError:
                            pass
                        continue
                running = [n for n in nodes if not getattr(n, "stopped", False)]
                victim = rnd.choice(running)
                victim.kill()
                counts["kills_node"] += 1
                victim.start()

    t0 = time.monotonic()
    rss0 = None
    ok = errors = wrong = retries = 0
    error_kinds = {}
    thread = threading.Thread(target=chaos, daemon=True)
    thread.start()
    thread2 = threading.Thread(target=stopper, daemon=True)
    thread2.start()
    try:
        for base in range(0, a.jobs, a.batch):
            n = min(a.batch, a.jobs - base)
            jobs = [server.submit(f, (base + i,)) for i in range(n)]
            for i, j in enumerate(jobs):
                try:
                    v = j.result(timeout=300)
                except pp.PPError as e:
                    errors += 1
                    error_kinds[type(e).__name__] = error_kinds.get(type(e).__name__, 0) + 1
                    continue
                if v == 2 * (base + i) + 1:
                    ok += 1
                else:
                    wrong += 1
                retries += max(0, (getattr(j, "attempts", 1) or 1) - 1)
            if rss0 is None:
                rss0 = (rss_kib(me), sum(rss_kib(n.proc.pid) for n in nodes))
    finally:
        done.set()
        thread.join(30)
        thread2.join(30)
        wall = time.monotonic() - t0
        rss1 = (rss_kib(me), sum(rss_kib(n.proc.pid) for n in nodes))
        server.destroy()
        for n in nodes:
            n.stop()
    time.sleep(0.5)
    left = descendants(me)
    print("chaos run (seed %d): %d jobs, %d local workers, %d nodes (1 worker each)"
          % (seed, a.jobs, a.local, a.nodes))
    print("  kills: %d local workers, %d nodes (restarted on their port); %d SIGSTOP of %.0f s"
          % (counts["kills_local"], counts["kills_node"], counts["stops"], a.stop))
    print("  results: %d correct, %d wrong, %d clear errors %s; %d runs beyond the first"
          % (ok, wrong, errors, error_kinds or "", retries))
    print("  every job answered once: %s; processes left behind: %d"
          % ("yes" if ok + errors == a.jobs else "NO", len(left)))
    if rss0:
        print("  RSS client %.0f -> %.0f MiB, nodes (sum) %.0f -> %.0f MiB; wall %.1f s (%.0f jobs/s)"
              % (rss0[0] / 1024, rss1[0] / 1024, rss0[1] / 1024, rss1[1] / 1024, wall,
                 a.jobs / wall))
    bad = wrong or ok + errors != a.jobs or left
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
