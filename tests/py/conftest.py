"""Shared fixtures and helpers for the pp test-suite.

Run with:
    cd <repo> && PYTHONPATH=python:/usr/lib/python3/dist-packages python3 -m pytest -q tests/py
"""
import contextlib
import faulthandler
import io
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

# the shared helpers live in helpers.py; these names stay importable from here
from helpers import (PPServer, descendants, free_port, kill_pids, pid_alive, pid_state,
                     stop_all_ppservers, wait_for, wait_pids_gone)

__all__ = ["PPServer", "Script", "bounded", "descendants", "free_port", "kill_pids",
           "pid_alive", "pid_state", "run_script", "script_env", "wait_for",
           "wait_pids_gone", "write_script"]

REPO = Path(__file__).resolve().parents[2]
PYDIR = REPO / "python"

if str(PYDIR) not in sys.path:
    sys.path.insert(0, str(PYDIR))

# Hard upper bound for any single test: if pp hangs, dump the stacks and exit
# instead of blocking the whole run forever. A test that needs longer says so
# with @pytest.mark.watchdog(seconds).
TEST_WATCHDOG_SECONDS = 120


def pytest_configure(config):
    config.addinivalue_line("markers", "watchdog(seconds): this test's hard time limit "
                            "(default %d s)" % TEST_WATCHDOG_SECONDS)


@pytest.fixture(autouse=True)
def _watchdog(request):
    """Past the limit: print every thread's stack on the real stderr (not the
    captured one, which nobody would see) and end the run with status 1."""
    m = request.node.get_closest_marker("watchdog")
    secs = m.args[0] if m else TEST_WATCHDOG_SECONDS
    capman = request.config.pluginmanager.getplugin("capturemanager")

    def fire():
        try:
            with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
                sys.stderr.write("\n*** %s exceeded its watchdog of %g s; the stacks:\n"
                                 % (request.node.nodeid, secs))
                sys.stderr.flush()
                faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
                sys.stderr.flush()
            stop_all_ppservers()
        finally:
            os._exit(1)

    timer = threading.Timer(secs, fire)
    timer.daemon = True
    timer.start()
    # in case no Python thread can run any more
    faulthandler.dump_traceback_later(secs + 30, exit=True)
    yield
    timer.cancel()
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture(autouse=True)
def _pp_logger_reset():
    """After each test: no handler of pp's left on the "pp" logger and its
    level as pp found it, whatever a test left behind."""
    yield
    mod = sys.modules.get("pp._logging")
    if mod is not None:
        mod.reset()


@pytest.fixture
def ppserver(tmp_path):
    """ppserver(*args, workers=1, secret=..., ...): a started helpers.PPServer
    (bin/ppserver on 127.0.0.1, port 0), stopped by pid when the test ends."""
    made = []

    def start(*args, **kw):
        kw.setdefault("pid_file", tmp_path / ("ppserver-%d.pid" % len(made)))
        n = PPServer(*args, **kw)
        made.append(n)
        return n
    try:
        yield start
    finally:
        for n in made:
            n.stop()


@pytest.fixture
def logbuf():
    return io.StringIO()


@pytest.fixture
def server(logbuf):
    """A 2-worker local server, logging into an in-memory stream, destroyed afterwards."""
    import pp
    s = pp.Server(2, logstream=logbuf)
    try:
        yield s
    finally:
        s.destroy()


@pytest.fixture
def server1(logbuf):
    """A 1-worker local server, destroyed afterwards."""
    import pp
    s = pp.Server(1, logstream=logbuf)
    try:
        yield s
    finally:
        s.destroy()


# ---------------------------------------------------------------------------
# helpers

def bounded(fn, *args, timeout=30, **kwargs):
    """Call fn(*args, **kwargs) in a daemon thread; fail if it does not return in time."""
    box = {}

    def run():
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - re-raised in caller
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        pytest.fail(f"{getattr(fn, '__qualname__', fn)} did not return within {timeout} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def script_env():
    env = os.environ.copy()
    parts = [str(PYDIR)]
    if env.get("PYTHONPATH"):
        # make relative entries (e.g. 'python') absolute w.r.t. the repo
        for p in env["PYTHONPATH"].split(os.pathsep):
            if p:
                parts.append(str((REPO / p).resolve()) if not os.path.isabs(p) else p)
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def write_script(tmp_path, code, name="script.py"):
    path = Path(tmp_path) / name
    path.write_text(textwrap.dedent(code))
    return path


def run_script(tmp_path, code, timeout=90, name="script.py", check=True):
    """Write `code` to a file in tmp_path and run it with the repo's pp importable.

    Returns the CompletedProcess.  With check=True a non-zero exit status fails the test
    and shows stdout/stderr.
    """
    path = write_script(tmp_path, code, name)
    try:
        proc = subprocess.run([sys.executable, str(path)], capture_output=True, text=True,
                              timeout=timeout, env=script_env(), cwd=str(tmp_path))
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"script did not finish within {timeout} s\nstdout:\n{e.stdout}\nstderr:\n{e.stderr}")
    if check and proc.returncode != 0:
        pytest.fail(f"script exited with {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


class Script:
    """A running script (Popen) whose stdout lines can be read with a timeout."""

    def __init__(self, tmp_path, code, name="script.py"):
        path = write_script(tmp_path, code, name)
        self.proc = subprocess.Popen([sys.executable, str(path)], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=script_env(),
                                     cwd=str(tmp_path), start_new_session=True)
        self.lines = queue.Queue()
        self.err_chunks = []
        self.err_done = threading.Event()
        threading.Thread(target=self._pump_out, daemon=True).start()
        threading.Thread(target=self._pump_err, daemon=True).start()

    def _pump_out(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _pump_err(self):
        for chunk in self.proc.stderr:
            self.err_chunks.append(chunk)
        self.err_done.set()

    def readline(self, timeout=30):
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no output line from script within {timeout} s; stderr:\n{self.stderr()}")
        if line is None:
            pytest.fail(f"script ended early (rc={self.proc.poll()}); stderr:\n{self.stderr()}")
        return line

    def stderr(self, complete=False):
        """What the script wrote to stderr; complete=True: wait (up to 10 s)
        until it has closed its stderr (e.g. after it exited)."""
        if complete:
            self.err_done.wait(10)
        return "".join(self.err_chunks)

    def cleanup(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
