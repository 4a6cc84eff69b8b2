"""ppft — ppft's API (the "pp fork" pathos is built on) running on pp's C
engine, so that ppft programs and pathos's pp-based pools (ParallelPool,
pp_map) run unchanged:

    import ppft as pp
    job_server = pp.Server(ppservers=())
    job = job_server.submit(sum_primes, (100,), (isprime,), ("math",))
    print(job())

What ppft programs use is here: Server (ppft's positional order: ncpus,
ppservers, secret, restart, proto, socket_timeout; any pp.Server keyword
besides), Template, _Task (the job class: constructible as ppft's, and
subclassable the way pathos's ApplyResult does), DestroyedServerError,
ppft.common (b_, str_), Server.ppservers as a list of (host, port),
Server.auto_ppservers (pp 1.x's ((interface, port), (broadcast, port))
pairs for "*" and subnet entries such as "192.168.1.*"), Server._exiting
(True once the server is destroyed or closed to new jobs; pathos sets it to
close a pool and clears it to reopen one), and on each task finished,
sresult (the pickled (result, output) pair), lock (held until the task
finishes), group, unpickled, server and tid. submit also passes pp's job
control through (timeout=, memory_limit=, retries=).

Where pp deliberately differs from ppft:
  * A job that raises re-raises its exception (with the remote traceback)
    from task(); ppft printed the traceback and returned None. Its sresult
    still holds (None, traceback text), as ppft's did.
  * There is no default secret: ppservers need secret=...
    (Server.default_secret is None).
  * socket_timeout is accepted and ignored: node liveness is pp's
    node_timeout and the longest a job may run is job_timeout.
  * Subnet entries ("192.168.1.*", "10.0.*.*:35000") are listed in
    auto_ppservers as ppft lists them and passed to pp.Server as they are:
    discovery on their port, asking that subnet's broadcast address too,
    using only nodes in the subnet (unless a "*" entry is given as well).
    Entries with a "*" before a number ("10.*.0.*") fall back to "*".

pp and ppft side by side: this module belongs to pp, and ppft installs a
top-level "pp" alias of itself the same way, so the two distributions
provide the same two import names and must not be installed into the same
environment (pip reports the clash). With pp installed, "import ppft" and
"import pp" both run on pp's engine; to use the original ppft, install it
in an environment of its own."""
from __future__ import annotations

import logging
import pickle
import threading
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import pp as _pp
from pp import Template  # noqa: F401 - ppft's Template has the same shape
from pp import _core
from pp._server import Statistics as _Statistics  # noqa: F401

from . import common  # noqa: F401

version = __version__ = _pp.__version__
copyright = _pp.copyright

__all__ = ["Server", "Template", "DestroyedServerError", "version",
           "__version__"]


class DestroyedServerError(_pp.DestroyedError, RuntimeError):
    """Raised when a job is submitted to (or waited on from) a destroyed
    or closed Server (ppft's exception; also a pp.DestroyedError)."""


class _Task:
    """One submitted job, as ppft shapes it. ppft's constructor
    (_Task(server, tid, callback=None, callbackargs=(), group='default')
    makes a pending task finished by finalize(sresult)); a task returned by
    Server.submit is tied to a pp job and finishes with it, on the Server's
    callback thread. Other attributes (status, stdout, result(timeout),
    done(), ...) are the pp job's."""

    def __init__(self, server: Any, tid: int, callback: Optional[Callable] = None,
                 callbackargs: tuple = (), group: str = "default") -> None:
        self.lock = threading.Lock()
        self.lock.acquire()
        self.tid = tid
        self.server = server
        self.callback = callback
        self.callbackargs = callbackargs
        self.group = group
        self.finished = False
        self.unpickled = False
        self._job = None
        self._sresult = None

    # -- ppft's protocol -----------------------------------------------------
    @property
    def sresult(self) -> Optional[bytes]:
        """The pickled (result, output) of the finished task, as ppft's
        workers sent it; (None, traceback text) for a job that raised."""
        if self._sresult is None and self._job is not None and \
                self._job.done():
            job = self._job
            try:
                value = job.result()
                out = job.stdout
            except BaseException as e:  # noqa: B902 - reported as ppft did
                value = None
                out = getattr(e, "remote_traceback", None) or \
                    "%s: %s" % (type(e).__name__, e)
            self._sresult = pickle.dumps((value, out))
        return self._sresult

    @sresult.setter
    def sresult(self, value: bytes) -> None:
        self._sresult = value

    def finalize(self, sresult: bytes) -> None:
        """Finish a task made with ppft's constructor: store sresult, call
        the callback (if any) with the result, release the lock."""
        self.sresult = sresult
        if self.callback:
            self._unpickle()
        self.lock.release()
        self.finished = True

    def _unpickle(self) -> None:
        self.result, sout = pickle.loads(common.b_(self.sresult))
        self.unpickled = True
        if len(sout) > 0:
            print(sout, end=" ")
        if self.callback:
            self.callback(*(tuple(self.callbackargs) + (self.result,)))

    def __call__(self, raw_result: bool = False) -> Any:
        """The task's result (waiting for it); its sresult with
        raw_result=True. A tied task re-raises its job's exception."""
        job = self._job
        if not self.finished and getattr(self.server, "_exiting", False) \
                and (job is None or not job.done()):
            raise DestroyedServerError(
                "Server was destroyed before the job completion")
        if job is None:
            self.wait()
            if not self.unpickled and not raw_result:
                self._unpickle()
            return self.sresult if raw_result else self.result
        if raw_result:
            job.wait()
            return self.sresult
        try:
            value = job()
        except _pp.DestroyedError as e:
            raise DestroyedServerError(str(e)) from e
        self.result = value
        self.unpickled = True
        return value

    def wait(self) -> None:
        """Wait until the task has finished."""
        if not self.finished:
            self.lock.acquire()
            self.lock.release()

    def _done(self, job: Any) -> None:
        """The tied job finished (callback thread): mark the task finished
        and release its lock. pp has run the callback already."""
        self.finished = True
        self.lock.release()

    def __getattr__(self, name: str) -> Any:
        job = self.__dict__.get("_job")
        if job is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(job, name)

    def __repr__(self) -> str:
        return "<ppft._Task %s %s>" % (self.tid, "finished" if self.finished
                                       else "pending")


