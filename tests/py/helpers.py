"""Helpers shared by the test files: free ports, waiting on a condition, and
bin/ppserver nodes on 127.0.0.1 (started on port 0, the bound port read back
from the node's log, stopped by pid).

    from helpers import PPServer, free_port, wait_for

The fixture `ppserver` (conftest.py) starts nodes and always stops them.
"""
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# override: e.g. an ASan build (PPSERVER_BIN=path)
PPSERVER_BIN = Path(os.environ.get("PPSERVER_BIN", REPO / "bin" / "ppserver"))
SECRET = "test-secret-0123456789"

needs_ppserver = pytest.mark.skipif(not PPSERVER_BIN.exists(),
                                    reason="bin/ppserver not built (make)")


# ---------------------------------------------------------------------------
# ports

def free_port(kind="tcp", host="127.0.0.1"):
    """A port nothing is bound to on host now ("tcp" or "udp"). Another process
    may take it before it is used: prefer port 0 where the code allows it, and
    use this for ports that must be free (nothing listens there) or named
    before a process binds them."""
    st = socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, st) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------
# waiting

def _describe(what):
    if what is None:
        return ""
    try:
        text = what() if callable(what) else what
    except Exception as e:  # noqa: BLE001 - only for the message
        text = "(describing the failure raised %r)" % (e,)
    return "\n%s" % (text,)


