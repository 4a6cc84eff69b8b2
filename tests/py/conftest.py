"""Shared fixtures and helpers for the pp test-suite.

Run with:
    cd <repo> && PYTHONPATH=python:/usr/lib/python3/dist-packages python3 -m pytest -q tests/py
"""
import faulthandler
import io
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PYDIR = REPO / "python"

if str(PYDIR) not in sys.path:
    sys.path.insert(0, str(PYDIR))

# Hard upper bound for any single test: if pp hangs, dump the stacks and exit
# instead of blocking the whole run forever.
TEST_WATCHDOG_SECONDS = 120


@pytest.fixture(autouse=True)
def _watchdog():
    faulthandler.dump_traceback_later(TEST_WATCHDOG_SECONDS, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


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
        threading.Thread(target=self._pump_out, daemon=True).start()
        threading.Thread(target=self._pump_err, daemon=True).start()

    def _pump_out(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _pump_err(self):
        for chunk in self.proc.stderr:
            self.err_chunks.append(chunk)

    def readline(self, timeout=30):
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no output line from script within {timeout} s; stderr:\n{self.stderr()}")
        if line is None:
            pytest.fail(f"script ended early (rc={self.proc.poll()}); stderr:\n{self.stderr()}")
        return line

    def stderr(self):
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


def pid_state(pid):
    """'gone', 'zombie' or 'alive'."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("State:"):
                    return "zombie" if line.split()[1] in ("Z", "X") else "alive"
    except (FileNotFoundError, ProcessLookupError):
        return "gone"
    except OSError:
        return "gone"
    return "alive"


def pid_alive(pid):
    return pid_state(pid) == "alive"


def wait_pids_gone(pids, timeout=5.0):
    """Poll until none of pids is a live process; return the list still alive."""
    deadline = time.monotonic() + timeout
    alive = [p for p in pids if pid_alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if pid_alive(p)]
    return alive


def descendants(pid):
    """All live descendant pids of pid, found through /proc/*/stat."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                data = f.read()
        except OSError:
            continue
        # the comm field may contain spaces/parens: parse after the last ')'
        rest = data[data.rfind(")") + 2:].split()
        ppid = int(rest[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for c in children.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def kill_pids(pids):
    for p in pids:
        if pid_alive(p):
            try:
                os.kill(p, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
