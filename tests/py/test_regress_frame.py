"""Regression (issue 8, defect 11): a result larger than the frame limit is
reported as a crash.

A job whose result is larger than the frame limit must fail once, at once,
with an error saying the result is too large and naming the limit; the
worker lives on (the same process serves the next job). The limit is
pp.Server(..., max_frame=BYTES) locally and ppserver --max-frame BYTES on a
node.

Before the fix (main daaf568): the worker was killed for a malformed frame,
the job ran 3 times and failed with WorkerLostError (signal 9, 3 attempts);
ppserver refused --max-frame as an unknown option."""
import io
import re
import time

import pp
from helpers import SECRET, needs_ppserver, wait_for

LIMIT = 1 << 20        # 1 MiB
BIG = 2 << 20          # a 2 MiB result
# the message says the result is too large, in some words...
TOO_LARGE = re.compile(r"too large|too big|above the .*limit|exceeds|larger than", re.I)
# ...and names the limit: as it was set (1048576, 1 MiB), or what it leaves
# for the pickled result after a frame's few header bytes
LIMIT_UNITS = re.compile(r"\b(1 ?MiB|1\.0 ?MiB|1024 ?KiB)\b")


def names_the_limit(msg):
    return bool(LIMIT_UNITS.search(msg)) or any(
        LIMIT - 64 <= int(n) <= LIMIT for n in re.findall(r"\d+", msg))


def big_result(path, n):
    """Counts its run (a line appended to path), returns n bytes."""
    import os
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, b"%d\n" % os.getpid())
    os.close(fd)
    return b"x" * n


def worker_pid():
    import os
    return os.getpid()


def runs(path):
    try:
        with open(path) as f:
            return [int(x) for x in f.read().split()]
    except FileNotFoundError:
        return []


def check_too_large(s, tmp_path):
    path = str(tmp_path / "runs")
    pid = s.submit(worker_pid).result(timeout=30)
    t0 = time.monotonic()
    job = s.submit(big_result, (path, BIG))
    assert job.wait(30), "the job did not finish within 30 s"
    elapsed = time.monotonic() - t0
    e = job.exception(timeout=0)
    assert e is not None, "a %d-byte result went through a %d-byte limit" % (BIG, LIMIT)
    msg = str(e)
    assert not isinstance(e, pp.WorkerLostError), "reported as a crash: %r" % (e,)
    assert TOO_LARGE.search(msg) and names_the_limit(msg), \
        "the error does not say the result is too large and the limit: %r" % (e,)
    assert runs(path) == [pid], "the job ran %d times (in %s), worker %d" % (
        len(runs(path)), runs(path), pid)
    # "at once": no retries or respawns (generous for a loaded machine)
    assert elapsed < 8, "the failure took %.1f s" % elapsed
    # the worker lives on
    assert s.submit(worker_pid).result(timeout=30) == pid
    assert s.submit(len, (b"y" * 1000,)).result(timeout=30) == 1000


def test_result_over_the_frame_limit_fails_once_locally(tmp_path):
    with pp.Server(1, max_frame=LIMIT, logstream=io.StringIO()) as s:
        check_too_large(s, tmp_path)


@needs_ppserver
def test_result_over_the_frame_limit_fails_once_on_a_node(ppserver, tmp_path):
    n = ppserver("--max-frame", str(LIMIT), workers=1)
    with pp.Server(0, ppservers=(n.addr,), secret=SECRET, logstream=io.StringIO()) as s:
        wait_for(lambda: n.addr in s.get_active_nodes(), 30, what=n.log)
        check_too_large(s, tmp_path)
        assert n.running(), n.log()
