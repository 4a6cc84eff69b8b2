#!/usr/bin/env python3
"""Benchmark pp against multiprocessing.Pool and concurrent.futures.ProcessPoolExecutor.

    python3 bench/bench.py [--quick] [--only W1,W2,...] [--repeat N] [--json out.json]

Run from the repository root with the package on the path, e.g.

    PYTHONPATH=python python3 bench/bench.py --quick

Every system uses 2 local workers.  Workloads (pp targets in brackets):

  W1   20,000 jobs of inc(x) = x + 1: submit all, then collect all; jobs/s
       [>= 200,000 jobs/s and >= 6x multiprocessing.Pool]
       "W1 futures": the same with pp's bare job type (pp._core.Job, not a
       concurrent.futures.Future) measured in the same run ("ppbare"); the
       ratio bare/pp.Job is what making jobs futures costs [<= 1.05]
  "W1 capture", "W2 capture": W1 and W2 with output="inherit" ("ppinherit")
       in the same run as the default output="echo" (every job's stdout and
       stderr captured): the jobs/s ratio inherit/echo [<= 1.05] and the
       median round-trip difference
  W2   2,000 sequential round trips (submit one, wait for its result); us per trip,
       median and mean of the per-trip times [<= 15 us]
  W3   sum_primes(n) for n in range(100000, 100800, 100), 4 times over (32 jobs);
       efficiency = serial time / (2 * 2-worker wall time) [>= 0.97]; the serial
       time of the same 32 calls is measured in the same child right before the
       parallel run, and the efficiency reported is the median of these pairs
  W4   200 jobs, each given a distinct 1 MiB bytes object, returning len(); MiB/s
       [>= 3,000 MiB/s and >= 3x Pool]  (3 batches of 200 per child, 2 with --quick, after a warm-up)
  W5   server creation to first result of a trivial job, then destroy; ms [<= 20 ms];
       pp.Server(start_method="spawn") ("ppspawn") in the same run is the anchor
       (pp's default forks its workers from a fork server)
  RS   respawn: 1 worker, max_retries=0; a job that writes time.monotonic() to a
       file and os._exit()s, with a trivial job queued right behind it; the time
       from the crash (the written stamp) to the trivial job's result in the
       client, i.e. the crash noticed, a replacement started, the job shipped, run
       and returned; ms, 10 crashes per child after a warm-up [<= 5 ms]; pp (fork
       server) and ppspawn (fresh interpreters) in the same run
  MEM  1,000,000 trivial jobs (100,000 with --quick) submitted and collected in batches
       of 10,000 after one warm-up batch; growth of the client's VmRSS [<= 50 MB]
  MAP  Server.map over 1,000,000 trivial items against Pool.map (items/s, three maps
       per child) [>= Pool], and map over 40 items of 4 ms each (wall s); "ppfixed"
       (same run) is pp with the fixed chunks it used before (ceil(n / (4 * workers)),
       Pool's rule): the long-items wall ratio new/old [<= 1.05]. PPE is left out
       (its map sends every item as a task of its own).
  W6   pp only, through bin/ppserver on 127.0.0.1: remote-only W1 with a 2-worker
       node [>= 100,000 jobs/s], remote-only W2 [<= 60 us], and W3 with 1 local
       worker + a 1-worker node [efficiency >= 0.95]. Remote W1, W2 and W4 (200 x
       1 MiB) run twice on the same node in the same child: over TLS (the default)
       and with tls=False; TLS may cost W1 at most 25 % and W2 at most 20 us.

Isolation and noise: each (workload, system, repeat) runs in a fresh child process
(this same file, started with --child), in its own session, with a time limit; a child
that overruns is killed with its whole process group and reported as TIMEOUT, so a hang
cannot stall the benchmark.  Repeats are interleaved across systems (the order rotates
each repeat) and every figure printed is the MEDIAN over the repeats; ratios are computed
from medians measured in the same run.  Results are checked for correctness.
"""

import argparse
import gc
import json
import math
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time

perf_counter = time.perf_counter

# --------------------------------------------------------------------------------------
# Job functions.  They live at module top level so that all three systems can use them:
# multiprocessing (fork start method) finds them in __main__, pp ships their source.
# --------------------------------------------------------------------------------------


def inc(x):
    return x + 1


def isprime(n):
    """Returns True if n is prime and False otherwise"""
    if not isinstance(n, int):
        raise TypeError("argument passed to is_prime is not of 'int' type")
    if n < 2:
        return False
    if n == 2:
        return True
    max = int(math.ceil(math.sqrt(n)))
    i = 2
    while i <= max:
        if n % i == 0:
            return False
        i += 1
    return True


def sum_primes(n):
    """Calculates sum of all primes below given integer n"""
    return sum([x for x in range(2, n) if isprime(x)])


def blob_len(b):
    return len(b)


# --------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------

NWORKERS = 2
MiB = 1 << 20

W1_JOBS = 20_000
W2_TRIPS = 2_000
W3_INPUTS = list(range(100000, 100800, 100)) * 4          # 32 jobs
W4_JOBS = 200
W4_SIZE = MiB
MEM_BATCH = 10_000

W6_SECRET = "pp-bench-loopback-secret"
MAP_ITEMS = 1_000_000
MAP_LONG = (40, 4.0)                                       # 40 items of 4 ms each
WORKLOADS = ("W1", "W2", "W3", "W4", "W5", "RS", "MEM", "W6", "MAP")
SYSTEMS = ("pp", "pool", "ppe")
SYSTEM_LABEL = {"pp": "pp", "pool": "Pool", "ppe": "PPE", "ppbare": "ppbare",
                "ppinherit": "ppinherit", "ppfixed": "ppfixed", "ppspawn": "ppspawn"}
PP_SYSTEMS = ("pp", "ppbare", "ppinherit", "ppfixed", "ppspawn")

