"""Data-plane benchmarks (issue 11 targets): how fast large arguments and
results move between the client and its workers, and the client's peak
memory for a large argument. Same run, 2 local workers, medians.

  W4       200 jobs, each given a distinct 1 MiB bytes object, returning
           len(): MiB/s, pp and multiprocessing.Pool side by side
  NP128    one job given a 128 MiB numpy array, returning its nbytes: GiB/s
  RES100   one job returning a 100 MiB numpy array: GiB/s
  PEAK64   the client's peak RSS growth for a job given a 64 MiB bytearray,
           in copies of the argument (0 = no extra copy)
  RW4      W4 through a ppserver on 127.0.0.1 (2 workers): MiB/s
  PUT100   Server.put of one 100 MiB array (numpy, else a memoryview of a
           bytearray), then 1,000 jobs each reading it (one element per
           4 KiB page): total seconds, put() included, against the anchors
           of the same run: one transfer per worker (two jobs given the
           array as an argument, at once) plus the jobs' own work (the same
           1,000 jobs on an array the workers already have); the ratio is
           total / (transfer + work), target <= 1.2

    PYTHONPATH=python:/usr/lib/python3/dist-packages python3 bench/data.py
"""
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import time

import pp

try:
    import numpy as np
except ImportError:
    np = None

MiB = 1 << 20
REPEAT = int(os.environ.get("PP_BENCH_REPEAT", "5"))
# issue 11's targets for the figures above
TARGETS = {"W4 pp MiB/s": (">=", 3000), "W4 pp/Pool": (">=", 3),
           "NP128 GiB/s": (">=", 5), "RES100 GiB/s": (">=", 3),
           "PEAK64 extra copies": ("<=", 1), "PUT100 ratio": ("<=", 1.2),
           "RW4 MiB/s": (">=", 1000)}


def length(b):
    return len(b)


def nbytes(a):
    return a.nbytes


def make(n):
    import numpy
    return numpy.ones(n // 8)


def med(fn, repeat=REPEAT):
    fn()  # warm up (worker start, arena pages)
    return statistics.median(fn() for _ in range(repeat))


def w4_pp(s):
    data = [os.urandom(16) * (MiB // 16) for _ in range(200)]

    def run():
        t = time.perf_counter()
        jobs = [s.submit(length, (d,)) for d in data]
        assert all(j() == MiB for j in jobs)
        return 200 / (time.perf_counter() - t)
    return med(run)


def w4_pool():
    data = [os.urandom(16) * (MiB // 16) for _ in range(200)]
    with multiprocessing.Pool(2) as p:
        def run():
            t = time.perf_counter()
            assert all(r == MiB for r in p.map(length, data, chunksize=1))
            return 200 / (time.perf_counter() - t)
        return med(run)


def page_sum(x):
    """Read one element of every 4 KiB page of x."""
    try:
        return float(x[::4096 // x.itemsize].sum())
    except AttributeError:  # a memoryview
        return float(sum(x[::4096]))


def page_sum_local(i):
    """page_sum on a 100 MiB array this worker made itself (kept)."""
    import os
    box = os.__dict__.setdefault("_pp_bench_array", [])
    if not box:
        box.append(memoryview(bytearray(100 * (1 << 20))))
    x = box[0]
    return float(sum(x[::4096])) + i * 0


def put100(s, njobs=1000):
    """PUT100: (total s, transfer s, work s), medians of REPEAT rounds."""
    a = np.ones(100 * MiB // 8) if np is not None else \
        memoryview(bytearray(os.urandom(MiB) * 100))
    want = page_sum(a)
    for j in [s.submit(page_sum_local, (i,)) for i in range(200)]:
        j()  # every worker has its own array (the work anchor)

    def transfer():
        t = time.perf_counter()
        assert all(j() == 100 * MiB for j in  # (nbytes: numpy or memoryview)
                   [s.submit(nbytes, (a,)) for _ in range(2)])
        return time.perf_counter() - t

    def work():
        t = time.perf_counter()
        for j in [s.submit(page_sum_local, (i,)) for i in range(njobs)]:
            j()
        return time.perf_counter() - t

    def total():
        t = time.perf_counter()
        r = s.put(a)
        assert all(j() == want for j in
                   [s.submit(page_sum, (r,)) for _ in range(njobs)])
        dt = time.perf_counter() - t
        r.release()
        return dt
    return med(total), med(transfer), med(work)


def hwm_kb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def reset_hwm():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def main():
    out = {}
    with pp.Server(2, logstream=sys.stderr) as s:
        s.submit(length, (b"",))()
        out["W4 pp MiB/s"] = w4_pp(s)
        if np is not None:
            a = np.ones(128 * MiB // 8)

            def np128():
                t = time.perf_counter()
                assert s.submit(nbytes, (a,))() == a.nbytes
                return 128 / 1024 / (time.perf_counter() - t)
            out["NP128 GiB/s"] = med(np128)

            def res100():
                t = time.perf_counter()
                r = s.submit(make, (100 * MiB,))()
                dt = time.perf_counter() - t
                assert r.nbytes == 100 * MiB
                return 100 / 1024 / dt
            out["RES100 GiB/s"] = med(res100)
        arg = bytearray(os.urandom(64 * MiB))
        s.submit(length, (arg,))()
        peaks = []
        for _ in range(3):
            reset_hwm()
            base = hwm_kb()
            assert s.submit(length, (arg,))() == 64 * MiB
            peaks.append((hwm_kb() - base) / (64 * 1024))
        out["PEAK64 extra copies"] = statistics.median(peaks)
        tot, tx, wk = put100(s)
        out["PUT100 total s"] = tot
        out["PUT100 transfer s"] = tx
        out["PUT100 work s"] = wk
        out["PUT100 ratio"] = tot / (tx + wk)
    out["W4 Pool MiB/s"] = w4_pool()
    out["W4 pp/Pool"] = out["W4 pp MiB/s"] / out["W4 Pool MiB/s"]
    ppserver = os.path.join(os.path.dirname(__file__), "..", "bin", "ppserver")
    if os.path.exists(ppserver):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        env = dict(os.environ, PP_SECRET="bench-secret-0123456789")
        node = subprocess.Popen([ppserver, "-i", "127.0.0.1", "-p", str(port),
                                 "-w", "2", "--python", sys.executable],
                                env=env, stderr=subprocess.DEVNULL)
        try:
            with pp.Server(0, ppservers=("127.0.0.1:%d" % port,),
                           secret=env["PP_SECRET"], logstream=sys.stderr) as s:
                end = time.monotonic() + 30
                while len(s.get_active_nodes()) < 2 and time.monotonic() < end:
                    time.sleep(0.05)
                out["RW4 MiB/s"] = w4_pp(s)
        finally:
            node.terminate()
            node.wait(10)
    for k, v in out.items():
        t = TARGETS.get(k)
        print("%-22s %10.2f%s" % (k, v, "" if t is None else "   target %s %s: %s"
                                  % (t[0], t[1], "met" if (v >= t[1] if t[0] == ">="
                                                            else v <= t[1]) else "NOT met")))
    if np is None:
        print("(numpy is not importable: NP128 and RES100 not measured)")


if __name__ == "__main__":
    main()
