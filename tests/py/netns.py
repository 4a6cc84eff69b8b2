"""Linux network-namespace harness for multi-host tests.

A `Lab` builds a small private LAN out of network namespaces: every host is a namespace
joined by a veth pair to one Linux bridge, and the bridge lives in its own "switch"
namespace, so nothing is created in the caller's namespace except namespace names.
Subnet 10.77.0.0/24, broadcast 10.77.0.255; host i (1, 2, ...) gets 10.77.0.(10+i).

    from netns import lab_or_skip

    def test_something():
        with lab_or_skip("demo") as lab:
            a, b = lab.add_host("a"), lab.add_host("b")
            srv = b.popen([sys.executable, "-m", "http.server", "8000"])
            a.run(["curl", f"http://{b.ip}:8000/"], capture_output=True)
            b.unplug()        # b vanishes from the LAN; its connections are not closed
            b.plug()

Processes started with Host.popen are tracked; Lab.close() (also run by `with`, and by
atexit as a last resort) SIGKILLs them and every other process still inside a lab
namespace, then deletes all the lab's namespaces.  Namespaces left behind by a crashed
run (named ppt<PID>-... with PID no longer alive) are deleted when a new Lab is created.

Needs root and iproute2's `ip`; check_available() says why the harness cannot work.
"""
import atexit
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

__all__ = ["Unavailable", "IPCommandError", "check_available", "Host", "Lab", "lab_or_skip"]

SUBNET = "10.77.0.0/24"
BROADCAST = "10.77.0.255"
_PREFIXLEN = 24
_BRIDGE = "br0"
_IP_TIMEOUT = 10.0        # seconds for any single `ip` command
_READY_TIMEOUT = 5.0      # seconds to wait for a port to become forwarding
_KILL_TIMEOUT = 5.0       # seconds close() spends killing processes
_NS_RE = re.compile(r"^ppt(\d+)-")


class Unavailable(Exception):
    """Network namespaces cannot be used here; str(exc) says why."""


class IPCommandError(RuntimeError):
    """An `ip` command failed or timed out; the message holds the command and its stderr."""


def _find_ip():
    found = shutil.which("ip")
    if found:
        return found
    for cand in ("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"):
        if os.access(cand, os.X_OK):
            return cand
    return None


IP = _find_ip()


def _netns_dir():
    for d in ("/run/netns", "/var/run/netns"):
        if os.path.isdir(d):
            return d
    return "/run/netns"


