#!/usr/bin/env python3
"""Stop latencies of job control, locally and on a loopback ppserver.

    PYTHONPATH=python python3 bench/jobcontrol.py [--n 20]

  timeout  a job that writes its start time (wall clock) to a file and then
           spins, submitted with timeout=0.3: latency = the moment job()
           raises JobTimeoutError - (its start + 0.3 s)
  abort    a job blocked in time.sleep: latency = the moment job() raises
           JobAbortedError - the moment job.abort() was called

Each is measured n times (default 20) with 2 local workers, and with a
2-worker `bin/ppserver` on 127.0.0.1 (remote only); the median and the worst
are printed, in milliseconds. The workers are warm (a job ran first)."""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "python"))

import pp  # noqa: E402

SECRET = "bench-jobcontrol-secret"
TIMEOUT = 0.3


def spin_after_mark(path):
    import time
    open(path, "w").write(repr(time.time()))
    while True:
        pass


def nap(t):
    import time
    time.sleep(t)


def inc(x):
    return x + 1


def start_node(workers=2):
    env = dict(os.environ, PP_SECRET=SECRET,
               PYTHONPATH=os.path.join(REPO, "python"))
    p = subprocess.Popen([os.path.join(REPO, "bin", "ppserver"), "-i",
                          "127.0.0.1", "-p", "0", "-w", str(workers), "--python",
                          sys.executable], env=env, stderr=subprocess.PIPE,
                         text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = p.stderr.readline()
        if not line:
            break
        if "listening on" in line:
            addr = line.split("listening on ")[1].split()[0]
            return p, addr
    p.kill()
    raise RuntimeError("ppserver did not start")


def measure(server, n, tmp):
    server.submit(inc, (1,))()
    tlat, alat = [], []
    for i in range(n):
        mark = os.path.join(tmp, "start-%d" % i)
        job = server.submit(spin_after_mark, (mark,), timeout=TIMEOUT)
        try:
            job()
        except pp.JobTimeoutError:
            t_fail = time.time()
        start = float(open(mark).read())
        tlat.append((t_fail - (start + TIMEOUT)) * 1000)
    for i in range(n):
        job = server.submit(nap, (1e9,), (), ("time",))
        while not job.running():
            time.sleep(0.005)
        time.sleep(0.05)
        t0 = time.time()
        job.abort(grace=2.0)
        try:
            job()
        except pp.JobAbortedError:
            alat.append((time.time() - t0) * 1000)
    return tlat, alat


def show(label, xs):
    print("  %-22s median %7.1f ms   worst %7.1f ms   (n=%d)"
          % (label, statistics.median(xs), max(xs), len(xs)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="ppbench-")
    print("job control stop latency (timeout %.1f s; abort of a job in time.sleep)"
          % TIMEOUT)
    with pp.Server(2) as s:
        t, ab = measure(s, a.n, tmp)
    show("local timeout", t)
    show("local abort", ab)
    node, addr = start_node()
    try:
        with pp.Server(0, ppservers=(addr,), secret=SECRET) as s:
            t, ab = measure(s, a.n, tmp)
        show("node timeout", t)
        show("node abort", ab)
    finally:
        node.kill()
        node.wait()
    print("loadavg %.2f %.2f %.2f" % os.getloadavg())


if __name__ == "__main__":
    main()
