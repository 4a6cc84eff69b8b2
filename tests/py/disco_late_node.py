"""A late-started node on one host (the scenario of test_discovery.py's
test_late_node_*), run as its own process so that it can also run inside a
fresh network namespace that has only lo (unshare -n; then this script brings
lo up itself when asked with --lo-up).

A client pp.Server(0, ppservers=("*:P",)) starts first; once its start-up
queries are over (more than 3 s), `bin/ppserver -a -p P --announce-interval I
ARGS...` starts. Measured from the node's readiness (it accepts TCP): when
the client lists the node as connected, and when a job submitted at
readiness returns from it. Prints one JSON object on stdout:

  {"ready_s": ..., "connected_s": ... or null, "job_s": ... or null,
   "name": "127.0.0.1:P" or null, "client_log": "...", "node_log": "..."}

Every wait is bounded (--timeout); the node is stopped by its pid.

usage: disco_late_node.py [--lo-up] [--interval I] [--timeout T] -- ARGS...
"""
import argparse
import io
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PPSERVER = ROOT / "bin" / "ppserver"
SECRET = "late-node-secret"
QUERY_PHASE_S = 3.5  # the client queries at 0, 0.3, 1 and 3 s after start


def free_port():
    """A port free for both TCP and UDP on 127.0.0.1."""
    for _ in range(50):
        with socket.socket() as t:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind(("0.0.0.0", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


def square(x):
    return x * x


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lo-up", action="store_true")
    ap.add_argument("--interval", type=float, default=0.5)
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("args", nargs="*")
    o = ap.parse_args()
    if o.lo_up:
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True, timeout=10)
    sys.path.insert(0, str(ROOT / "python"))
    import pp

    port = free_port()
    buf = io.StringIO()
    s = pp.Server(0, ppservers=("*:%d" % port,), secret=SECRET, logstream=buf,
                  loglevel=logging.DEBUG)
    t0 = time.monotonic()
    # the scenario, not synchronisation: the node must start after the
    # client's last start-up query
    time.sleep(max(0.0, t0 + QUERY_PHASE_S - time.monotonic()))
    nlog = tempfile.TemporaryFile()
    env = dict(os.environ, PP_SECRET=SECRET, PYTHONPATH=str(ROOT / "python"))
    node = subprocess.Popen(
        [str(PPSERVER), "-a", "-d", "-p", str(port), "-w", "1",
         "--announce-interval", str(o.interval), "--python", sys.executable]
        + o.args, env=env, stdout=subprocess.DEVNULL, stderr=nlog)
    out = {"ready_s": None, "connected_s": None, "job_s": None, "name": None}
    try:
        deadline = time.monotonic() + o.timeout
        while time.monotonic() < deadline and node.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.01)
        ready = time.monotonic()
        out["ready_s"] = ready - t0
        job = s.submit(square, (7,))
        deadline = ready + o.timeout
        while time.monotonic() < deadline:
            act = s.get_active_nodes()
            names = [k for k, v in act.items() if k != "local" and v > 0]
            if out["connected_s"] is None and names:
                out["connected_s"] = time.monotonic() - ready
                out["name"] = names[0]
            if job.done():
                if job.result(timeout=1) == 49:
                    out["job_s"] = time.monotonic() - ready
                break
            time.sleep(0.01)
    finally:
        s.destroy()
        if node.poll() is None:
            node.kill()
        node.wait(10)
        nlog.seek(0)
        out["node_log"] = nlog.read().decode(errors="replace")
        out["client_log"] = buf.getvalue()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
