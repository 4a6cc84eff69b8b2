"""pp.Server, pp.Template, pp.Job and pp.as_completed: Parallel Python's API
over the C engine (pp._core). This layer shapes arguments, pickles them in the
caller's thread and runs callbacks on one thread per Server; queueing,
scheduling and worker processes are the engine's.

pp.Job is a concurrent.futures.Future (so concurrent.futures.wait,
as_completed, asyncio.wrap_future and `await job` work) without paying for
one: Future.__init__ never runs, the state is read from the C record, and the
waiter protocol (_condition, _state, _waiters) is built only for the jobs a
caller actually waits on that way."""
from __future__ import annotations

import atexit
import collections
import concurrent.futures as _cf
import itertools
import logging
import math
import os
import pickle
import queue
import sys
import threading
import time
import types
import weakref
from concurrent.futures import _base as _cfb
from typing import (IO, Any, Callable, Dict, Iterable, Iterator, List,
                    Optional, Sequence, Tuple, Union)

from . import _boot, _core, _logging, _objects, _oob, _ship
from ._errors import (CancelledError, DestroyedError, JobAbortedError,
                      JobTimeoutError, PPError, RemoteError,
                      RemoteTraceback, SerializationError, WorkerLostError)

_log = logging.getLogger("pp")
_cb_lock = threading.Lock()  # guards Job._done_callbacks
_RAN = ("callbacks ran",)    # sentinel in Job._done_callbacks
_servers = weakref.WeakSet()
_FCACHE_MAX = 1024
class _WaitLock:
    """The _condition of every Job (concurrent.futures.wait and as_completed
    take it around reading _state and installing waiters): one reentrant
    lock for all jobs, held only for those steps and while a finished job's
    waiters are told. Each outermost acquisition starts a new epoch; a job's
    _state is read once per epoch, because concurrent.futures expects a
    future's state not to change while the lock is held, and a pp job
    finishes in the engine without taking it."""

    def __init__(self):
        self._lock = threading.RLock()
        self._depth = 0   # nesting of the owner's acquisitions
        self.epoch = 0

    def acquire(self, blocking=True, timeout=-1):
        if not self._lock.acquire(blocking, timeout):
            return False
        self._depth += 1
        if self._depth == 1:
            self.epoch += 1
        return True

    def release(self):
        self._depth -= 1
        self._lock.release()

    __enter__ = acquire

    def __exit__(self, *exc):
        self.release()


_wcond = _WaitLock()


class Statistics:
    """Per-node job statistics, as pp's get_stats() returns them."""

    def __init__(self, ncpus, rworker=None):
        self.ncpus = ncpus
        self.time = 0.0
        self.njobs = 0
        self.rworker = rworker

    def __repr__(self):
        return "Statistics(ncpus=%d, njobs=%d, time=%.6f)" % (
            self.ncpus, self.njobs, self.time)


