"""tls_ab.py — remote W1 and W2 (bench.py's W6) over TLS and over plain
connections, interleaved: one client of each kind on one loopback
`ppserver -w 2`, measured in alternating blocks (plain then TLS, then TLS
then plain, ...), so load and drift on a shared machine hit both alike,
unlike W6, which measures all of plain before all of TLS.

    PYTHONPATH=python python3 bench/tls_ab.py [BLOCKS]     (default 16)

Per block: W2 is the median of 300 sequential round trips, W1 the rate of
5,000 jobs submitted then collected. Prints the medians over blocks and the
per-block TLS cost (W2: TLS minus plain, us; W1: 1 - TLS/plain, %)."""
import os
import statistics
import sys
from time import perf_counter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (start_node, W6_SECRET)


def inc(x):
    return x + 1


def main():
    import pp
    blocks = int(sys.argv[1]) if len(sys.argv) > 1 else 16
    node, addr = bench.start_node(2)
    servers = {}
    try:
        for tls in (False, True):
            servers[tls] = pp.Server(0, ppservers=(addr,), secret=bench.W6_SECRET, tls=tls)
            for x in range(500):  # warm-up: connected, workers started
                if servers[tls].submit(inc, (x,))() != x + 1:
                    raise AssertionError("wrong result")
        w2 = {False: [], True: []}
        w1 = {False: [], True: []}
        for b in range(blocks):
            for tls in ((False, True) if b % 2 == 0 else (True, False)):
                s = servers[tls]
                times = []
                for x in range(300):
                    t0 = perf_counter()
                    if s.submit(inc, (x,))() != x + 1:
                        raise AssertionError("wrong result")
                    times.append(perf_counter() - t0)
                w2[tls].append(statistics.median(times) * 1e6)
                n = 5000
                t0 = perf_counter()
                res = [j() for j in [s.submit(inc, (x,)) for x in range(n)]]
                w1[tls].append(n / (perf_counter() - t0))
                if res != list(range(1, n + 1)):
                    raise AssertionError("wrong result")
    finally:
        for s in servers.values():
            s.destroy()
        node.kill()
        node.wait()
    print("loadavg %.2f %.2f %.2f, %d blocks" % (os.getloadavg() + (blocks,)))
    for tls in (False, True):
        print("%-5s remote W2 median %.1f us, remote W1 median %.0f jobs/s"
              % ("TLS" if tls else "plain", statistics.median(w2[tls]),
                 statistics.median(w1[tls])))
    d2 = [t - p for t, p in zip(w2[True], w2[False])]
    c1 = [100 * (1 - t / p) for t, p in zip(w1[True], w1[False])]
    print("TLS cost, W2: median %+.1f us per round trip (blocks: %s)"
          % (statistics.median(d2), " ".join("%+.0f" % x for x in d2)))
    print("TLS cost, W1: median %+.1f %% (blocks: %s)"
          % (statistics.median(c1), " ".join("%+.0f" % x for x in c1)))


if __name__ == "__main__":
    main()
