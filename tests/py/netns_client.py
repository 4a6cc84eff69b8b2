"""netns_client — a pp client driven over stdin/stdout, run by
test_netns_cluster.py inside a network namespace (a separate "host").

    python3 netns_client.py SECRET NCPUS NODE_TIMEOUT PPSERVERS...

Commands, one per line on stdin; each answer is one JSON line on stdout:
    wait_nodes K TIMEOUT       wait until >= K nodes are connected
    wait_node NAME TIMEOUT     wait until host:port NAME is connected
    submit N SECS              queue N jobs (sleep SECS, return (i*i, node))
    collect TIMEOUT            wait for the queued jobs; check every result
    stats                      {node: njobs}, and print_stats()'s table
    quit
Every answer carries "t" (seconds since the client started) and "active".
The log of the pp Server goes to stderr."""
import contextlib
import io
import json
import logging
import sys
import time

import pp


def job(i, secs):
    import time
    time.sleep(secs)
    return i * i


def main():
    secret, ncpus, node_timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    t0 = time.monotonic()
    s = pp.Server(ncpus, ppservers=tuple(sys.argv[4:]), secret=secret,
                  loglevel=logging.INFO, logstream=sys.stderr,
                  node_timeout=node_timeout)
    batch = []

    def active():
        return {k: v for k, v in s.get_active_nodes().items() if k != "local"}

    def reply(**kw):
        kw.update(t=round(time.monotonic() - t0, 3), active=active())
        print(json.dumps(kw), flush=True)

    def wait(pred, timeout):
        deadline = time.monotonic() + timeout
        while not pred() and time.monotonic() < deadline:
            time.sleep(0.02)
        return pred()

    reply(event="ready")
    for line in sys.stdin:
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "wait_nodes":
            ok = wait(lambda: len(active()) >= int(cmd[1]), float(cmd[2]))
            reply(ok=ok)
        elif cmd[0] == "wait_node":
            ok = wait(lambda: cmd[1] in active(), float(cmd[2]))
            reply(ok=ok)
        elif cmd[0] == "submit":
            n, secs = int(cmd[1]), float(cmd[2])
            batch.extend((i, s.submit(job, (i, secs))) for i in range(n))
            reply(submitted=n)
        elif cmd[0] == "collect":
            deadline = time.monotonic() + float(cmd[1])
            bad = []
            for i, j in batch:
                try:
                    r = j.result(timeout=max(0.1, deadline - time.monotonic()))
                    if r != i * i:
                        bad.append([i, repr(r)])
                except Exception as e:  # noqa: BLE001 - reported to the test
                    bad.append([i, "%s: %s" % (type(e).__name__, e)])
            reply(ok=not bad, n=len(batch), bad=bad[:10])
            batch = []
        elif cmd[0] == "stats":
            st = s.get_stats()
            table = io.StringIO()
            with contextlib.redirect_stdout(table):
                s.print_stats()
            reply(stats={k: v.njobs for k, v in st.items()}, table=table.getvalue())
        elif cmd[0] == "quit":
            break
    s.destroy()
    reply(event="bye")


if __name__ == "__main__":
    main()