class Job(_core.Job, _cf.Future):
    """A submitted job. Call it (``job()``) for the result, as in pp; it is
    a concurrent.futures.Future (result/exception/done/running/cancel/
    add_done_callback; concurrent.futures.wait and as_completed;
    asyncio.wrap_future and ``await job``) and has IPython parallel's
    AsyncResult methods (ready/wait/get/successful).

    Jobs are made by Server.submit (the engine fills the record), never by
    calling the class; Future.__init__ does not run."""

    # concurrent.futures' waiter protocol, see _state/_waiters/_notify
    _condition = _wcond
    _wl = None     # this job's waiter list, made on first use
    _fin = False   # its waiters were told it finished (set once)
    _scache = None  # (epoch, state) of its last _state reading

    def exception(self, timeout: Optional[float] = None
                  ) -> Optional[BaseException]:
        """The exception the job raised, None if it succeeded; TimeoutError
        if it does not finish within timeout seconds; CancelledError if it
        was cancelled."""
        if not self._wait(timeout):
            raise TimeoutError("job did not finish in time")
        if self._status() == _core.ST_OK:
            return None
        try:
            self._raise()
        except CancelledError:
            raise
        except BaseException as e:  # noqa: B902 - we return it
            return e

    def ready(self) -> bool:
        """Whether the job has finished (IPython parallel's name)."""
        return self.done()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Wait for the job; returns whether it finished."""
        return self._wait(timeout)

    def get(self, timeout: Optional[float] = None) -> Any:
        """The result, as result(timeout)."""
        return self.result(timeout)

    def successful(self) -> bool:
        """Whether the finished job returned (ValueError if not finished)."""
        if not self.done():
            raise ValueError("job %d is not finished" % self.tid)
        return self._status() == _core.ST_OK

    def cancelled(self) -> bool:
        """Whether the job was cancelled before it started."""
        return self._status() == _core.ST_CANCELLED

    def cancel(self) -> bool:
        """Cancel the job if it has not started (concurrent.futures
        semantics: True also when it already was cancelled; False once it
        runs or has finished). A cancelled job raises CancelledError."""
        return _core.Job.cancel(self) or self.cancelled()

    def running(self) -> bool:
        """Whether the job is on a worker or node now (not queued, not
        finished)."""
        return self._info()[0] == _core.STATE_RUNNING

    # -- concurrent.futures and asyncio -----------------------------------
    @property
    def _state(self) -> str:
        """concurrent.futures' state name, read with _condition held. The
        first reader to see the job finished tells its waiters (_notify),
        so a waiter installed while it was pending is told exactly once."""
        cache = self._scache
        epoch = _wcond.epoch
        if cache is not None and cache[0] == epoch:
            return cache[1]
        if self._status() < 0:
            state = _cfb.RUNNING if self.running() else _cfb.PENDING
        else:
            if not self._fin:
                self._notify()
            state = _cfb.CANCELLED_AND_NOTIFIED \
                if self._status() == _core.ST_CANCELLED else _cfb.FINISHED
        self._scache = (epoch, state)
        return state

    @property
    def _waiters(self) -> List[Any]:
        """This job's list of concurrent.futures waiters, made on first use
        (with _condition held). Making it asks the engine to deliver the
        completion through the callback thread, which then tells the
        waiters; if the job finished meanwhile, the list's append does."""
        wl = self._wl
        if wl is None:
            wl = self._wl = _Waiters(self)
            if not self._fin and not self.done():
                try:
                    self._engine.want_callback(self)
                except Exception:
                    pass  # the engine is gone: the job is finished anyway
        return wl

    def _notify(self) -> None:
        """Tell this job's waiters that it finished, once (whichever of the
        callback thread, a _state reader or an append sees it first)."""
        with _wcond:
            if self._fin:
                return
            self._fin = True
            wl = self._wl
            if not wl:
                return
            st = self._status()
            for w in list(wl):
                if st == _core.ST_OK:
                    w.add_result(self)
                elif st == _core.ST_CANCELLED:
                    w.add_cancelled(self)
                else:
                    w.add_exception(self)

    def __await__(self):
        """``await job`` in a coroutine: the job as an asyncio future of
        the running loop (asyncio.wrap_future)."""
        import asyncio
        return asyncio.wrap_future(self).__await__()

    def set_running_or_notify_cancel(self):
        raise RuntimeError("a pp job's state is set by its Server's engine")

    def set_result(self, result):
        raise RuntimeError("a pp job's result is set by its Server's engine")

    def set_exception(self, exception):
        raise RuntimeError("a pp job's result is set by its Server's engine")

    # -- job control and observation ---------------------------------------
    def abort(self, grace: float = 1.0) -> bool:
        """Stop the job. A queued job never runs; a running one gets
        KeyboardInterrupt raised inside it, and its worker is killed and
        replaced if it has not ended `grace` seconds later. The job then
        raises pp.JobAbortedError. Returns False if it had already
        finished."""
        return self._abort(float(grace))

    _STATUS = {}

    @property
    def status(self):
        """"queued", "running", "done", "failed" or "cancelled"."""
        state = self._info()[0]
        if state == _core.STATE_QUEUED:
            return "queued"
        if state == _core.STATE_RUNNING:
            return "running"
        st = self._status()
        if st == _core.ST_OK:
            return "done"
        if st in (_core.ST_CANCELLED, _core.ST_ABORTED) and \
                not self._info()[5]:
            return "cancelled"
        return "failed"

    @property
    def stdout(self):
        """What the job wrote to sys.stdout and file descriptor 1 (its last
        run), as str; "" with Server(output="inherit") or before it ends."""
        return self._output()[0].decode("utf-8", "replace")

    @property
    def stderr(self):
        """What the job wrote to sys.stderr and file descriptor 2."""
        return self._output()[1].decode("utf-8", "replace")

    @property
    def submit_time(self):
        """When the job was submitted (seconds since the epoch)."""
        return _epoch(self._info()[1])

    @property
    def start_time(self):
        """When its last run started (seconds since the epoch), or None if
        it never ran."""
        info = self._info()
        if not info[2] or not info[5]:
            return None
        return _epoch(info[2] - info[3])

    @property
    def end_time(self):
        """When it finished (seconds since the epoch), None until then."""
        info = self._info()
        return _epoch(info[2]) if info[2] else None

    @property
    def node(self):
        """"local" or the node's "host:port" that ran it; None if it never
        ran (or has not finished)."""
        return self._info()[5] or None

    @property
    def worker_pid(self):
        """The pid of the local worker process that ran it, or None (a job
        run on a node, or not finished)."""
        return self._info()[4] or None

    @property
    def attempts(self):
        """How many times the job was handed to a worker or node."""
        return self._info()[6]

    def add_done_callback(self, fn: Callable[["Job"], Any]) -> None:
        """Call fn(job) when the job finishes (now, in this thread, if it
        has; else on the Server's callback thread)."""
        with _cb_lock:
            cbs = self._done_callbacks
            if cbs is not _RAN and not self.done():
                if cbs is None:
                    cbs = self._done_callbacks = []
                cbs.append(fn)
                if self._engine.want_callback(self) != 0:
                    return
                cbs.pop()
        try:
            fn(self)
        except Exception:
            _log.exception("done-callback %r of job %d raised", fn, self.tid)

    def _raise(self):
        st = self._status()
        if st in (_core.ST_EXC, _core.ST_SERIAL):
            try:
                tname, msg, tb, excb = pickle.loads(self._payload())
            except Exception:
                tname, msg, tb, excb = ("?", "the job failed and its error could "
                                        "not be reported", "", None)
            if st == _core.ST_SERIAL:
                exc = SerializationError(
                    "the result of job %d could not be pickled: %s: %s"
                    % (self.tid, tname, msg))
            else:
                exc = None
                if excb is not None:
                    try:
                        exc = pickle.loads(excb)
                    except Exception:
                        exc = None
                if not isinstance(exc, BaseException):
                    exc = RemoteError("%s: %s" % (tname, msg), tname, tb)
            exc.__cause__ = RemoteTraceback(tb)
            try:
                exc.remote_traceback = tb
            except Exception:
                pass
            raise exc
        msg, exitstatus, termsignal = self._failure() or ("", -1, 0)
        if st == _core.ST_LOST:
            raise WorkerLostError(msg, None if termsignal else exitstatus,
                                  termsignal or None)
        if st == _core.ST_DESTROYED:
            raise DestroyedError(msg)
        if st == _core.ST_CANCELLED:
            raise CancelledError("job %d was cancelled" % self.tid)
        if st == _core.ST_TIMEOUT:
            raise JobTimeoutError(msg or "job %d timed out" % self.tid)
        if st == _core.ST_ABORTED:
            raise JobAbortedError(msg or "job %d was aborted" % self.tid)
        raise PPError(msg or "job %d failed" % self.tid)

    def __repr__(self):
        state = "finished" if self.done() else "pending"
        return "<pp.Job %d %s>" % (self.tid, state)


class _Waiters(list):
    """A job's concurrent.futures waiters. An append to a job that has
    finished but whose waiters were not told yet tells them at once (the
    callback thread may have run before the list existed). Called with
    _condition held."""

    __slots__ = ("job",)

    def __init__(self, job):
        super().__init__()
        self.job = job

    def append(self, waiter):
        list.append(self, waiter)
        job = self.job
        if not job._fin and job.done():
            job._notify()


def _get_done(q):
    """The next job from a queue fed by done-callbacks, waiting in short
    slices so that Ctrl-C stays responsive."""
    while True:
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            continue


def _flatten(parts):
    """The items of each list parts yields; closing this generator (or
    losing it) closes parts, which cancels the chunks not started yet."""
    try:
        for part in parts:
            yield from part
    finally:
        parts.close()