def _ip(args, input=None, timeout=_IP_TIMEOUT):
    """Run `ip ARGS`, bounded; raise IPCommandError (with stderr) on failure."""
    if IP is None:
        raise IPCommandError("iproute2 `ip` command not found")
    cmd = [IP] + list(args)
    try:
        res = subprocess.run(cmd, input=input, capture_output=True, text=True,
                             timeout=timeout, stdin=None if input is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise IPCommandError(f"{' '.join(cmd)}: timed out after {timeout} s"
                             f"{_fmt_stderr(e.stderr)}") from None
    if res.returncode != 0:
        extra = f"\ninput:\n{input}" if input else ""
        raise IPCommandError(f"{' '.join(cmd)}: exit status {res.returncode}"
                             f"{_fmt_stderr(res.stderr)}{extra}")
    return res.stdout


def _fmt_stderr(err):
    if isinstance(err, bytes):
        err = err.decode(errors="replace")
    err = (err or "").strip()
    return f"\nstderr: {err}" if err else ""


def _ip_batch(ns, lines, force=False):
    """Run several `ip` commands in one process, inside namespace ns (None: our own)."""
    args = (["-n", ns] if ns else []) + (["-force"] if force else []) + ["-batch", "-"]
    return _ip(args, input="\n".join(lines) + "\n")


def list_namespaces():
    """Names of all named network namespaces (what `ip netns list` shows)."""
    try:
        return sorted(os.listdir(_netns_dir()))
    except FileNotFoundError:
        return []
    except OSError:
        out = _ip(["netns", "list"])
        return [line.split()[0] for line in out.splitlines() if line.strip()]


def _pid_dead(pid):
    """True when pid is not a running process (gone or a zombie)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("State:"):
                    return line.split()[1] in ("Z", "X")
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _ns_pids(names):
    """{pid: ns name} for every live process inside one of the named namespaces.

    Same method as `ip netns pids`, but one /proc scan for all namespaces."""
    ids = {}
    d = _netns_dir()
    for name in names:
        try:
            st = os.stat(os.path.join(d, name))
        except OSError:
            continue
        ids[(st.st_dev, st.st_ino)] = name
    found = {}
    if not ids:
        return found
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        name = ids.get((st.st_dev, st.st_ino))
        if name is not None:
            found[int(entry)] = name
    return found


def _kill_in_namespaces(names, deadline):
    """SIGKILL every process in the namespaces until none is left or deadline passes."""
    while True:
        pids = _ns_pids(names)
        if not pids:
            return []
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if time.monotonic() >= deadline:
            return sorted(pids)
        time.sleep(0.02)


def _delete_namespaces(names):
    """Delete the named namespaces; return the names that are still there."""
    names = [n for n in names if n in set(list_namespaces())]
    if not names:
        return []
    try:
        _ip_batch(None, [f"netns del {n}" for n in names], force=True)
    except IPCommandError:
        pass
    left = [n for n in names if n in set(list_namespaces())]
    for n in left:
        try:
            _ip(["netns", "del", n])
        except IPCommandError:
            pass
    present = set(list_namespaces())
    return [n for n in names if n in present]


def cleanup_stale():
    """Delete namespaces ppt<PID>-... whose PID is not a live process (crashed runs).

    Processes still inside them are killed first.  Returns the names deleted."""
    stale = []
    me = os.getpid()
    for name in list_namespaces():
        m = _NS_RE.match(name)
        if m and int(m.group(1)) != me and _pid_dead(int(m.group(1))):
            stale.append(name)
    if stale:
        _kill_in_namespaces(stale, time.monotonic() + _KILL_TIMEOUT)
        _delete_namespaces(stale)
    return stale


_avail_lock = threading.Lock()
_avail_cache = []   # [reason or None] once computed
_seq_lock = threading.Lock()
_seq = [0]


def _next_seq():
    with _seq_lock:
        _seq[0] += 1
        return _seq[0]


def check_available():
    """None when the harness can work here; else a human-readable reason why not.

    Checks root, `ip`, and actually creates (and deletes) a namespace holding a bridge and
    a veth pair, and runs a program inside it.  The answer is cached per process."""
    with _avail_lock:
        if not _avail_cache:
            _avail_cache.append(_probe())
        return _avail_cache[0]


def _probe():
    if not sys.platform.startswith("linux"):
        return f"network namespaces need Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "network namespaces need root (euid is %d)" % os.geteuid()
    if IP is None:
        return "iproute2 `ip` command not found"
    name = f"ppt{os.getpid()}-chk-{_next_seq()}"
    try:
        try:
            _ip(["netns", "add", name])
        except IPCommandError as e:
            return f"cannot create a network namespace: {e}"
        try:
            _ip_batch(name, [
                "link set lo up",
                f"link add {_BRIDGE} type bridge stp_state 0 forward_delay 0",
                "link add p1 master br0 up type veth peer name v1",
                "link set v1 up",
                f"link set {_BRIDGE} up",
            ])
        except IPCommandError as e:
            return f"cannot create a bridge and veth pair in a namespace: {e}"
        try:
            res = subprocess.run([IP, "netns", "exec", name, "true"], capture_output=True,
                                 text=True, timeout=_IP_TIMEOUT, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return "`ip netns exec` timed out"
        if res.returncode != 0:
            return f"`ip netns exec` does not work here:{_fmt_stderr(res.stderr)}"
        return None
    except Exception as e:  # noqa: BLE001 - anything unexpected means "unavailable"
        return f"network namespace probe failed: {e!r}"
    finally:
        try:
            _kill_in_namespaces([name], time.monotonic() + 2)
            if _delete_namespaces([name]):
                return f"cannot delete network namespace {name}"
        except Exception:  # noqa: BLE001
            pass


def _link_json(ns, dev):
    out = _ip(["-n", ns, "-j", "-d", "link", "show", "dev", dev])
    data = json.loads(out)
    return data[0] if data else {}


class Host:
    """One host of a Lab: a network namespace with one interface on the lab's LAN."""

    def __init__(self, lab, index, name, ns, ip):
        self.lab = lab
        self.index = index
        self.name = name
        self.ns = ns
        self.ip = ip
        self.dev = f"v{index}"          # interface inside the host
        self.port = f"p{index}"         # its peer, a bridge port in the switch namespace
        self.plugged = True

    def __repr__(self):
        return f"<Host {self.name} {self.ip} ns={self.ns}>"

    def _argv(self, argv):
        if isinstance(argv, (str, bytes)):
            raise TypeError("argv must be a sequence of strings, not a string")
        return [IP, "netns", "exec", self.ns] + [os.fspath(a) for a in argv]

    def popen(self, argv, **kw):
        """Start argv inside this host's namespace; return the Popen (tracked by the lab).

        `ip netns exec` execs the program, so proc.pid is the program's own pid."""
        if self.lab.closed:
            raise RuntimeError("lab is closed")
        proc = subprocess.Popen(self._argv(argv), **kw)
        self.lab._track(proc)
        return proc

    def run(self, argv, timeout=30, **kw):
        """Run argv inside the namespace to completion (subprocess.run; bounded by timeout)."""
        if self.lab.closed:
            raise RuntimeError("lab is closed")
        return subprocess.run(self._argv(argv), timeout=timeout, **kw)

    def kill(self, proc, sig=signal.SIGKILL, timeout=10.0):
        """Send sig to proc (by pid) and reap it.

        Returns its exit status, or None when it did not exit within timeout (it then
        stays tracked and is SIGKILLed at close)."""
        if proc.poll() is None:
            try:
                os.kill(proc.pid, sig)
            except ProcessLookupError:
                pass
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        self.lab._untrack(proc)
        return rc

    def unplug(self):
        """Take this host off the LAN: its switch port goes down.

        Like pulling its cable at the switch: nothing in the host is closed or reset,
        packets to and from it are silently dropped (its interface shows NO-CARRIER)."""
        _ip(["-n", self.lab.switch, "link", "set", self.port, "down"])
        self.plugged = False

    def plug(self):
        """Put the host back on the LAN; returns once its port forwards again."""
        _ip(["-n", self.lab.switch, "link", "set", self.port, "up"])
        self.plugged = True
        self.lab._wait_ready(self)


_open_labs = set()
_open_labs_lock = threading.Lock()


def _close_all_at_exit():
    with _open_labs_lock:
        labs = list(_open_labs)
    for lab in labs:
        lab.close()


atexit.register(_close_all_at_exit)


class Lab:
    """Context manager. Hosts are network namespaces joined by veth pairs to one Linux bridge
    that lives in its own 'switch' namespace (nothing is created in the caller's own namespace
    except the namespace names). Subnet 10.77.0.0/24, broadcast 10.77.0.255; host i gets
    10.77.0.(10+i).

    Namespace names: f"ppt{pid}-{tag}-{seq}-sw" for the switch and
    f"ppt{pid}-{tag}-{seq}-h{i}" for host i (seq counts Labs in this process); all of
    them start with self.prefix."""

    subnet = SUBNET
    broadcast = BROADCAST
    MAX_HOSTS = 244

    def __init__(self, tag="lab"):
        if not re.fullmatch(r"[A-Za-z0-9_.]+", tag or ""):
            raise ValueError(f"tag must be non-empty [A-Za-z0-9_.], got {tag!r}")
        self.tag = tag
        self.owner_pid = os.getpid()
        self.prefix = f"ppt{self.owner_pid}-{tag}-{_next_seq()}-"
        self.switch = self.prefix + "sw"
        self.hosts = {}               # name -> Host, in creation order
        self.closed = False
        self._namespaces = []         # every namespace we (may have) created
        self._procs = []
        self._lock = threading.Lock()
        self._close_lock = threading.Lock()
        try:
            cleanup_stale()
        except Exception as e:  # noqa: BLE001 - stale cleanup is best effort
            print(f"netns: stale namespace cleanup failed: {e}", file=sys.stderr)
        with _open_labs_lock:
            _open_labs.add(self)
        try:
            self._namespaces.append(self.switch)
            _ip(["netns", "add", self.switch])
            _ip_batch(self.switch, [
                "link set lo up",
                f"link add {_BRIDGE} type bridge stp_state 0 forward_delay 0 mcast_snooping 0",
                f"link set {_BRIDGE} up",
            ])
        except BaseException:
            self.close()
            raise

    def __repr__(self):
        return f"<Lab {self.prefix}* hosts={list(self.hosts)}{' closed' if self.closed else ''}>"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    # -- hosts -------------------------------------------------------------------------

    def add_host(self, name):
        """Create host `name` and plug it in; broadcast reaches it as soon as this returns."""
        if self.closed:
            raise RuntimeError("lab is closed")
        name = str(name)
        with self._lock:
            if name in self.hosts:
                raise ValueError(f"host {name!r} already exists")
            index = len(self.hosts) + 1
            if index > self.MAX_HOSTS:
                raise ValueError(f"at most {self.MAX_HOSTS} hosts")
            ns = f"{self.prefix}h{index}"
            host = Host(self, index, name, ns, f"10.77.0.{10 + index}")
            self.hosts[name] = host
            self._namespaces.append(ns)
        _ip(["netns", "add", ns])
        # the bridge port first (up, no carrier yet), then the host side: bringing the
        # host's veth up gives both ends carrier at once
        _ip(["-n", self.switch, "link", "add", host.port, "master", _BRIDGE, "up",
             "type", "veth", "peer", "name", host.dev, "netns", ns])
        _ip_batch(ns, [
            "link set lo up",
            f"addr add {host.ip}/{_PREFIXLEN} brd {self.broadcast} dev {host.dev}",
            f"link set {host.dev} up",
        ])
        self._wait_ready(host)
        return host

    def host(self, name):
        return self.hosts[name]

    def _wait_ready(self, host):
        """Wait until the host's bridge port forwards and both veth ends can transmit.

        Carrier-on is handled asynchronously by the kernel (linkwatch), which is what
        moves the port to 'forwarding' and replaces the 'noop' (drop-all) qdisc."""
        deadline = time.monotonic() + _READY_TIMEOUT
        delay = 0.001
        while True:
            port = _link_json(self.switch, host.port)
            state = port.get("linkinfo", {}).get("info_slave_data", {}).get("state")
            ok = state == "forwarding" and port.get("qdisc") != "noop" \
                and port.get("operstate") == "UP"
            if ok:
                dev = _link_json(host.ns, host.dev)
                ok = dev.get("qdisc") != "noop" and dev.get("operstate") == "UP"
                if ok:
                    return
            if time.monotonic() >= deadline:
                raise IPCommandError(
                    f"host {host.name}: port {host.port} not ready after {_READY_TIMEOUT} s "
                    f"(bridge state {state!r}, port operstate {port.get('operstate')!r})")
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    # -- processes ---------------------------------------------------------------------

    def _track(self, proc):
        with self._lock:
            self._procs.append(proc)

    def _untrack(self, proc):
        with self._lock:
            if proc in self._procs:
                self._procs.remove(proc)

    def pids(self):
        """{pid: namespace} of every live process inside the lab's namespaces."""
        return _ns_pids(self._namespaces)

    # -- teardown ----------------------------------------------------------------------

    def close(self):
        """Kill every tracked process and every process still inside a lab namespace, then
        delete all the lab's namespaces. Idempotent, never raises, bounded in time.
        Does nothing in a forked child (only the creating process cleans up)."""
        if os.getpid() != self.owner_pid:
            return
        with self._close_lock:
            if self.closed:
                return
            self.closed = True
            try:
                self._close()
            except BaseException as e:  # noqa: BLE001 - close must never raise
                print(f"netns: error while closing {self.prefix}*: {e!r}", file=sys.stderr)
            finally:
                with _open_labs_lock:
                    _open_labs.discard(self)

    def _close(self):
        deadline = time.monotonic() + _KILL_TIMEOUT
        with self._lock:
            procs = list(self._procs)
        for p in procs:
            if p.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        left = _kill_in_namespaces(self._namespaces, deadline)
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            for f in (p.stdin, p.stdout, p.stderr):
                try:
                    if f is not None:
                        f.close()
                except OSError:
                    pass
        with self._lock:
            self._procs = [p for p in self._procs if p.returncode is None]
        if left:
            print(f"netns: processes {left} survived SIGKILL in {self.prefix}*", file=sys.stderr)
        still = _delete_namespaces(self._namespaces)
        if still:
            print(f"netns: could not delete namespaces {still}", file=sys.stderr)


def lab_or_skip(tag):
    """A new Lab, or pytest.skip(reason) when namespaces cannot be used here."""
    reason = check_available()
    if reason is not None:
        import pytest
        pytest.skip(f"network namespaces unavailable: {reason}")
    return Lab(tag)