# per-child time limits in seconds (before --timeout-scale)
TIMEOUTS = {"W1": 120, "W2": 90, "W3": 120, "W4": 120, "W5": 120, "RS": 120,
            "MEM": 900, "W6": 300, "MAP": 180}


def rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


# --------------------------------------------------------------------------------------
# System adapters (child side).  Hot loops are written out per system below so that no
# extra Python call sits between the benchmark and the system's own API.
# --------------------------------------------------------------------------------------


def start_system(name):
    if name == "pp":
        import pp
        return pp.Server(NWORKERS)
    if name == "ppbare":  # jobs of the bare C type: W1's anchor for pp.Job's cost
        import pp

        class BareServer(pp.Server):
            _job_type = pp._core.Job
        return BareServer(NWORKERS)
    if name == "ppinherit":  # output="inherit": W1/W2's anchor for capture's cost
        import pp
        return pp.Server(NWORKERS, output="inherit")
    if name == "ppspawn":  # fresh interpreters: W5's and RS's anchor
        import pp
        return pp.Server(NWORKERS, start_method="spawn")
    if name == "pool":
        import multiprocessing
        return multiprocessing.Pool(NWORKERS)
    if name == "ppe":
        import concurrent.futures
        return concurrent.futures.ProcessPoolExecutor(max_workers=NWORKERS)
    raise ValueError(name)


def stop_system(name, h):
    if name in PP_SYSTEMS:
        h.destroy()
    elif name == "pool":
        h.terminate()
        h.join()
    elif name == "ppe":
        h.shutdown(wait=True)


def run_batch(name, h, func, arglist, depfuncs=(), modules=()):
    """Submit func(*args) for every args in arglist, then collect all results in order."""
    if name in ("pp", "ppbare", "ppinherit"):
        submit = h.submit
        if depfuncs or modules:
            jobs = [submit(func, a, depfuncs, modules) for a in arglist]
        else:
            jobs = [submit(func, a) for a in arglist]
        t_sub = perf_counter()
        res = [j() for j in jobs]
    elif name == "pool":
        submit = h.apply_async
        jobs = [submit(func, a) for a in arglist]
        t_sub = perf_counter()
        res = [j.get() for j in jobs]
    elif name == "ppe":
        submit = h.submit
        jobs = [submit(func, *a) for a in arglist]
        t_sub = perf_counter()
        res = [j.result() for j in jobs]
    else:
        raise ValueError(name)
    return res, t_sub


# --------------------------------------------------------------------------------------
# Workloads (child side).  Each returns a list of samples (dicts of metrics).
# --------------------------------------------------------------------------------------


def child_w1(name, p):
    n = p["w1_jobs"]
    h = start_system(name)
    try:
        run_batch(name, h, inc, [(x,) for x in range(200)])            # warm-up
        args = [(x,) for x in range(n)]
        gc.collect()
        t0 = perf_counter()
        res, t_sub = run_batch(name, h, inc, args)
        t1 = perf_counter()
        if res != list(range(1, n + 1)):
            bad = next(i for i, r in enumerate(res) if r != i + 1)
            raise AssertionError("W1 wrong result: job %d returned %r, expected %r"
                                 % (bad, res[bad], bad + 1))
    finally:
        stop_system(name, h)
    return [{"jobs_per_s": n / (t1 - t0), "elapsed_s": t1 - t0,
             "submit_s": t_sub - t0, "collect_s": t1 - t_sub}]


def child_w2(name, p):
    n = p["w2_trips"]
    h = start_system(name)
    times = [0.0] * n
    try:
        if name in ("pp", "ppinherit"):
            submit = h.submit
            for x in range(100):                                       # warm-up
                submit(inc, (x,))()
            gc.collect()
            for x in range(n):
                t0 = perf_counter()
                r = submit(inc, (x,))()
                times[x] = perf_counter() - t0
                if r != x + 1:
                    raise AssertionError("W2 wrong result: inc(%d) -> %r" % (x, r))
        elif name == "pool":
            submit = h.apply_async
            for x in range(100):
                submit(inc, (x,)).get()
            gc.collect()
            for x in range(n):
                t0 = perf_counter()
                r = submit(inc, (x,)).get()
                times[x] = perf_counter() - t0
                if r != x + 1:
                    raise AssertionError("W2 wrong result: inc(%d) -> %r" % (x, r))
        else:
            submit = h.submit
            for x in range(100):
                submit(inc, x).result()
            gc.collect()
            for x in range(n):
                t0 = perf_counter()
                r = submit(inc, x).result()
                times[x] = perf_counter() - t0
                if r != x + 1:
                    raise AssertionError("W2 wrong result: inc(%d) -> %r" % (x, r))
    finally:
        stop_system(name, h)
    us = sorted(t * 1e6 for t in times)
    return [{"median_us": statistics.median(us), "mean_us": statistics.fmean(us),
             "p90_us": us[int(0.9 * (n - 1))], "p99_us": us[int(0.99 * (n - 1))],
             "min_us": us[0], "max_us": us[-1]}]


def child_w3(name, p):
    inputs = W3_INPUTS
    # serial reference in this same process, right before the parallel run, so that
    # the pair sees the same machine conditions
    sum_primes(1000)                                                   # warm-up
    gc.collect()
    t0 = perf_counter()
    ref = [sum_primes(n) for n in inputs]
    serial = perf_counter() - t0
    h = start_system(name)
    try:
        run_batch(name, h, sum_primes, [(1000,), (1001,)], (isprime,), ("math",))  # warm-up
        gc.collect()
        t0 = perf_counter()
        res, _ = run_batch(name, h, sum_primes, [(n,) for n in inputs], (isprime,), ("math",))
        t1 = perf_counter()
    finally:
        stop_system(name, h)
    if res != ref:
        bad = next(i for i in range(len(ref)) if res[i] != ref[i])
        raise AssertionError("W3 wrong result: sum_primes(%d) -> %r, expected %r"
                             % (inputs[bad], res[bad], ref[bad]))
    wall = t1 - t0
    return [{"wall_s": wall, "serial_s": serial,
             "efficiency": serial / (NWORKERS * wall)}]