def wait_for(pred, timeout=10.0, what=None, every=None, interval=0.02, fail=True):
    """Call pred() until it returns a true value, and return that value.

    Bounded by timeout seconds (pred is always tried once more at the end).
    every() runs between tries (e.g. to resend something). On timeout the
    test fails with "condition not met within T s: <pred>" and `what` (a
    string, or a callable giving one, e.g. a log); with fail=False the last
    value of pred() is returned instead."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            break
        if every is not None:
            every()
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
    v = pred()
    if v or not fail:
        return v
    name = getattr(pred, "__qualname__", repr(pred))
    if name.endswith("<lambda>"):
        code = getattr(pred, "__code__", None)
        if code is not None:
            name = "lambda at %s:%d" % (os.path.basename(code.co_filename),
                                        code.co_firstlineno)
    pytest.fail("condition not met within %g s: %s%s" % (timeout, name, _describe(what)),
                pytrace=True)


def holds(pred, duration, interval=0.02):
    """True if pred() stays true for duration seconds (checked every
    interval); False as soon as it does not. For "this does not happen"."""
    deadline = time.monotonic() + duration
    while True:
        if not pred():
            return False
        left = deadline - time.monotonic()
        if left <= 0:
            return True
        time.sleep(min(interval, left))


# ---------------------------------------------------------------------------
# a process's log, read in a thread

class LogPump:
    """Collects the lines of a text stream in a thread; wait_log() waits for
    a line matching a regex. None is appended when the stream ends."""

    def __init__(self, stream, name="process"):
        self.name = name
        self.lines = []
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self.thread.start()

    def _pump(self, stream):
        try:
            for line in stream:
                with self.cond:
                    self.lines.append(line.rstrip("\n"))
                    self.cond.notify_all()
        except (OSError, ValueError):
            pass
        with self.cond:
            self.lines.append(None)
            self.cond.notify_all()

    def text(self):
        with self.cond:
            return "\n".join(l for l in self.lines if l is not None)

    def mark(self):
        """A position for wait_log(start=...): only lines after now."""
        with self.cond:
            return len(self.lines)

    def ended(self):
        with self.cond:
            return bool(self.lines) and self.lines[-1] is None

    def wait_log(self, pattern, timeout=10, start=0, on_end=None):
        """The first line from index start matching the regex pattern; fails
        the test on timeout, or when the stream ends first (on_end() gives
        the message's first line then)."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.cond:
            i = start
            while True:
                while i < len(self.lines):
                    line = self.lines[i]
                    if line is None:
                        head = on_end() if on_end else "%s ended" % self.name
                        pytest.fail("%s before logging %r:\n%s" % (head, pattern, self.text()))
                    if rx.search(line):
                        return line
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail("no log line matching %r from %s within %g s:\n%s"
                                % (pattern, self.name, timeout, self.text()))
                self.cond.wait(left)

    def join(self, timeout=5):
        self.thread.join(timeout)


# ---------------------------------------------------------------------------
# processes

def pid_state(pid):
    """'gone', 'zombie' or 'alive'."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("State:"):
                    return "zombie" if line.split()[1] in ("Z", "X") else "alive"
    except OSError:
        return "gone"
    return "alive"


def pid_alive(pid):
    return pid_state(pid) == "alive"


def is_fork_server(pid):
    """Whether pid is a pp fork server: its command line runs
    pp._boot.TEMPLATE_BOOT. The workers it forks keep that command line, so
    only the parent tells them apart: a fork server's is not one."""
    return _runs_template(pid) and not _runs_template(_ppid(pid))


def _runs_template(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"w.template()" in f.read()
    except OSError:
        return False


def _ppid(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
        return int(data[data.rfind(")") + 2:].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


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
        children.setdefault(int(rest[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


# x86_64 numbers (the CI machine's); /proc/PID/syscall gives the number of the
# system call a blocked thread is in, "running" while it runs
_SLEEP_SYSCALLS = {"35", "230"}   # nanosleep, clock_nanosleep: time.sleep()
_FUTEX_SYSCALLS = {"202"}          # futex: waiting on a lock/condition variable


def syscall(pid, tid=None):
    """The number (a string) of the system call thread tid (default: the main
    thread) of pid is blocked in, "running", or None if it is gone."""
    try:
        with open("/proc/%d/task/%d/syscall" % (pid, tid or pid)) as f:
            return f.read().split()[0]
    except (OSError, IndexError):
        return None


def in_sleep(pid):
    """True if pid's main thread is in time.sleep() (e.g. a worker running a
    sleeping job, rather than waiting for one)."""
    return syscall(pid) in _SLEEP_SYSCALLS


def in_futex_wait(pid):
    """True if pid's main thread waits on a lock or condition variable."""
    return syscall(pid) in _FUTEX_SYSCALLS


def settled(fn, quiet, timeout, interval=0.05):
    """fn()'s value once it has not changed for quiet seconds; fails the test
    if it keeps changing for timeout seconds."""
    box = {"v": fn(), "t": time.monotonic()}

    def still():
        v = fn()
        now = time.monotonic()
        if v != box["v"]:
            box["v"], box["t"] = v, now
        return now - box["t"] >= quiet

    wait_for(still, timeout, what=lambda: "value still changing: %r" % (box["v"],),
             interval=interval)
    return box["v"]


def kill_pids(pids, sig=signal.SIGKILL):
    for p in pids:
        if pid_alive(p):
            try:
                os.kill(p, sig)
            except (ProcessLookupError, PermissionError):
                pass


def wait_pids_gone(pids, timeout=5.0):
    """Wait until none of pids is a live process; return those still alive."""
    deadline = time.monotonic() + timeout
    alive = [p for p in pids if pid_alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if pid_alive(p)]
    return alive


# ---------------------------------------------------------------------------
# ppserver nodes

def node_env(secret=SECRET, extra=None):
    """The environment of a node: PP_SECRET (unset when secret is None) and
    the repository's python/ on PYTHONPATH."""
    env = dict(os.environ)
    env.pop("PP_SECRET", None)
    if secret is not None:
        env["PP_SECRET"] = secret
    env["PYTHONPATH"] = str(REPO / "python")
    if extra:
        env.update(extra)
    return env


_running = set()  # PPServer instances not yet stopped


def stop_all_ppservers():
    """Stop every PPServer still running (e.g. before a watchdog ends the run)."""
    for n in list(_running):
        try:
            n.stop()
        except Exception:  # noqa: BLE001 - best effort on the way out
            pass


class PPServer:
    """bin/ppserver on 127.0.0.1 with its stderr log collected.

    Started on port 0 (the node binds a free port and logs it; it is read
    back into .port), or on port=N (e.g. to restart at the same address).
    With ready=True the constructor returns once the node listens and has
    `ready_workers` (default: workers) worker processes. With nofile=N it
    runs under `prlimit --nofile=N` (soft and hard open-files limit; prlimit
    execs the node, so the pid is the node's). program= runs another
    ppserver (e.g. an installed copy) instead of bin/ppserver. stop() kills
    it and its workers by pid; the `ppserver` fixture always calls it."""

    def __init__(self, *args, secret=SECRET, workers=1, port=0, env=None, ready=True,
                 ready_workers=None, pid_file=None, python=sys.executable,
                 host="127.0.0.1", nofile=None, program=None):
        self.args = list(args)
        self.program = str(program or PPSERVER_BIN)
        self.nofile = nofile
        self.secret = secret
        self.workers = workers
        self.host = host
        self.env = env
        self.pid_file = Path(pid_file) if pid_file else None
        self.python = python
        self.port = port or None
        self.proc = None
        self.start(ready=ready, ready_workers=ready_workers)

    @property
    def addr(self):
        """"127.0.0.1:port", as named in ppservers=."""
        return "%s:%d" % (self.host, self.port)

    @property
    def pid(self):
        return self.proc.pid

    def start(self, ready=True, ready_workers=None):
        """(Re)start the node, on its previous port if it had one."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("ppserver %s is still running" % self.pid)
        argv = [self.program, "-i", self.host, "-p", str(self.port or 0),
                "-w", str(self.workers)]
        if self.nofile:
            argv = ["prlimit", "--nofile=%d" % self.nofile, "--"] + argv
        if self.python:
            argv += ["--python", self.python]
        if self.pid_file:
            argv += ["-P", str(self.pid_file)]
        argv += self.args
        self.proc = subprocess.Popen(argv, env=self.env or node_env(self.secret),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True, errors="replace")
        self.log_pump = LogPump(self.proc.stderr, "ppserver %d" % self.proc.pid)
        _running.add(self)
        if ready:
            line = self.wait_log(r"listening on \S+:\d+ ", timeout=15)
            self.port = int(re.search(r"listening on \S+:(\d+) ", line).group(1))
            self.wait_workers(self.workers if ready_workers is None else ready_workers)
        return self

    # -- its log ---------------------------------------------------------
    @property
    def lines(self):
        return self.log_pump.lines

    def log(self):
        return self.log_pump.text()

    def mark(self):
        return self.log_pump.mark()

    def wait_log(self, pattern, timeout=10, start=0):
        """The first log line (from index start) matching the regex."""
        return self.log_pump.wait_log(pattern, timeout, start, on_end=self._exited)

    def _exited(self):
        try:
            rc = self.proc.wait(timeout=5)  # it closed its log: it is exiting
        except subprocess.TimeoutExpired:
            rc = None
        return "ppserver exited (rc=%s)" % rc

    # -- its processes ---------------------------------------------------
    def worker_pids(self):
        """The node's live worker processes (its fork server is none)."""
        return [p for p in descendants(self.pid)
                if pid_state(p) == "alive" and not is_fork_server(p)]

    def fork_server_pids(self):
        """The node's live fork servers (one, unless one is being replaced)."""
        return [p for p in descendants(self.pid)
                if pid_state(p) == "alive" and is_fork_server(p)]

    def wait_workers(self, n, timeout=15):
        """Wait until the node has at least n live worker processes."""
        found = []

        def enough():
            found[:] = self.worker_pids()
            return len(found) >= n
        wait_for(enough, timeout, what=lambda: "ppserver did not start %d workers:\n%s"
                 % (n, self.log()), interval=0.05)
        return list(found)

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def send_signal(self, sig):
        if self.running():
            os.kill(self.pid, sig)

    def wait_exit(self, timeout=10):
        """The node's exit status; fails the test if it does not exit in time."""
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail("ppserver did not exit within %g s:\n%s" % (timeout, self.log()))
        self.log_pump.join(timeout=5)  # its last log lines
        return rc

    def stop(self):
        """SIGKILL the node and its workers (found before the kill), by pid;
        wait for the node. Safe to call more than once."""
        if self.proc is None:
            return
        kids = descendants(self.pid) if self.proc.poll() is None else []
        if self.proc.poll() is None:
            try:
                os.kill(self.pid, signal.SIGCONT)  # if it was stopped
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        kill_pids(kids)
        _running.discard(self)
        self.log_pump.join(timeout=5)
        if self.proc.stderr:
            self.proc.stderr.close()

    def kill(self, sig=signal.SIGKILL):
        """SIGKILL: stop(); any other signal is just sent (SIGSTOP, SIGTERM...)."""
        if sig == signal.SIGKILL:
            self.stop()
        else:
            self.send_signal(sig)