def as_completed(jobs: Iterable[Job], timeout: Optional[float] = None
                 ) -> Iterator[Job]:
    """Yield the given jobs as they finish; TimeoutError if timeout passes."""
    jobs = list(dict.fromkeys(jobs))
    q = queue.SimpleQueue()
    for j in jobs:
        j.add_done_callback(q.put)
    deadline = None if timeout is None else time.monotonic() + timeout
    for _ in range(len(jobs)):
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError("%d jobs not finished in time" % (len(jobs)))
            try:  # short slices keep Ctrl-C responsive
                yield q.get(timeout=0.1 if left is None else min(left, 0.1))
                break
            except queue.Empty:
                continue


# How a worker starts (a bare `pp` package, -S, the client's sys.path): one
# definition in _boot, which ppserver uses too.
_WORKER_BOOT = _boot.WORKER_BOOT


def _pythonrc_secret(path):
    """pp_secret from ~/.pythonrc.py (path), read with ast and never run:
    the last top-level `pp_secret = <str or bytes literal>`. None when the
    file or the assignment is missing; ValueError when the assignment is not
    a literal, or when the file holds it and belongs to another user or
    others may read or write it (as ppserver refuses it too)."""
    import ast
    import stat
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            text = f.read(1 << 20)
    except FileNotFoundError:
        return None
    try:
        tree = ast.parse(text, filename=path)
    except SyntaxError as e:
        raise ValueError("%s: cannot be parsed for pp_secret: %s" % (path, e)) from None
    value = None
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id == "pp_secret"):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                value = None
            if not isinstance(value, (str, bytes)):
                raise ValueError("%s:%d: pp_secret must be a string literal (pp "
                                 "reads the file without running it)"
                                 % (path, node.lineno))
    if value is None:
        return None
    if st.st_uid not in (os.geteuid(), 0) or st.st_mode & 0o077:
        raise ValueError(
            "%s holds pp_secret and other users may access it (mode %04o, "
            "owner uid %d): refused; run `chmod 600 %s`"
            % (path, stat.S_IMODE(st.st_mode), st.st_uid, path))
    return value


def find_secret(secret=None, secret_file=None):
    """The secret for remote nodes, where pp (and ppserver) look for it, first
    found wins: the secret argument, the secret_file (its contents, trailing
    newline dropped), the PP_SECRET environment variable, `pp_secret` in
    ~/.pythonrc.py. Returns (bytes, where) or (None, None) when none is set;
    ValueError for an unusable source (an empty or too long secret, a file
    others may read)."""
    if secret is not None:
        where = "secret="
    elif secret_file is not None:
        secret_file = os.path.expanduser(os.fspath(secret_file))
        with open(secret_file, "rb") as f:
            st = os.fstat(f.fileno())
            secret = f.read(_core.SECRET_MAX + 3).rstrip(b"\r\n")
        if st.st_uid not in (os.geteuid(), 0) or st.st_mode & 0o077:
            raise ValueError("secret file %s: other users may access it (mode "
                             "%04o): refused; run `chmod 600 %s`"
                             % (secret_file, st.st_mode & 0o7777, secret_file))
        where = secret_file
    elif os.environ.get("PP_SECRET"):
        secret, where = os.environ["PP_SECRET"], "PP_SECRET"
    else:
        path = os.path.join(os.path.expanduser("~"), ".pythonrc.py")
        secret, where = _pythonrc_secret(path), path
        if secret is None:
            return None, None
    if isinstance(secret, str):
        secret = secret.encode("utf-8")
    if (not isinstance(secret, (bytes, bytearray))
            or not 0 < len(secret) <= _core.SECRET_MAX):
        raise ValueError("secret (from %s) must be a non-empty str or bytes "
                         "(at most %d bytes)" % (where, _core.SECRET_MAX))
    return bytes(secret), where


def _worker_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = _boot.worker_pythonpath()
    return ["%s=%s" % kv for kv in env.items()]


def _check_tls(tls, cert, key, ca):
    """Validate Server's transport-security arguments; returns the Engine
    keywords for the certificate files (empty in PSK mode)."""
    if not isinstance(tls, bool):
        raise TypeError("tls must be True or False")
    files = {"tls_cert": cert, "tls_key": key, "tls_ca": ca}
    given = [k for k, v in files.items() if v is not None]
    if not given:
        return {}
    if not tls:
        raise ValueError("tls=False cannot be combined with " + ", ".join(given))
    if len(given) != 3:
        raise ValueError("TLS with certificates needs tls_cert, tls_key and "
                         "tls_ca (all three)")
    out = {}
    for k, v in files.items():
        path = os.fspath(v)
        if not os.access(path, os.R_OK):
            raise ValueError("%s: cannot read %r" % (k, path))
        out[k] = path
    # the private key is as secret as a secret file: the same rule
    st = os.stat(out["tls_key"])
    if st.st_uid not in (os.geteuid(), 0) or st.st_mode & 0o077:
        raise ValueError("tls_key %s: other users may access it (mode %04o, "
                         "owner uid %d): refused; run `chmod 600 %s`"
                         % (out["tls_key"], st.st_mode & 0o7777, st.st_uid,
                            out["tls_key"]))
    return out


