#!/usr/bin/env python3
"""W7 — per-job dispatch cost as the cluster grows: W1 (20,000 jobs of
inc(x) = x + 1, submit all then collect all; jobs/s) through remote nodes
only, each node a bin/ppserver with 1 worker.

    python3 bench/scale.py [--repeat N] [--jobs N] [--skip-netns]

Two comparisons, each against its own anchor measured in the same command:

  loopback   the client names the nodes (ppservers=("127.0.0.1:p1", ...)):
             2 nodes (anchor) vs 32 nodes
  netns      every node is its own host (a network namespace on a bridged LAN,
             tests/py/netns.py) running ppserver -a; the client, in another
             namespace, finds them with ppservers=("*",): 2 discovered nodes
             (anchor) vs 16 discovered nodes. Needs root; skipped otherwise.

Target: the many-node figure within 1.5x of the anchor (ratio >= 0.667).
Each measurement runs in a fresh client process; repeats are interleaved
(anchor, many, anchor, many, ...) and the figures printed are medians. Every
result is checked. The machine has 2 cores, so with 32 nodes the client,
32 ppservers and 32 workers share them: the figure includes that contention.
"""
import argparse
import json
import os
import shlex
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PPSERVER = os.path.join(ROOT, "bin", "ppserver")
SECRET = "pp-bench-scale-secret"


def inc(x):
    return x + 1


def client_run(ppservers, want, jobs):
    """In a client process: connect (or discover) `want` nodes, run W1 through
    them, return {"jobs_per_s", "nodes"}."""
    import pp
    s = pp.Server(0, ppservers=ppservers, secret=SECRET)
    try:
        deadline = time.monotonic() + 60
        while len(s.get_active_nodes()) - 1 < want:
            if time.monotonic() > deadline:
                raise RuntimeError("only %d of %d nodes after 60 s"
                                   % (len(s.get_active_nodes()) - 1, want))
            time.sleep(0.05)
        for x in range(500):                 # warm-up: every node learns inc
            s.submit(inc, (x,))
        s.wait()
        t0 = time.perf_counter()
        js = [s.submit(inc, (x,)) for x in range(jobs)]
        res = [j() for j in js]
        dt = time.perf_counter() - t0
        if res != list(range(1, jobs + 1)):
            raise AssertionError("wrong results")
        used = sum(1 for k, st in s.get_stats().items() if k != "local" and st.njobs)
        return {"jobs_per_s": jobs / dt, "nodes": len(s.get_active_nodes()) - 1,
                "nodes_used": used}
    finally:
        s.destroy()


def child_cmd(ppservers, want, jobs):
    return [sys.executable, os.path.abspath(__file__), "--child",
            json.dumps({"ppservers": list(ppservers), "want": want, "jobs": jobs})]


def node_env():
    return dict(os.environ, PP_SECRET=SECRET, PYTHONPATH=os.path.join(ROOT, "python"))


def run_client(argv_prefix, ppservers, want, jobs, timeout=300):
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python"))
    r = subprocess.run(argv_prefix + child_cmd(ppservers, want, jobs), env=env,
                       capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError("client failed: %s" % r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


# ---- loopback: configured nodes ----------------------------------------------

def start_loopback_nodes(n):
    procs, names = [], []
    for _ in range(n):
        with socket.socket() as sk:
            sk.bind(("127.0.0.1", 0))
            port = sk.getsockname()[1]
        procs.append(subprocess.Popen(
            [PPSERVER, "-i", "127.0.0.1", "-p", str(port), "-w", "1",
             "--python", sys.executable], env=node_env(),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        names.append("127.0.0.1:%d" % port)
    return procs, names


def stop(procs):
    for p in procs:
        if p.poll() is None:
            p.kill()
    for p in procs:
        p.wait(10)


def loopback(counts, repeat, jobs):
    """{count: [jobs/s, ...]} with nodes started once per count."""
    out = {c: [] for c in counts}
    clusters = {}
    try:
        for c in counts:
            clusters[c] = start_loopback_nodes(c)
        for r in range(repeat):
            for c in counts:
                res = run_client([], clusters[c][1], c, jobs)
                out[c].append(res["jobs_per_s"])
                sys.stderr.write("  loopback %2d nodes rep %d: %.0f jobs/s (%d used)\n"
                                 % (c, r + 1, res["jobs_per_s"], res["nodes_used"]))
    finally:
        for procs, _ in clusters.values():
            stop(procs)
    return out


# ---- netns: discovered nodes --------------------------------------------------

def netns(counts, repeat, jobs):
    sys.path.insert(0, os.path.join(ROOT, "tests", "py"))
    import netns as nl
    reason = nl.check_available()
    if reason:
        return None, reason
    out = {c: [] for c in counts}
    with nl.Lab("bench") as lab:
        client = lab.add_host("client")
        for r in range(repeat):
            for c in counts:
                # a fresh LAN of c nodes per measurement: the client must see
                # exactly those (nodes of the other size are gone)
                hosts = [lab.add_host("r%dc%dn%d" % (r, c, i)) for i in range(c)]
                procs = [h.popen([PPSERVER, "-a", "-w", "1", "--announce-interval",
                                  "1", "--python", sys.executable], env=node_env(),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                         for h in hosts]
                try:
                    res = run_client(["ip", "netns", "exec", client.ns], ["*"], c, jobs)
                finally:
                    for h, p in zip(hosts, procs):
                        h.kill(p)
                        h.unplug()
                out[c].append(res["jobs_per_s"])
                sys.stderr.write("  netns    %2d nodes rep %d: %.0f jobs/s (%d used)\n"
                                 % (c, r + 1, res["jobs_per_s"], res["nodes_used"]))
    return out, None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=20_000)
    ap.add_argument("--skip-netns", action="store_true")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(client_run(tuple(spec["ppservers"]), spec["want"], spec["jobs"])))
        return 0
    if not os.path.exists(PPSERVER):
        sys.exit("bin/ppserver is not built (run make)")
    print("command : %s" % shlex.join([os.path.basename(sys.executable)] + sys.argv))
    print("cpus    : %s; loadavg at start %.2f %.2f %.2f" % ((os.cpu_count(),) + os.getloadavg()))
    print("W7: W1 (%s jobs of inc) through remote nodes of 1 worker each; medians of %d"
          % ("{:,}".format(args.jobs), args.repeat))
    print()
    rows = []
    lb = loopback((2, 32), args.repeat, args.jobs)
    rows.append(("loopback, configured", 2, 32, lb))
    if args.skip_netns:
        nn, why = None, "--skip-netns"
    else:
        nn, why = netns((2, 16), args.repeat, args.jobs)
    if nn is not None:
        rows.append(("netns, discovered", 2, 16, nn))
    print("%-22s %14s %14s %8s %s" % ("setup", "2 nodes jobs/s", "N nodes jobs/s",
                                      "ratio", "target >= 0.667 (within 1.5x)"))
    for label, a, b, d in rows:
        ma, mb = statistics.median(d[a]), statistics.median(d[b])
        print("%-22s %14s %14s %8.3f %s" % (
            label, "{:,.0f}".format(ma), "{:,.0f} (N={})".format(mb, b), mb / ma,
            "met" if mb / ma >= 1 / 1.5 else "NOT met"))
    if nn is None:
        print("netns, discovered: skipped (%s)" % why)
    return 0


if __name__ == "__main__":
    sys.exit(main())