def _parse_ppservers(ppservers):
    """ppft's ppservers -> (entries for pp.Server, [(host, port)],
    auto_ppservers). A host with "*" ("*", "192.168.1.*") is pp 1.x's
    auto-discovery on that subnet: ((interface, port), (broadcast, port))
    with each "*" read as 0 and as 255."""
    entries, hosts, auto = [], [], []
    for entry in ppservers:
        if not isinstance(entry, str):
            raise TypeError("ppservers entries must be strings, not %r"
                            % (entry,))
        if "*" in entry:
            host, sep, port_s = entry.partition(":")
            port = int(port_s) if sep else Server.default_port
            if not 0 < port < 65536 or host.count(".") not in (0, 3) or \
                    (host != "*" and not all(p == "*" or p.isdigit() and
                                             int(p) < 256
                                             for p in host.split("."))):
                raise ValueError("bad ppservers entry %r" % (entry,))
            if host == "*":
                host = "*.*.*.*"
            auto.append(((host.replace("*", "0"), port),
                         (host.replace("*", "255"), port)))
            try:
                subnet = _core.parse_ppserver(entry)[0] == "subnet"
            except ValueError:
                subnet = False
            if subnet:
                spec = entry
            else:
                spec = "*" if port == Server.default_port else "*:%d" % port
            if spec not in entries:
                entries.append(spec)
            continue
        kind, host, port = _core.parse_ppserver(entry)
        hosts.append((host, port))
        entries.append(entry)
    return entries, hosts, auto


class Server(_pp.Server):
    """ppft.Server(ncpus='autodetect', ppservers=(), secret=None,
    restart=False, proto=2, socket_timeout=3600, **pp_options): a
    pp.Server with ppft's argument order and attributes (see the module's
    documentation). ppservers must be a tuple, as in ppft."""

    default_secret = None

    def __init__(self, ncpus: Any = "autodetect", ppservers: tuple = (),
                 secret: Any = None, restart: bool = False, proto: int = 2,
                 socket_timeout: Optional[float] = 3600,
                 **pp_options: Any) -> None:
        self._ppft_closed = False
        if not isinstance(ppservers, tuple):
            raise TypeError("ppservers argument must be a tuple")
        entries, hosts, auto = _parse_ppservers(ppservers)
        super().__init__(ncpus, tuple(entries), secret, restart=restart,
                         proto=proto, socket_timeout=socket_timeout,
                         **pp_options)
        self.ppservers: List[Tuple[str, int]] = hosts
        self.auto_ppservers: List[Tuple[Tuple[str, int], Tuple[str, int]]] = auto
        self.logger = logging.getLogger("pp")

    @property
    def _exiting(self) -> bool:
        """ppft's flag: True once the server is destroyed, or while it is
        closed to new jobs (set True to close, False to reopen a server
        that was not destroyed)."""
        return bool(self._closed or self._ppft_closed)

    @_exiting.setter
    def _exiting(self, value: bool) -> None:
        self._ppft_closed = bool(value)

    def submit(self, func: Callable, args: tuple = (), depfuncs: tuple = (),
               modules: tuple = (), callback: Optional[Callable] = None,
               callbackargs: tuple = (), group: str = "default",
               globals: Optional[Dict[str, Any]] = None,
               **job_control: Any) -> _Task:
        """ppft's submit: the same checks (TypeError for arguments that are
        not tuples), a _Task back. job_control: pp's timeout=,
        memory_limit=, retries=."""
        if self._exiting:
            raise DestroyedServerError(
                "Cannot submit jobs: server instance has been destroyed")
        for name, value in (("args", args), ("depfuncs", depfuncs),
                            ("modules", modules),
                            ("callbackargs", callbackargs)):
            if not isinstance(value, tuple):
                raise TypeError("%s argument must be a tuple" % name)
        try:
            job = super().submit(func, args, depfuncs, modules, callback,
                                 callbackargs, group, globals, **job_control)
        except _pp.DestroyedError as e:
            raise DestroyedServerError(str(e)) from e
        task = _Task(self, job.tid, callback, callbackargs, group)
        task._job = job
        job.add_done_callback(task._done)
        return task

    def wait(self, group: Optional[str] = None) -> None:
        """Wait for every job (of group), their callbacks included."""
        super().wait(group)