class Server:
    """Parallel Python execution server: a pool of local worker processes
    and remote ppserver nodes (named, or found with ppservers=("*",)), fed
    from one queue."""

    default_port = _core.DEFAULT_PORT  # ppserver's TCP and discovery's UDP port
    default_secret = None
    _job_type = Job  # the class of the jobs submit returns

    def __init__(self, ncpus: Union[int, str] = "autodetect",
                 ppservers: Sequence[str] = (), secret: Union[str, bytes,
                                                              None] = None,
                 loglevel: int = logging.WARNING,
                 logstream: Optional[IO[str]] = None, restart: bool = False,
                 proto: int = pickle.HIGHEST_PROTOCOL,
                 socket_timeout: Optional[float] = 3600,
                 max_retries: int = 2, node_timeout: float = 5.0,
                 no_capacity_timeout: Optional[float] = None,
                 *, max_frame: Optional[int] = None,
                 job_timeout: Optional[float] = None,
                 job_memory_limit: Optional[int] = None,
                 output: str = "echo", max_output: int = 1 << 20,
                 max_node_workers: int = _core.MAX_NODE_WORKERS,
                 tls: bool = True, tls_cert: Optional[str] = None,
                 tls_key: Optional[str] = None,
                 tls_ca: Optional[str] = None,
                 secret_file: Optional[str] = None,
                 object_store_limit: Optional[int] = None,
                 start_method: str = "fork") -> None:
        """Start the local workers and connect to the nodes.

        ncpus: local worker processes ("autodetect": one per core; 0: none,
            jobs run on nodes only).
        ppservers: ppserver nodes: "host" (port 60000), "host:port",
            "[v6addr]:port"; "*" or "*:port" finds nodes started with
            ``ppserver -a`` by UDP broadcast. Needs secret.
        secret: the nodes' shared secret, str or bytes (no default secret).
            Without it pp looks, in order, at secret_file, $PP_SECRET and
            pp_secret in ~/.pythonrc.py (read, never run).
        secret_file: a file holding the secret (mode 600).
        loglevel: the level of the messages pp writes to logstream.
        logstream: where pp writes its log messages (default sys.stderr). pp
            adds one handler to the "pp" logger for all its Servers; without
            an explicit logstream it adds none when the application has
            configured logging (the "pp" or root logger has handlers), whose
            handlers then show pp's messages.
        restart: run every job in a fresh worker process.
        proto: the pickle protocol of arguments and results.
        socket_timeout: accepted for pp 1.x compatibility and ignored: pp
            1.6 used it as the socket timeout of node connections (so the
            longest a remote job could run); here node liveness is
            node_timeout (heartbeats) and the longest a job may run is
            job_timeout. Kept as self.socket_timeout.
        max_retries: how many times a job whose worker died is run again
            before it fails with WorkerLostError.
        node_timeout: seconds of silence after which a node counts as lost
            and its jobs run elsewhere.
        no_capacity_timeout: fail queued jobs after this many seconds with
            no worker and no reachable node (None: wait).
        max_frame: the largest frame, in bytes, on the local workers' pipes
            (None: the maximum, 1 GiB).
        job_timeout, job_memory_limit: the defaults of submit's timeout and
            memory_limit (None: no limit).
        output: "echo" (print each job's captured stdout/stderr when its
            result is read), "capture" (keep it on job.stdout/job.stderr)
            or "inherit" (local workers write to the client's terminal).
        max_output: bytes of output kept per stream and job.
        max_node_workers: the most workers the client believes a node
            announces; a node also gets at most 16 jobs in flight plus one
            per result it returned (docs/protocol.md 7.8).
        tls: encrypt node connections with TLS 1.3 keyed from the secret
            (default); False sends authenticated frames in clear, to nodes
            that allow it.
        tls_cert, tls_key, tls_ca: PEM files: TLS with certificates,
            verified both ways, instead of the secret-derived key.
        object_store_limit: bytes of objects put with put() that each
            worker and each node holds at most (None: 512 MiB), least
            recently used out first; an evicted object is sent again with
            the next job that names it. A node may hold less (it says so).

        start_method: how local workers start. "fork" (default): one clean
            interpreter (the fork server, started without site and without
            any of this process's state) is started once, and every worker,
            respawn and set_ncpus growth is a fork of it; this process
            itself never forks. "spawn": each worker is a fresh
            interpreter."""
        self._closed = True
        _boot.check_start_method(start_method)
        tls_files = _check_tls(tls, tls_cert, tls_key, tls_ca)
        if output not in ("echo", "capture", "inherit"):
            raise ValueError('output must be "echo", "capture" or "inherit"')
        if isinstance(max_output, bool) or not isinstance(max_output, int) \
                or not 0 < max_output < 1 << 31:
            raise ValueError("max_output must be a positive number of bytes")
        if isinstance(max_node_workers, bool) or not isinstance(max_node_workers, int) \
                or not 0 < max_node_workers <= 65536:
            raise ValueError("max_node_workers must be an int in 1..65536")
        self._output = output
        self._job_timeout = _check_limit("job_timeout", job_timeout, float)
        self._job_memory_limit = _check_limit("job_memory_limit",
                                              job_memory_limit, int)
        nodes, ports, subnets, any_node = self._split_nodes(ppservers)
        if nodes or ports:
            secret, _ = find_secret(secret, secret_file)
            if secret is None:
                raise ValueError(
                    "ppservers need a secret: pp.Server(..., secret='...') with "
                    "the secret the ppserver nodes were started with, or "
                    "secret_file=PATH, the PP_SECRET environment variable, or "
                    "pp_secret = '...' in ~/.pythonrc.py (there is no default "
                    "secret)")
        ncpus = self._check_ncpus(ncpus)
        if object_store_limit is None:
            object_store_limit = _core.OBJ_LIMIT_DEFAULT
        if isinstance(object_store_limit, bool) or \
                not isinstance(object_store_limit, int) or \
                not 0 < object_store_limit < 1 << 63:
            raise ValueError("object_store_limit must be None or a positive "
                             "int of bytes")
        self._obj_limit = object_store_limit
        if max_frame is not None and (
                isinstance(max_frame, bool) or not isinstance(max_frame, int)
                or not 0 < max_frame <= _core.FRAME_MAX):
            raise ValueError("max_frame must be None or an int of bytes in "
                             "1..%d" % _core.FRAME_MAX)
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError("max_retries must be an int >= 0")
        if not 0 <= int(proto) <= pickle.HIGHEST_PROTOCOL:
            raise ValueError("proto must be between 0 and %d" % pickle.HIGHEST_PROTOCOL)
        self._proto = int(proto)
        self.secret = secret
        self.socket_timeout = socket_timeout
        self._logkey = id(self)
        self._logextra = {"pp_server": self._logkey}
        self._logged = False
        # Workers get the client's whole sys.path through PYTHONPATH, so they
        # skip the site module (-S): a worker starts in a quarter of the time.
        # PP_WORKER_SITE=1 restores it (for sitecustomize or .pth hooks).
        site = _boot.site_flags()
        pkgdir = os.path.dirname(os.path.abspath(__file__))
        tail = [str(os.getpid()), str(self._proto), "1" if restart else "0"]
        argv = [sys.executable] + site + ["-c", _WORKER_BOOT % pkgdir] + tail
        template = None
        if start_method == "fork":
            template = [sys.executable] + site + [
                "-c", _boot.TEMPLATE_BOOT % pkgdir] + tail
        self._start_method = start_method
        self._engine = _core.Engine(
            argv, env=_worker_env(), nworkers=ncpus, restart=bool(restart),
            max_retries=max_retries, job_type=self._job_type,
            nodes=nodes or None,
            secret=bytes(secret) if nodes or ports else None,
            node_timeout=float(node_timeout),
            no_capacity_timeout=float(no_capacity_timeout or 0),
            discover=ports or None, subnets=[s[1:3] for s in subnets] or None,
            disco_any=any_node, max_frame=max_frame or 0,
            capture_output=output != "inherit", max_output=max_output,
            echo=_echo if output == "echo" else None,
            max_node_workers=max_node_workers, plain=not tls,
            obj_limit=object_store_limit, template=template, **tls_files)
        self._max_frame = max_frame or _core.FRAME_MAX
        subnet_ports = {s[0] for s in subnets}
        self.ppservers = tuple(nodes) + tuple(
            "*" if p == Server.default_port else "*:%d" % p for p in ports
            if p not in subnet_ports or any_node) + tuple(s[3] for s in subnets)
        self._ncpus = ncpus
        self._restart = bool(restart)
        self._groups = {"default": 0}
        self._fcache = {}
        self._item_time = {}  # Func -> measured seconds per item (_chunks)
        self._t0 = time.time()
        self._closed = False
        self._logged = _logging.attach(self._logkey, logstream, loglevel)
        self._cbthread = threading.Thread(target=self._events,
                                          name="pp-callbacks", daemon=True)
        self._cbthread.start()
        _servers.add(self)
        _log.debug("pp server started with %d workers", ncpus,
                   extra=self._logextra)

    # -- helpers ---------------------------------------------------------
    @staticmethod
    def _check_nodes(ppservers):
        """Split ppservers into 'host:port' strings and auto-discovery UDP
        ports ("*" is the default port, "*:port" another; a subnet entry
        discovers on its port too). The syntax is the C core's
        (_core.parse_ppserver), the one parser of these entries."""
        nodes, ports, _, _ = Server._split_nodes(ppservers)
        return nodes, ports

    @staticmethod
    def _split_nodes(ppservers):
        """_check_nodes, plus pp 1.x's subnet entries ("192.168.1.*",
        "10.1.*.*:port") as (port, network, bits, entry) and whether a plain
        "*" entry lets nodes from anywhere be used."""
        if isinstance(ppservers, str):
            ppservers = (ppservers,)
        nodes, ports, subnets, any_node = [], [], [], False
        for entry in ppservers:
            spec = _core.parse_ppserver(entry)
            if spec[0] in ("discover", "subnet"):
                if spec[1] not in ports:
                    ports.append(spec[1])
                if spec[0] == "subnet":
                    subnets.append((spec[1], spec[2], spec[3], entry))
                else:
                    any_node = True
                continue
            _, host, port = spec
            name = ("[%s]:%d" if ":" in host else "%s:%d") % (host, port)
            if name not in nodes:
                nodes.append(name)
        return nodes, ports, subnets, any_node

    @staticmethod
    def _check_ncpus(ncpus):
        if ncpus == "autodetect":
            return os.cpu_count() or 1
        if isinstance(ncpus, bool) or not isinstance(ncpus, int):
            raise TypeError("ncpus must be an int or 'autodetect'")
        if ncpus < 0:
            raise ValueError("ncpus must be >= 0")
        return ncpus

    def _check_open(self):
        if self._closed:
            raise DestroyedError("this pp Server has been destroyed")

    def _func(self, func, depfuncs, modules, globals, extra, kw=False):
        """The engine Func for a submit call, cached while its parts live.
        The cache holds strong references to every part of its key, so an
        id can never be reused while an entry refers to it. kw: the worker
        calls func(*args[:-1], **args[-1]) (a "kw" descriptor)."""
        if type(func) is types.MethodType:
            owner = func.__self__  # a classmethod's is the class itself
            base = ("m", func.__func__,
                    owner if isinstance(owner, type) else type(owner))
        else:
            base = func
        if depfuncs or modules or globals is not None or extra or kw:
            key = (base, tuple(depfuncs), tuple(modules),
                   id(globals) if globals is not None else None, extra, kw)
        else:
            key = base
        try:
            hit = self._fcache.get(key)
        except TypeError:  # unhashable callable
            hit, key = None, None
        if hit is not None:
            return hit[0], hit[1]
        blob, is_method, cacheable = _ship.describe(func, depfuncs, modules,
                                                    globals, extra)
        if kw:
            blob = pickle.dumps(("kw", blob), 4)
        f = _core.Func(blob)
        if key is not None and cacheable:
            if len(self._fcache) >= _FCACHE_MAX:
                self._fcache.pop(next(iter(self._fcache)))
            self._fcache[key] = (f, is_method, globals)
        return f, is_method

    def _group_id(self, group):
        gid = self._groups.get(group)
        if gid is None:
            gid = self._groups[group] = len(self._groups)
        return gid

    def _events(self):
        """The callback thread: runs callbacks and forwards engine logs."""
        eng = self._engine
        while True:
            ev = eng.next_event(0.5)
            if ev is None:
                continue
            if ev is False:
                return
            if ev[0] == "log":
                _log.log(ev[1], "%s", ev[2], extra=self._logextra)
                continue
            job = ev[1]
            try:
                self._run_callbacks(job)
            finally:
                eng.callback_done(job)

    def _run_callbacks(self, job):
        with _cb_lock:
            cbs = job._done_callbacks
            job._done_callbacks = _RAN
        st = job._status()
        if job.callback is not None:
            if st == _core.ST_OK:
                try:
                    job.callback(*job.callbackargs, job.result())
                except Exception:
                    _log.exception("callback %r of job %d raised", job.callback,
                                   job.tid, extra=self._logextra)
            elif st != _core.ST_CANCELLED:
                try:
                    job.result()
                except Exception as e:
                    _log.error("job %d failed, its callback was not called: "
                               "%s: %s", job.tid, type(e).__name__, e,
                               extra=self._logextra)
        if job._wl is not None:
            job._notify()  # concurrent.futures waiters, before done-callbacks
        if isinstance(cbs, list):
            for fn in cbs:
                try:
                    fn(job)
                except Exception:
                    _log.exception("done-callback %r of job %d raised", fn,
                                   job.tid, extra=self._logextra)

    # -- pp API ------------------------------------------------------------
    def submit(self, func: Callable[..., Any], args: tuple = (),
               depfuncs: Sequence[Any] = (), modules: Sequence[str] = (),
               callback: Optional[Callable[..., Any]] = None,
               callbackargs: tuple = (), group: str = "default",
               globals: Optional[Dict[str, Any]] = None, *,
               timeout: Optional[float] = None,
               memory_limit: Optional[int] = None, retries: int = 0) -> Job:
        """Submit func(*args) for execution; returns a Job.

        args: a tuple (pp 1.x: anything else raises TypeError);
        depfuncs: a tuple or list of the functions and classes func uses
        (shipped by source); modules: a tuple or list of module names (or
        "import ..."/"from ..." statements) to import first;
        callback(*callbackargs, result) runs when the job succeeds; group:
        name for wait(group); globals: a dict whose modules, functions and
        classes are made available to func; timeout, memory_limit, retries:
        job control (see docs/api.md)."""
        return self._submit(func, args, depfuncs, modules, callback,
                            callbackargs, group, globals, timeout,
                            memory_limit, retries, None)

    def _submit(self, func, args, depfuncs, modules, callback, callbackargs,
                group, globals, timeout, memory_limit, retries, kwargs):
        """submit, and Executor.submit's way in: kwargs (a dict or None)
        are passed to func as keyword arguments."""
        if self._closed:
            self._check_open()
        if type(args) is not tuple and not isinstance(args, tuple):
            raise TypeError("args argument must be a tuple")
        if not callable(func):
            raise TypeError("func must be callable, not %r" % (func,))
        if depfuncs or modules:
            _check_deps(depfuncs, modules)
        if globals is not None and not isinstance(globals, dict):
            raise TypeError("globals argument must be a dictionary")
        if callback is not None and not callable(callback):
            raise TypeError("callback must be callable")
        extra = _ship.main_classes(args)
        if kwargs:
            extra += _ship.main_classes(kwargs.values())
        f, is_method = self._func(func, depfuncs, modules, globals, extra,
                                  kwargs is not None)
        if is_method:
            args = (func.__self__,) + args
        if kwargs is not None:
            args = args + (kwargs,)
        refs = []
        prev = _objects.collecting(refs)  # ObjectRefs in args list themselves
        try:
            data = _oob.dumps(args, self._proto)  # bytes or (pickle, buffers)
        finally:
            _objects.done(prev)
        objs = self._job_objs(refs) if refs else None
        gid = self._groups.get(group)
        if gid is None:
            gid = self._group_id(group)
        timeout = _check_limit("timeout", timeout, float)
        memory_limit = _check_limit("memory_limit", memory_limit, int)
        if timeout is None:
            timeout = self._job_timeout
        if memory_limit is None:
            memory_limit = self._job_memory_limit
        if isinstance(retries, bool) or not isinstance(retries, int) \
                or retries < 0:
            raise ValueError("retries must be an int >= 0")
        if timeout is None and memory_limit is None and not retries:
            if objs is not None:
                return self._engine.submit(f, data, gid, 0, callback,
                                           tuple(callbackargs), None, objs)
            return self._engine.submit(f, data, gid, 0, callback,
                                       tuple(callbackargs))
        return self._engine.submit(f, data, gid, 0, callback,
                                   tuple(callbackargs),
                                   (timeout, memory_limit, retries), objs)

    def _job_objs(self, refs):
        """The Obj records a job's arguments name (each once), checked:
        they are this Server's, and together fit in an object store."""
        seen = {}
        for r in refs:
            if r._engine is not self._engine:
                raise ValueError("%r belongs to another Server" % (r,))
            seen[id(r._obj)] = r._obj
        objs = tuple(seen.values())
        if len(objs) > _core.JOB_OBJS_MAX:
            raise ValueError("a job names at most %d objects put with put(), "
                             "not %d" % (_core.JOB_OBJS_MAX, len(objs)))
        total = sum(o.size for o in objs)
        if total > self._obj_limit:
            raise ValueError("the objects this job names are %d bytes "
                             "together, above object_store_limit (%d bytes)"
                             % (total, self._obj_limit))
        return objs

    def object_stats(self) -> Dict[str, int]:
        """Counters of objects put with put(): "sent" (OBJ frames sent to
        workers and nodes: one per object and place, again after an
        eviction), "bytes_sent" and "dropped" (evictions and releases)."""
        st = self._engine.stats()
        return {"sent": st["objs_sent"], "bytes_sent": st["obj_bytes_sent"],
                "dropped": st["objs_dropped"]}

    def put(self, obj: Any) -> "_objects.ObjectRef":
        """Pickle obj once and return an ObjectRef to pass (at any depth)
        in the arguments of any number of jobs: each worker and node gets
        the object at most once (by the SHA-256 of its pickled form) and
        every job sees the object itself (shared by the jobs of a worker:
        treat it as read-only). ref.release(), or dropping the last
        reference to the handle, frees it everywhere. Raises
        SerializationError when obj cannot be pickled, ValueError when it
        is larger than object_store_limit or the frame limit."""
        if self._closed:
            self._check_open()
        try:
            data = _oob.dumps(obj, self._proto)
        except Exception as e:
            raise SerializationError(
                "cannot put %s object: %s: %s"
                % (type(obj).__name__, type(e).__name__, e)) from e
        o = _core.Obj(data, self._engine)
        if o.size > self._obj_limit:
            raise ValueError("the object is %d bytes when pickled, above "
                             "object_store_limit (%d bytes)"
                             % (o.size, self._obj_limit))
        if o.size + 64 > self._max_frame:
            raise ValueError("the object is %d bytes when pickled, above the "
                             "frame limit (max_frame, %d bytes)"
                             % (o.size, self._max_frame))
        return _objects.ObjectRef(o, self._engine)

    def abort(self, group: Optional[str] = None, grace: float = 1.0) -> None:
        """Abort every unfinished job (of group, when given): queued ones
        never run, running ones are stopped as by job.abort(grace); each
        then raises pp.JobAbortedError."""
        gid = self._known_group(group)
        if gid is not None and not self._closed:
            self._engine.abort_group(gid, float(grace))

    def _known_group(self, group):
        """The engine's index of group (-1 for None: every group), or None
        for a group no job was ever submitted to."""
        return -1 if group is None else self._groups.get(group)

    def wait(self, group: Optional[str] = None) -> None:
        """Wait for all jobs (of group, when given) to finish, callbacks
        included."""
        if threading.current_thread() is self._cbthread:
            raise RuntimeError("wait() cannot be called from a callback")
        gid = self._known_group(group)
        if gid is not None and not self._closed:
            self._engine.wait_group(gid)

    def get_ncpus(self) -> int:
        """The number of local worker processes."""
        return self._ncpus

    def set_ncpus(self, ncpus: Union[int, str] = "autodetect") -> None:
        """Grow or shrink the local pool; queued and running jobs are kept."""
        self._check_open()
        ncpus = self._check_ncpus(ncpus)
        self._engine.set_nworkers(ncpus)
        self._ncpus = ncpus

    def get_active_nodes(self) -> Dict[str, int]:
        """{'local': ncpus, 'host:port': ncpus, ...}: local workers and every
        remote node connected now."""
        nodes = {"local": self._ncpus}
        if not self._closed:
            for name, connected, nworkers, _, _ in self._engine.node_stats():
                if connected:
                    nodes[name] = nworkers
        return nodes

    def get_stats(self) -> Dict[str, Statistics]:
        """{node: Statistics} with njobs and the sum of job run times, for
        'local' and each remote node."""
        s = self._engine.stats()
        remote = self._engine.node_stats()
        st = Statistics(self._ncpus)
        st.njobs = s["njobs"]  # the engine counts local workers' results
        st.time = s["time"]
        stats = {"local": st}
        for name, connected, nworkers, njobs, t in remote:
            rs = Statistics(nworkers, rworker=name)
            rs.njobs = njobs
            rs.time = t
            stats[name] = rs
        return stats

    def print_stats(self) -> None:
        """Print job statistics in Parallel Python's format."""
        stats = self.get_stats()
        total = sum(s.njobs for s in stats.values())
        print("Job execution statistics:")
        print(" job count | % of all jobs | job time sum | time per job | job server")
        for node, s in stats.items():
            if s.njobs:
                print("    %6i |        %6.2f |     %8.4f |  %11.6f | %s"
                      % (s.njobs, 100.0 * s.njobs / total, s.time,
                         s.time / s.njobs, node))
        print("Time elapsed since server creation", time.time() - self._t0)
        e = self._engine.stats() if not self._closed else {"queued": 0, "running": 0}
        print(e["queued"] + e["running"], "active tasks,", self.get_ncpus(), "cores")
        print()

    def map(self, func: Callable[..., Any], *iterables: Iterable[Any],
            chunksize: Optional[int] = None, progress: bool = False,
            timeout: Optional[float] = None) -> List[Any]:
        """[func(*items) for items in zip(*iterables)], in parallel; the
        first exception is re-raised. chunksize=None (the default) sizes
        the chunks from the input's length and the function's measured run
        time per item (pp._chunks: few large chunks for trivial items,
        small ones for long items, shrinking towards the end so the
        workers finish together); an int fixes it. progress=True shows a
        progress bar (see pp.progress). timeout: seconds each chunk may run
        (default: the Server's job_timeout), as submit's; a chunk over it
        raises JobTimeoutError."""
        onearg = len(iterables) == 1
        items = list(iterables[0]) if onearg else list(zip(*iterables))
        if not items:
            return []
        if chunksize is None:
            out = []
            for part in self._lazy_chunks(func, iter(items), len(items),
                                          None, progress, True, timeout,
                                          onearg):
                out.extend(part)
            return out
        self._check_chunksize(chunksize)
        jobs = self._submit_chunks(func, items, chunksize, timeout, onearg)
        out = []
        if progress:
            from ._progress import Bar
            with Bar(len(items)) as bar:
                for job in jobs:
                    part = job()
                    out.extend(part)
                    bar.update(len(part))
            return out
        for job in jobs:
            out.extend(job())
        return out

    def imap(self, func: Callable[..., Any], *iterables: Iterable[Any],
             chunksize: Optional[int] = 1, progress: bool = False,
             timeout: Optional[float] = None) -> Iterator[Any]:
        """Iterator over func(*items), in order. The input is read lazily:
        a few chunks per worker are in flight ahead of the consumer, so an
        endless iterable works. The first chunks are submitted now.
        chunksize=None sizes chunks as map does. timeout: seconds each
        chunk may run, as for map."""
        return self._lazy_map(func, iterables, chunksize, progress, True,
                              timeout)

    def imap_unordered(self, func: Callable[..., Any],
                       *iterables: Iterable[Any],
                       chunksize: Optional[int] = 1,
                       progress: bool = False,
                       timeout: Optional[float] = None) -> Iterator[Any]:
        """Iterator over func(*items), in completion order; the input is
        read lazily as for imap (chunksize and timeout too)."""
        return self._lazy_map(func, iterables, chunksize, progress, False,
                              timeout)

    def _lazy_map(self, func, iterables, chunksize, progress, ordered,
                  timeout=None):
        """imap/imap_unordered: the total when progress wants it, then
        _lazy_chunks over the zipped input, flattened."""
        total = None
        if progress or chunksize is None:
            try:
                total = min(len(it) for it in iterables) if iterables else 0
            except TypeError:
                total = None  # an iterator: length unknown
        onearg = len(iterables) == 1
        items = iter(iterables[0]) if onearg else zip(*iterables)
        parts = self._lazy_chunks(func, items, total, chunksize, progress,
                                  ordered, timeout, onearg)
        return _flatten(parts)

    def _lazy_chunks(self, func, items, total, chunksize, progress, ordered,
                     timeout=None, onearg=False):
        """Submit the first window of chunks of the iterator items now, then
        return the generator of the chunks' result lists, which refills the
        window as results come back. The window is a few chunks per worker
        (local and connected nodes). chunksize None: sizes from a
        _chunks.Chunker, fed with each chunk's measured run time."""
        self._check_open()
        if chunksize is not None:
            self._check_chunksize(chunksize)
        limits = self._chunk_limits(timeout)
        workers = max(1, sum(self.get_active_nodes().values()))
        window = 3 * workers
        f, is_method = self._func(func, (), (), None, ())
        chunker = None
        if chunksize is None:
            from ._chunks import Chunker
            if len(self._item_time) > _FCACHE_MAX:
                self._item_time.clear()
            chunker = Chunker(total, workers, self._item_time, f)
        pending = collections.deque()
        done_q = None if ordered else queue.SimpleQueue()

        def refill():
            while len(pending) < window:
                size = chunker.next_size() if chunker else chunksize
                chunk = list(itertools.islice(items, size))
                if not chunk:
                    return False
                job = self._submit_chunk(func, f, is_method, chunk, limits,
                                         onearg)
                pending.append(job)
                if done_q is not None:
                    job.add_done_callback(done_q.put)
            return True

        refill()
        return self._lazy_results(pending, done_q, refill, progress, total,
                                  chunker)

    @staticmethod
    def _lazy_results(pending, done_q, refill, progress, total,
                      chunker=None):
        """The generator behind _lazy_chunks: yields each chunk's result
        list. Closing it early (or losing it) cancels the chunks not
        started yet."""
        bar = None
        if progress:
            from ._progress import Bar
            bar = Bar(total)
        more = True
        try:
            while pending:
                if done_q is None:
                    job = pending.popleft()
                else:
                    job = _get_done(done_q)
                    pending.remove(job)
                part = job()
                if chunker is not None:
                    chunker.observe(len(part), job.end_time - job.start_time)
                if more:
                    more = refill()
                if bar is not None:
                    bar.update(len(part))
                yield part
        finally:
            for job in pending:
                job.cancel()
            if bar is not None:
                bar.close()

    @staticmethod
    def _check_chunksize(chunksize):
        if isinstance(chunksize, bool) or not isinstance(chunksize, int) \
                or chunksize < 1:
            raise ValueError("chunksize must be an int >= 1")

    def _chunk_limits(self, timeout):
        """The job-control limits of map/imap chunks: (timeout,
        memory_limit, retries) with the Server's defaults, or None."""
        timeout = _check_limit("timeout", timeout, float)
        if timeout is None:
            timeout = self._job_timeout
        if timeout is None and self._job_memory_limit is None:
            return None
        return (timeout, self._job_memory_limit, 0)

    def _submit_chunk(self, func, f, is_method, chunk, limits=None,
                      onearg=False):
        """Submit one chunk as one job whose result is the list of func's
        results, with limits (_chunk_limits). chunk is a list of argument
        tuples, or with onearg a list of single arguments (JOBF_ONEARG:
        the worker calls func(item), no tuple per item)."""
        flags = _core.JOBF_CHUNK
        if is_method:
            chunk = [(func.__self__, a) for a in chunk] if onearg else \
                [(func.__self__,) + a for a in chunk]
        elif onearg:
            flags |= _core.JOBF_ONEARG
        refs = []
        prev = _objects.collecting(refs)  # items may hold ObjectRefs (put)
        try:
            data = pickle.dumps(chunk, self._proto)
        finally:
            _objects.done(prev)
        objs = self._job_objs(refs) if refs else None
        gid = self._groups["default"]
        if limits is None and objs is None:
            return self._engine.submit(f, data, gid, flags, None, ())
        return self._engine.submit(f, data, gid, flags, None, (), limits, objs)

    def _submit_chunks(self, func, items, chunksize, timeout=None,
                       onearg=False):
        self._check_open()
        self._check_chunksize(chunksize)
        limits = self._chunk_limits(timeout)
        f, is_method = self._func(func, (), (), None, ())
        return [self._submit_chunk(func, f, is_method, items[i:i + chunksize],
                                   limits, onearg)
                for i in range(0, len(items), chunksize)]

    def executor(self) -> _cf.Executor:
        """A concurrent.futures.Executor over this Server (pp.Executor);
        its shutdown() leaves the Server running."""
        from ._executor import Executor
        return Executor._over(self)

    def destroy(self) -> None:
        """Stop the workers; unfinished jobs fail with DestroyedError.
        Safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        self._engine.shutdown()
        if threading.current_thread() is not self._cbthread:
            self._cbthread.join(10)
        if self._logged:
            self._logged = False
            _logging.detach(self._logkey)

    def get_worker_stats(self) -> Dict[int, int]:
        """{pid: number of jobs it has run} for each live local worker."""
        if self._closed:
            return {}
        return self._engine.pids()

    def _worker_pids(self):
        return list(self.get_worker_stats())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.destroy()
        return False

    def __del__(self):
        try:
            self.destroy()
        except Exception:
            pass


def _check_deps(depfuncs, modules):
    """pp 1.x's checks of submit's depfuncs and modules, as TypeError:
    tuples (or lists) of functions/classes and of strings."""
    if not isinstance(depfuncs, (tuple, list)):
        raise TypeError("depfuncs argument must be a tuple")
    if not isinstance(modules, (tuple, list)):
        raise TypeError("modules argument must be a tuple")
    for m in modules:
        if not isinstance(m, str):
            raise TypeError("modules argument must be a list of strings")
    for d in depfuncs:
        if not isinstance(d, (types.FunctionType, type)):
            raise TypeError("depfuncs argument must be a tuple of functions "
                            "and classes, not %r" % (d,))


def _check_limit(name, value, kind):
    """A positive number of seconds/bytes, or None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            (kind is int and not isinstance(value, int)) or value <= 0:
        raise ValueError("%s must be a positive %s or None" % (
            name, "number of seconds" if kind is float else "number of bytes"))
    return kind(value)