def child_w4(name, p):
    nj, size, inner = p["w4_jobs"], p["w4_size"], p["w4_inner"]
    base = os.urandom(size)
    h = start_system(name)
    samples = []
    try:
        run_batch(name, h, blob_len, [(base,)] * 4)                   # warm-up, full size
        for k in range(inner):
            # distinct objects with distinct contents, built before timing
            blobs = [(k * nj + i).to_bytes(8, "little") + base[8:] for i in range(nj)]
            gc.collect()
            t0 = perf_counter()
            res, t_sub = run_batch(name, h, blob_len, [(b,) for b in blobs])
            t1 = perf_counter()
            if res != [size] * nj:
                raise AssertionError("W4 wrong results: %r" % (sorted(set(res))[:5],))
            del blobs, res
            samples.append({"mib_per_s": nj * size / MiB / (t1 - t0),
                            "elapsed_s": t1 - t0, "submit_s": t_sub - t0})
    finally:
        stop_system(name, h)
    return samples


def start_node(workers):
    """A bin/ppserver on 127.0.0.1 for W6; returns (Popen, "host:port")."""
    import pp
    import socket
    import subprocess
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(pp.__file__))))
    exe = os.path.join(root, "bin", "ppserver")
    if not os.path.exists(exe):
        raise RuntimeError("bin/ppserver is not built (run make)")
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    env = dict(os.environ, PP_SECRET=W6_SECRET, PYTHONPATH=os.path.join(root, "python"))
    proc = subprocess.Popen([exe, "-i", "127.0.0.1", "-p", str(port), "-w", str(workers),
                             "--python", sys.executable], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc, "127.0.0.1:%d" % port
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("ppserver did not start")
            time.sleep(0.05)


def child_w6(name, p):
    """pp only: through a ppserver on loopback. Remote-only W1 and W2 with a
    2-worker node; W3 with 1 local worker + a 1-worker node."""
    import pp
    out = {}
    node, addr = start_node(2)
    base = os.urandom(p["w4_size"])
    try:
        # plain first, then TLS, on the same node: the TLS cost is their ratio
        for tls, tag in ((False, "plain_"), (True, "")):
            s = pp.Server(0, ppservers=(addr,), secret=W6_SECRET, tls=tls)
            try:
                for x in range(300):                                   # warm-up
                    s.submit(inc, (x,))()
                n = p["w1_jobs"]
                gc.collect()
                t0 = perf_counter()
                jobs = [s.submit(inc, (x,)) for x in range(n)]
                res = [j() for j in jobs]
                out["remote_%sjobs_per_s" % tag] = n / (perf_counter() - t0)
                if res != list(range(1, n + 1)):
                    raise AssertionError("W6 W1 wrong result")
                times = []
                for x in range(p["w2_trips"]):
                    t0 = perf_counter()
                    if s.submit(inc, (x,))() != x + 1:
                        raise AssertionError("W6 W2 wrong result")
                    times.append(perf_counter() - t0)
                out["remote_%smedian_us" % tag] = statistics.median(times) * 1e6
                nj = p["w4_jobs"]
                blobs = [i.to_bytes(8, "little") + base[8:] for i in range(nj)]
                gc.collect()
                t0 = perf_counter()
                res = [j() for j in [s.submit(blob_len, (b,)) for b in blobs]]
                out["remote_%sw4_mib_per_s" % tag] = (
                    nj * p["w4_size"] / MiB / (perf_counter() - t0))
                if res != [p["w4_size"]] * nj:
                    raise AssertionError("W6 W4 wrong result")
                del blobs, res
            finally:
                s.destroy()
    finally:
        node.kill()
        node.wait()
    out["tls_w1_cost_pct"] = 100 * (1 - out["remote_jobs_per_s"] /
                                    out["remote_plain_jobs_per_s"])
    out["tls_w2_cost_us"] = out["remote_median_us"] - out["remote_plain_median_us"]
    out["tls_w4_cost_pct"] = 100 * (1 - out["remote_w4_mib_per_s"] /
                                    out["remote_plain_w4_mib_per_s"])
    sum_primes(1000)
    t0 = perf_counter()
    ref = [sum_primes(n) for n in W3_INPUTS]
    serial = perf_counter() - t0
    node, addr = start_node(1)
    try:
        s = pp.Server(1, ppservers=(addr,), secret=W6_SECRET)
        try:
            deadline = time.monotonic() + 10
            while addr not in s.get_active_nodes() and time.monotonic() < deadline:
                time.sleep(0.02)
            run_batch("pp", s, sum_primes, [(1000,), (1001,)], (isprime,), ("math",))
            t0 = perf_counter()
            res, _ = run_batch("pp", s, sum_primes, [(n,) for n in W3_INPUTS],
                               (isprime,), ("math",))
            wall = perf_counter() - t0
            st = s.get_stats()
            out["mixed_split"] = "%d local / %d node" % (st["local"].njobs, st[addr].njobs)
        finally:
            s.destroy()
    finally:
        node.kill()
        node.wait()
    if res != ref:
        raise AssertionError("W6 W3 wrong result")
    out["mixed_efficiency"] = serial / (2 * wall)
    out["mixed_wall_s"] = wall
    return [out]


def child_w5(name, p):
    tries = p["w5_tries"]
    samples = []                     # try 0 is an untimed warm-up (imports, caches)
    for i in range(tries + 1):
        time.sleep(0.05)
        t0 = perf_counter()
        h = start_system(name)
        if name in PP_SYSTEMS:
            r = h.submit(inc, (1,))()
        elif name == "pool":
            r = h.apply_async(inc, (1,)).get()
        else:
            r = h.submit(inc, 1).result()
        t1 = perf_counter()
        stop_system(name, h)
        t2 = perf_counter()
        if r != 2:
            raise AssertionError("W5 wrong result: %r" % (r,))
        if i > 0:                                                      # i == 0 is warm-up
            samples.append({"first_result_ms": (t1 - t0) * 1e3,
                            "destroy_ms": (t2 - t1) * 1e3})
    return samples


def crash_stamped(path):
    """RS: write the time of the crash, then die without a result."""
    import os
    import time
    with open(path, "w") as f:
        f.write(repr(time.monotonic()))
    os._exit(1)


def child_rs(name, p):
    """RS: a crashed worker replaced and running its next job, in ms from the
    crash (stamped by the dying job, CLOCK_MONOTONIC is system-wide) to the
    result of the job queued behind it."""
    import logging
    import pp
    method = "spawn" if name == "ppspawn" else "fork"
    h = pp.Server(1, start_method=method, max_retries=0, loglevel=logging.CRITICAL)
    path = os.path.join(tempfile.mkdtemp(prefix="pp-bench-rs-"), "crash")
    samples = []
    try:
        if h.submit(inc, (0,))() != 1:
            raise AssertionError("RS wrong result")
        for i in range(p["rs_crashes"] + 1):            # i == 0 is a warm-up
            time.sleep(0.02)
            crash = h.submit(crash_stamped, (path,))
            nxt = h.submit(inc, (i,))
            r = nxt()
            t1 = time.monotonic()
            try:
                crash()
                raise AssertionError("RS: the crashing job returned")
            except pp.WorkerLostError:
                pass
            with open(path) as f:
                t0 = float(f.read())
            os.unlink(path)
            if r != i + 1:
                raise AssertionError("RS wrong result: %r" % (r,))
            if i > 0:
                samples.append({"respawn_ms": (t1 - t0) * 1e3})
    finally:
        h.destroy()
        os.rmdir(os.path.dirname(path))
    return samples


def child_mem(name, p):
    total, batch = p["mem_jobs"], p["mem_batch"]
    h = start_system(name)
    try:
        args = [(x,) for x in range(batch)]
        expect = list(range(1, batch + 1))
        res, _ = run_batch(name, h, inc, args)                        # warm-up batch
        del res
        gc.collect()
        rss0 = rss_mib()
        peak = rss0
        t0 = perf_counter()
        done = 0
        while done < total:
            res, _ = run_batch(name, h, inc, args)
            if res != expect:
                raise AssertionError("MEM wrong results in batch at %d" % done)
            del res
            done += batch
            peak = max(peak, rss_mib())
        t1 = perf_counter()
        gc.collect()
        rss1 = rss_mib()
    finally:
        stop_system(name, h)
    return [{"growth_mb": rss1 - rss0, "peak_growth_mb": max(peak, rss1) - rss0,
             "rss_before_mb": rss0, "rss_after_mb": rss1, "jobs": done,
             "jobs_per_s": done / (t1 - t0)}]


def spin(ms):
    """Busy for ms milliseconds of wall time; returns ms."""
    end = perf_counter() + ms / 1e3
    while perf_counter() < end:
        pass
    return ms


def child_map(name, p):
    """MAP: map over map_items trivial items (items/s), then over MAP_LONG
    long items (wall s). "pp" sizes chunks itself (chunksize=None), "ppfixed"
    uses the fixed size pp used before, ceil(n / (4 * workers)) (Pool's
    rule), "pool" is Pool.map with its default chunks."""
    n = p["map_items"]
    nlong, ms = p["map_long"]
    data = list(range(n))
    longs = [ms] * nlong
    h = start_system("pp" if name == "ppfixed" else name)
    fixed = lambda k: math.ceil(k / (4 * NWORKERS))           # noqa: E731
    if name == "pp":
        run = lambda f, xs: h.map(f, xs)                      # noqa: E731
    elif name == "ppfixed":
        run = lambda f, xs: h.map(f, xs, chunksize=fixed(len(xs)))  # noqa: E731
    else:
        run = h.map
    samples = []
    try:
        run(inc, data[:20000])                                # warm-up
        run(spin, [0.1] * 20)
        for _ in range(3):
            gc.collect()
            t0 = perf_counter()
            res = run(inc, data)
            t1 = perf_counter()
            if len(res) != n or res[0] != 1 or res[-1] != n:
                raise AssertionError("MAP wrong result")
            del res
            t2 = perf_counter()
            res = run(spin, longs)
            t3 = perf_counter()
            if res != longs:
                raise AssertionError("MAP long wrong result")
            samples.append({"items_per_s": n / (t1 - t0), "long_wall_s": t3 - t2})
    finally:
        stop_system("pp" if name == "ppfixed" else name, h)
    return samples


CHILD_FUNCS = {"MAP": child_map, "W1": child_w1, "W2": child_w2, "W3": child_w3, "W4": child_w4,
               "W5": child_w5, "RS": child_rs, "MEM": child_mem, "W6": child_w6}


def child_main(spec_json):
    spec = json.loads(spec_json)
    wl, name, params = spec["workload"], spec["system"], spec["params"]
    if name in PP_SYSTEMS:
        import pp  # noqa: F401  (import outside the timed region)
    load0 = os.getloadavg()[0]
    samples = CHILD_FUNCS[wl](name, params)
    out = {"samples": samples, "loadavg": load0}
    sys.stdout.write("BENCHRESULT " + json.dumps(out) + "\n")
    sys.stdout.flush()


# --------------------------------------------------------------------------------------
# Parent: run children with time limits
# --------------------------------------------------------------------------------------


def pgroup_members(pgid):
    """Live (non-zombie) processes whose process group is pgid."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                st = f.read()
        except OSError:
            continue
        rest = st[st.rfind(")") + 2:].split()
        # rest[0] = state, rest[1] = ppid, rest[2] = pgrp
        if rest[0] != "Z" and int(rest[2]) == pgid:
            pids.append(int(d))
    return pids


def cpu_idle_fraction(interval=0.25):
    """Fraction of all CPUs' time spent idle over the next `interval` seconds."""
    def snap():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return v[3] + (v[4] if len(v) > 4 else 0), sum(v)
    i0, t0 = snap()
    time.sleep(interval)
    i1, t1 = snap()
    return (i1 - i0) / (t1 - t0) if t1 > t0 else 1.0


def wait_for_quiet(max_wait, threshold=0.9):
    """Wait up to max_wait seconds for the machine to be >= threshold idle.
    Returns the last idle fraction seen (None if not measured)."""
    if max_wait <= 0:
        return None
    deadline = time.monotonic() + max_wait
    while True:
        idle = cpu_idle_fraction()
        if idle >= threshold or time.monotonic() >= deadline:
            return idle
        time.sleep(0.25)


def run_child(wl, name, params, timeout):
    """Run one measurement in a fresh process.  Returns (result | None, error | None)."""
    spec = json.dumps({"workload": wl, "system": name, "params": params})
    cmd = [sys.executable, os.path.abspath(__file__), "--child", spec]
    # Output goes to files, not pipes: leaked grandchildren holding a pipe open could
    # otherwise block us forever.
    with tempfile.TemporaryFile() as fout, tempfile.TemporaryFile() as ferr:
        proc = subprocess.Popen(cmd, stdout=fout, stderr=ferr, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        pgid = proc.pid
        err = None
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            rc = None
            err = "TIMEOUT after %.0f s (process group killed)" % timeout
        # processes of the child's group still alive after the child exited?
        leaked = []
        if rc is not None:
            deadline = time.monotonic() + 2.0
            while True:
                leaked = pgroup_members(pgid)
                if not leaked or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            if leaked:
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        fout.seek(0)
        ferr.seek(0)
        out = fout.read().decode("utf-8", "replace")
        errtext = ferr.read().decode("utf-8", "replace")
    result = None
    for line in out.splitlines():
        if line.startswith("BENCHRESULT "):
            result = json.loads(line[len("BENCHRESULT "):])
    if err is None and (rc != 0 or result is None):
        err = "exit status %s" % (rc if rc is None or rc >= 0 else "signal %d" % -rc)
    if err is not None:
        tail = "\n".join(errtext.strip().splitlines()[-15:])
        err = err + (("\n" + tail) if tail else "")
        return None, err
    warnings = []
    if leaked:
        warnings.append("%d process(es) of the child's group still alive 2 s after it "
                        "exited (killed)" % len(leaked))
    if errtext.strip():
        warnings.append("child wrote to stderr:\n" +
                        "\n".join(errtext.strip().splitlines()[-10:]))
    result["warnings"] = warnings
    return result, None


def check_pp():
    """Import pp in a separate process (it could crash or hang)."""
    code = ("import pp, sys; pp.Server; sys.stdout.write('%s|%s' % ("
            "getattr(pp, '__file__', None) or list(pp.__path__), "
            "getattr(pp, '__version__', getattr(pp, 'version', '?'))))")
    try:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=60, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return None, "`import pp` did not finish within 60 s"
    if r.returncode != 0:
        tail = "\n".join(r.stderr.strip().splitlines()[-5:])
        return None, "`import pp` failed (exit %d):\n%s" % (r.returncode, tail)
    return r.stdout.strip(), None


# --------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(v, kind):
    if v is None:
        return "n/a"
    if kind == "int":
        return "{:,.0f}".format(v)
    if kind == "f1":
        return "{:,.1f}".format(v)
    if kind == "f2":
        return "{:,.2f}".format(v)
    if kind == "f3":
        return "{:.3f}".format(v)
    return str(v)


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def fmt_ratio(r):
    return "n/a" if r is None else "{:.2f}x".format(r)


def print_table(rows):
    heads = ["workload", "metric", "pp", "Pool", "PPE", "pp/Pool", "pp/PPE", "target",
             "met"]
    cells = [heads] + [[r[h] for h in heads] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(heads))]
    right = {2, 3, 4, 5, 6}

    def line(c):
        return "  ".join(c[i].rjust(widths[i]) if i in right else c[i].ljust(widths[i])
                         for i in range(len(c)))

    print(line(heads))
    print("  ".join("-" * w for w in widths))
    for c in cells[1:]:
        print(line(c))


# --------------------------------------------------------------------------------------
# Parent main
# --------------------------------------------------------------------------------------


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="3 repeats, 2 W4 batches per child, 100,000 MEM jobs (~1 min)")
    ap.add_argument("--only", default=None,
                    help="comma-separated workloads to run (%s)" % ",".join(WORKLOADS))
    ap.add_argument("--repeat", type=int, default=None,
                    help="repeats per measurement (default 5, 3 with --quick)")
    ap.add_argument("--systems", default="pp,pool,ppe",
                    help="comma-separated subset of pp,pool,ppe (default all)")
    ap.add_argument("--mem-jobs", type=int, default=None,
                    help="jobs for MEM (default 1,000,000; 100,000 with --quick)")
    ap.add_argument("--mem-anchors", action="store_true",
                    help="also run MEM for Pool and PPE (slow: ~1 min each per 1M jobs)")
    ap.add_argument("--timeout-scale", type=float, default=1.0,
                    help="multiply every per-child time limit by this factor")
    ap.add_argument("--quiet-wait", type=float, default=0.0, metavar="S",
                    help="before each measurement, wait up to S seconds for the machine "
                         "to be >= 90%% idle (default 0: don't wait)")
    ap.add_argument("--json", default=None, metavar="FILE", help="write all figures here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child is not None:
        child_main(args.child)
        return 0

    t_start = time.monotonic()
    repeat = args.repeat or (3 if args.quick else 5)
    if repeat < 1:
        ap.error("--repeat must be >= 1")
    if args.only:
        want = [w.strip().upper() for w in args.only.split(",") if w.strip()]
        bad = [w for w in want if w not in WORKLOADS]
        if bad:
            ap.error("unknown workload(s) %s; choose from %s" % (",".join(bad),
                                                                 ",".join(WORKLOADS)))
        workloads = [w for w in WORKLOADS if w in want]
    else:
        workloads = list(WORKLOADS)
    systems = [s.strip().lower() for s in args.systems.split(",") if s.strip()]
    bad = [s for s in systems if s not in SYSTEMS]
    if bad:
        ap.error("unknown system(s) %s; choose from pp,pool,ppe" % ",".join(bad))

    params = {"w1_jobs": W1_JOBS, "w2_trips": W2_TRIPS, "w4_jobs": W4_JOBS,
              "w4_size": W4_SIZE, "w4_inner": 2 if args.quick else 3, "w5_tries": 1,
              "rs_crashes": 10,
              "mem_jobs": args.mem_jobs or (100_000 if args.quick else 1_000_000),
              "mem_batch": MEM_BATCH, "map_items": MAP_ITEMS, "map_long": MAP_LONG}

    cmdline = shlex.join([os.path.basename(sys.executable)] + sys.argv)
    import multiprocessing
    print("command : %s" % cmdline)
    print("cwd     : %s   PYTHONPATH=%s" % (os.getcwd(), os.environ.get("PYTHONPATH", "")))
    print("python  : %s (%s)" % (platform.python_version(), sys.executable))
    print("platform: %s" % platform.platform())
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    print("cpus    : os.cpu_count()=%s, usable=%s; workers per system: %d; "
          "multiprocessing start method: %s"
          % (os.cpu_count(), affinity, NWORKERS, multiprocessing.get_start_method()))
    print("loadavg : %.2f %.2f %.2f (at start)" % os.getloadavg())
    pp_info, pp_err = (None, None)
    if "pp" in systems:
        pp_info, pp_err = check_pp()
        if pp_err:
            print("pp      : NOT AVAILABLE -- %s" % pp_err.replace("\n", "\n          "))
            print("          (pp columns will read n/a; is PYTHONPATH=python set and "
                  "the extension built?)")
            systems = [s for s in systems if s != "pp"]
        else:
            path, ver = pp_info.split("|", 1)
            print("pp      : %s (version %s)" % (path, ver))
    print("repeats : %d per measurement (medians reported); MEM jobs: %s"
          % (repeat, "{:,}".format(params["mem_jobs"])))
    print(flush=True)

    # raw[wl][system] = {"samples": [...], "errors": [...], "warnings": [...]}
    raw = {}

    def log(msg):
        sys.stderr.write(msg + "\n")
        sys.stderr.flush()

    for wl in workloads:
        if (wl == "MEM" and not args.mem_anchors) or wl == "W6":
            wl_systems = [s for s in systems if s == "pp"]
        elif wl == "RS":
            wl_systems = [s for s in systems if s == "pp"]
        else:
            wl_systems = list(systems)
        if wl in ("W5", "RS") and "pp" in systems:
            wl_systems.append("ppspawn")  # same run: fresh interpreters' cost
        if wl == "W1" and "pp" in systems:
            wl_systems.append("ppbare")   # same run: the futures' cost on W1
        if wl in ("W1", "W2") and "pp" in systems:
            wl_systems.append("ppinherit")  # same run: output capture's cost
        if wl == "MAP":
            # PPE.map sends every item as its own task: far too slow here
            wl_systems = [s for s in wl_systems if s != "ppe"]
            if "pp" in systems:
                wl_systems.append("ppfixed")  # same run: map's old fixed chunks
        if not wl_systems:
            continue
        reps = repeat
        if wl == "W5":
            reps = max(repeat, 5)            # W5 is cheap: more tries for a stable median
        if wl == "MEM":
            reps = 1                         # a growth figure, not a timing
        timeout = TIMEOUTS[wl] * args.timeout_scale
        raw[wl] = {s: {"samples": [], "errors": [], "warnings": [], "loadavg": []}
                   for s in wl_systems}
        failed = set()
        for r in range(reps):
            k = r % len(wl_systems)
            order = wl_systems[k:] + wl_systems[:k]     # rotate to spread drift
            for s in order:
                if s in failed:
                    continue
                idle = wait_for_quiet(args.quiet_wait)
                t0 = time.monotonic()
                res, err = run_child(wl, s, params, timeout)
                dt = time.monotonic() - t0
                if err:
                    raw[wl][s]["errors"].append(err)
                    failed.add(s)               # don't repeat a failing measurement
                    log("  %-3s %-6s rep %d/%d: FAILED (%.1fs): %s"
                        % (wl, s, r + 1, reps, dt, err.splitlines()[0]))
                    continue
                for smp in res["samples"]:
                    smp["idle_before"] = idle
                raw[wl][s]["samples"].extend(res["samples"])
                raw[wl][s]["loadavg"].append(res.get("loadavg"))
                raw[wl][s]["warnings"].extend(res.get("warnings", []))
                log("  %-3s %-6s rep %d/%d: %.1fs%s" % (
                    wl, s, r + 1, reps, dt,
                    "" if idle is None else "  (machine %.0f%% idle before)" % (100 * idle)))

    # ---------------------------------------------------------------- aggregate
    def metric(wl, s, key):
        if wl not in raw or s not in raw[wl]:
            return None
        return med([x.get(key) for x in raw[wl][s]["samples"]])

    summary = {}
    rows = []

    def add_row(wl, label, key, kind, target_txt, met_fn, values=None):
        vals = values or {s: metric(wl, s, key) for s in ("pp", "pool", "ppe")}
        rp, rq = ratio(vals["pp"], vals["pool"]), ratio(vals["pp"], vals["ppe"])
        met = "n/a"
        if vals["pp"] is not None and met_fn is not None:
            met = "yes" if met_fn(vals["pp"], rp) else "NO"
        elif met_fn is None:
            met = "-"
        rows.append({"workload": wl, "metric": label, "pp": fmt(vals["pp"], kind),
                     "Pool": fmt(vals["pool"], kind), "PPE": fmt(vals["ppe"], kind),
                     "pp/Pool": fmt_ratio(rp), "pp/PPE": fmt_ratio(rq),
                     "target": target_txt, "met": met})
        summary.setdefault(wl, {})[label] = {"pp": vals["pp"], "pool": vals["pool"],
                                             "ppe": vals["ppe"], "pp/pool": rp,
                                             "pp/ppe": rq, "target": target_txt,
                                             "met": met}

    if "W1" in raw:
        add_row("W1", "jobs/s (higher better)", "jobs_per_s", "int",
                ">=200,000 & >=6x Pool", lambda v, rp: v >= 200_000 and (rp or 0) >= 6)
    if "W1" in raw and "ppbare" in raw["W1"]:
        bare, full = metric("W1", "ppbare", "jobs_per_s"), metric("W1", "pp", "jobs_per_s")
        cost = ratio(bare, full)
        add_row("W1 futures", "bare/pp.Job jobs/s ratio", None, "f3", "<=1.05",
                lambda v, rp: v <= 1.05, values={"pp": cost, "pool": None, "ppe": None})
        summary["W1 futures"]["bare_jobs_per_s"] = bare
        summary["W1 futures"]["pp_jobs_per_s"] = full
    if "W1" in raw and "ppinherit" in raw["W1"]:
        inh, full = metric("W1", "ppinherit", "jobs_per_s"), metric("W1", "pp", "jobs_per_s")
        add_row("W1 capture", "inherit/echo jobs/s ratio", None, "f3", "<=1.05",
                lambda v, rp: v <= 1.05,
                values={"pp": ratio(inh, full), "pool": None, "ppe": None})
        summary["W1 capture"]["inherit_jobs_per_s"] = inh
        summary["W1 capture"]["echo_jobs_per_s"] = full
    if "W2" in raw and "ppinherit" in raw["W2"]:
        inh, full = metric("W2", "ppinherit", "median_us"), metric("W2", "pp", "median_us")
        add_row("W2 capture", "echo - inherit median us", None, "f1", "report",
                lambda v, rp: True,
                values={"pp": (full - inh) if full is not None and inh is not None else None,
                        "pool": None, "ppe": None})
    if "W2" in raw:
        add_row("W2", "median us/trip (lower)", "median_us", "f1", "<=15 us",
                lambda v, rp: v <= 15)
        add_row("W2", "mean us/trip (lower)", "mean_us", "f1", "<=15 us",
                lambda v, rp: v <= 15)
    if "W3" in raw:
        serial = med([x["serial_s"] for d in raw["W3"].values() for x in d["samples"]])
        add_row("W3", "2-worker wall s (lower)", "wall_s", "f3", "(serial %s s)"
                % fmt(serial, "f3"), None)
        add_row("W3", "efficiency (higher)", "efficiency", "f3", ">=0.97",
                lambda v, rp: v >= 0.97)
        summary["W3"]["serial_wall_s"] = serial
    if "W4" in raw:
        add_row("W4", "MiB/s (higher better)", "mib_per_s", "int",
                ">=3,000 & >=3x Pool",
                lambda v, rp: v >= 3000 and (rp or 0) >= 3)
    if "W5" in raw:
        add_row("W5", "create->1st result ms (lower)", "first_result_ms", "f1",
                "<=20 ms", lambda v, rp: v <= 20)
        add_row("W5", "destroy ms (lower)", "destroy_ms", "f1", "-", None)
    if "W5" in raw and "ppspawn" in raw["W5"]:
        sp = metric("W5", "ppspawn", "first_result_ms")
        add_row("W5 spawn", "start_method=spawn 1st result ms", None, "f1", "anchor",
                None, values={"pp": sp, "pool": None, "ppe": None})
        add_row("W5 spawn", "spawn/fork ratio", None, "f2", "-", None,
                values={"pp": ratio(sp, metric("W5", "pp", "first_result_ms")),
                        "pool": None, "ppe": None})
    if "RS" in raw:
        add_row("RS", "crash->next result ms (lower)", "respawn_ms", "f2", "<=5 ms",
                lambda v, rp: v <= 5, values={"pp": metric("RS", "pp", "respawn_ms"),
                                              "pool": None, "ppe": None})
        sp = metric("RS", "ppspawn", "respawn_ms")
        add_row("RS spawn", "start_method=spawn ms", None, "f2", "anchor", None,
                values={"pp": sp, "pool": None, "ppe": None})
        add_row("RS spawn", "spawn/fork ratio", None, "f1", "-", None,
                values={"pp": ratio(sp, metric("RS", "pp", "respawn_ms")),
                        "pool": None, "ppe": None})
    if "MEM" in raw:
        add_row("MEM", "RSS growth MB (lower)", "growth_mb", "f1", "<=50 MB",
                lambda v, rp: v <= 50)
        add_row("MEM", "peak RSS growth MB", "peak_growth_mb", "f1", "-", None)

    if "W6" in raw:
        add_row("W6", "remote W1 jobs/s (higher)", "remote_jobs_per_s", "int",
                ">=100,000", lambda v, rp: v >= 100_000)
        add_row("W6", "remote W2 median us (lower)", "remote_median_us", "f1",
                "<=60 us", lambda v, rp: v <= 60)
        add_row("W6", "remote W1 jobs/s, tls=False", "remote_plain_jobs_per_s", "int",
                "-", None)
        add_row("W6", "remote W2 median us, tls=False", "remote_plain_median_us", "f1",
                "-", None)
        add_row("W6", "TLS cost, remote W1 %", "tls_w1_cost_pct", "f1", "<=25 %",
                lambda v, rp: v <= 25)
        add_row("W6", "TLS cost, remote W2 us", "tls_w2_cost_us", "f1", "<=20 us",
                lambda v, rp: v <= 20)
        add_row("W6", "remote W4 MiB/s (TLS)", "remote_w4_mib_per_s", "int", "-", None)
        add_row("W6", "remote W4 MiB/s, tls=False", "remote_plain_w4_mib_per_s", "int",
                "-", None)
        add_row("W6", "TLS cost, remote W4 %", "tls_w4_cost_pct", "f1", "-", None)
        add_row("W6", "1 local+1 node W3 efficiency", "mixed_efficiency", "f3",
                ">=0.95", lambda v, rp: v >= 0.95)
    if "MAP" in raw:
        add_row("MAP", "map items/s, 1M trivial (higher)", "items_per_s", "int",
                ">=1x Pool", lambda v, rp: (rp or 0) >= 1.0)
        fx = metric("MAP", "ppfixed", "items_per_s")
        add_row("MAP", "items/s, old fixed chunks", None, "int", "-", None,
                values={"pp": fx, "pool": None, "ppe": None})
        add_row("MAP", "40 x 4 ms items: wall s (lower)", "long_wall_s", "f3", "-", None)
        lf, la = metric("MAP", "ppfixed", "long_wall_s"), metric("MAP", "pp", "long_wall_s")
        add_row("MAP", "long items: wall new/old chunks", None, "f3", "<=1.05",
                lambda v, rp: v <= 1.05, values={"pp": ratio(la, lf), "pool": None,
                                                 "ppe": None})
    print("Results (medians over repeats; pp/X = pp figure divided by X's figure; "
          "Pool = multiprocessing.Pool, PPE = ProcessPoolExecutor):")
    print()
    print_table(rows)
    print()

    # details: per-sample spread, errors
    detail_keys = {"W1": ("jobs_per_s", "int"), "W2": ("median_us", "f1"),
                   "W3": ("wall_s", "f3"), "W4": ("mib_per_s", "int"),
                   "W5": ("first_result_ms", "f1"), "RS": ("respawn_ms", "f2"),
                   "MEM": ("growth_mb", "f1"),
                   "W6": ("remote_jobs_per_s", "int"), "MAP": ("items_per_s", "int")}
    print("Details (all samples of the main figure, min / median / max):")
    problems = []
    for wl in raw:
        key, kind = detail_keys[wl]
        for s, d in raw[wl].items():
            xs = [x[key] for x in d["samples"] if x.get(key) is not None]
            lbl = SYSTEM_LABEL[s]
            extra = ""
            if wl == "W1" and d["samples"]:
                extra = "  (submit %.3fs, collect %.3fs median)" % (
                    med([x["submit_s"] for x in d["samples"]]),
                    med([x["collect_s"] for x in d["samples"]]))
            if wl == "W2" and d["samples"]:
                extra = "  (p90 %.1f, p99 %.1f us; mean %.1f)" % (
                    med([x["p90_us"] for x in d["samples"]]),
                    med([x["p99_us"] for x in d["samples"]]),
                    med([x["mean_us"] for x in d["samples"]]))
            if wl == "W3" and d["samples"]:
                extra = "  (serial %s s, efficiency %s median; efficiencies [%s])" % (
                    fmt(med([x["serial_s"] for x in d["samples"]]), "f3"),
                    fmt(med([x["efficiency"] for x in d["samples"]]), "f3"),
                    ", ".join(fmt(x["efficiency"], "f3") for x in d["samples"]))
            if wl == "MEM" and d["samples"]:
                x = d["samples"][0]
                extra = "  (RSS %.1f -> %.1f MB over %s jobs, %s jobs/s)" % (
                    x["rss_before_mb"], x["rss_after_mb"], "{:,}".format(x["jobs"]),
                    fmt(x["jobs_per_s"], "int"))
            if wl == "W6" and d["samples"]:
                extra = "  (remote W2 us [%s]; mixed W3 efficiencies [%s]; split %s)" % (
                    ", ".join(fmt(x["remote_median_us"], "f1") for x in d["samples"]),
                    ", ".join(fmt(x["mixed_efficiency"], "f3") for x in d["samples"]),
                    d["samples"][-1].get("mixed_split"))
            if xs:
                print("  %-3s %-6s n=%-2d %s / %s / %s  [%s]%s" % (
                    wl, lbl, len(xs), fmt(min(xs), kind), fmt(med(xs), kind),
                    fmt(max(xs), kind), ", ".join(fmt(x, kind) for x in xs), extra))
            for e in d["errors"]:
                problems.append("%s %s: %s" % (wl, lbl, e))
            for w in d["warnings"]:
                problems.append("%s %s: warning: %s" % (wl, lbl, w))
    if pp_err:
        problems.insert(0, "pp not available: %s" % pp_err)
    if problems:
        print()
        print("Problems:")
        for p in problems:
            print("  - " + p.replace("\n", "\n      "))
    elapsed = time.monotonic() - t_start
    print()
    print("loadavg : %.2f %.2f %.2f (at end); total bench time %.1f s"
          % (os.getloadavg() + (elapsed,)))

    if args.json:
        doc = {"command": cmdline, "cwd": os.getcwd(),
               "pythonpath": os.environ.get("PYTHONPATH", ""),
               "python": platform.python_version(), "platform": platform.platform(),
               "cpu_count": os.cpu_count(), "usable_cpus": affinity,
               "workers": NWORKERS, "repeat": repeat, "params": params,
               "pp": pp_info, "pp_error": pp_err, "summary": summary, "raw": raw,
               "problems": problems, "elapsed_s": elapsed}
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
        print("wrote %s" % args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