_MONO_TO_EPOCH = time.time() - time.monotonic()


def _epoch(mono_ns):
    """A CLOCK_MONOTONIC time in ns as seconds since the epoch."""
    return _MONO_TO_EPOCH + mono_ns / 1e9


def _echo(job):
    """Print a finished job's captured output on the client's stdout and
    stderr, each stream in one piece (Server(output="echo"))."""
    out, err = job._output()
    if out:
        sys.stdout.write(out.decode("utf-8", "replace"))
        sys.stdout.flush()
    if err:
        sys.stderr.write(err.decode("utf-8", "replace"))
        sys.stderr.flush()


class Template:
    """Stores submit() arguments; Template.submit(*args) submits with them."""

    def __init__(self, job_server: Server, func: Callable[..., Any],
                 depfuncs: Sequence[Any] = (), modules: Sequence[str] = (),
                 callback: Optional[Callable[..., Any]] = None,
                 callbackargs: tuple = (), group: str = "default",
                 globals: Optional[Dict[str, Any]] = None, *,
                 timeout: Optional[float] = None,
                 memory_limit: Optional[int] = None, retries: int = 0) -> None:
        self.timeout = timeout
        self.memory_limit = memory_limit
        self.retries = retries
        self.job_server = job_server
        self.func = func
        self.depfuncs = depfuncs
        self.modules = modules
        self.callback = callback
        self.callbackargs = callbackargs
        self.group = group
        self.globals = globals

    def submit(self, *args: Any) -> Job:
        """Submit self.func(*args) with the stored arguments."""
        return self.job_server.submit(self.func, args, self.depfuncs,
                                      self.modules, self.callback,
                                      self.callbackargs, self.group,
                                      self.globals, timeout=self.timeout,
                                      memory_limit=self.memory_limit,
                                      retries=self.retries)


@atexit.register
def _destroy_all():
    for s in list(_servers):
        try:
            s.destroy()
        except Exception:
            pass
