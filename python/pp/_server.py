"""pp.Server, pp.Template, pp.Job and pp.as_completed: Parallel Python's API
over the C engine (pp._core). This layer shapes arguments, pickles them in the
caller's thread and runs callbacks on one thread per Server; queueing,
scheduling and worker processes are the engine's."""
import atexit
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

from . import _boot, _core, _ship
from ._errors import (CancelledError, DestroyedError, JobAbortedError,
                      JobTimeoutError, PPError, RemoteError,
                      RemoteTraceback, SerializationError, WorkerLostError)

_log = logging.getLogger("pp")
_cb_lock = threading.Lock()  # guards Job._done_callbacks
_RAN = ("callbacks ran",)    # sentinel in Job._done_callbacks
_servers = weakref.WeakSet()
_FCACHE_MAX = 1024


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


class Job(_core.Job):
    """A submitted job. Call it (``job()``) for the result, as in pp; it is
    also a future (result/exception/done/cancel/add_done_callback) and has
    IPython parallel's AsyncResult methods (ready/wait/get/successful)."""

    __slots__ = ()

    def exception(self, timeout=None):
        """The exception the job raised, None if it succeeded."""
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

    def ready(self):
        return self.done()

    def wait(self, timeout=None):
        """Wait for the job; returns whether it finished."""
        return self._wait(timeout)

    def get(self, timeout=None):
        return self.result(timeout)

    def successful(self):
        if not self.done():
            raise ValueError("job %d is not finished" % self.tid)
        return self._status() == _core.ST_OK

    def cancelled(self):
        return self._status() == _core.ST_CANCELLED

    def running(self):
        """Whether the job is on a worker or node now (not queued, not
        finished)."""
        return self._info()[0] == _core.STATE_RUNNING

    # -- job control and observation ---------------------------------------
    def abort(self, grace=1.0):
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

    def add_done_callback(self, fn):
        """Call fn(job) when the job finishes (now, if it has)."""
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


def as_completed(jobs, timeout=None):
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


def _worker_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = _boot.worker_pythonpath()
    return ["%s=%s" % kv for kv in env.items()]


class Server:
    """Parallel Python execution server: a pool of local worker processes
    and remote ppserver nodes (named, or found with ppservers=("*",)), fed
    from one queue."""

    default_port = _core.DEFAULT_PORT  # ppserver's TCP and discovery's UDP port
    default_secret = None

    def __init__(self, ncpus="autodetect", ppservers=(), secret=None,
                 loglevel=logging.WARNING, logstream=sys.stderr, restart=False,
                 proto=pickle.HIGHEST_PROTOCOL, socket_timeout=3600,
                 max_retries=2, node_timeout=5.0, no_capacity_timeout=None,
                 *, max_frame=None, job_timeout=None, job_memory_limit=None,
                 output="echo", max_output=1 << 20,
                 max_node_workers=_core.MAX_NODE_WORKERS):
        self._closed = True
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
        nodes, ports = self._check_nodes(ppservers)
        if nodes or ports:
            if secret is None:
                raise ValueError(
                    "ppservers need a secret: pp.Server(..., secret='...') with "
                    "the secret the ppserver nodes were started with (there is "
                    "no default secret)")
            if isinstance(secret, str):
                secret = secret.encode("utf-8")
            if (not isinstance(secret, (bytes, bytearray))
                    or not 0 < len(secret) <= _core.SECRET_MAX):
                raise ValueError("secret must be a non-empty str or bytes "
                                 "(at most %d bytes)" % _core.SECRET_MAX)
        ncpus = self._check_ncpus(ncpus)
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
        self._handler = logging.StreamHandler(logstream)
        self._handler.setLevel(loglevel)
        self._handler.setFormatter(logging.Formatter(
            "%(asctime)s pp %(levelname)s %(message)s"))
        _log.addHandler(self._handler)
        if _log.level == logging.NOTSET or _log.level > loglevel:
            _log.setLevel(loglevel)
        # Workers get the client's whole sys.path through PYTHONPATH, so they
        # skip the site module (-S): a worker starts in a quarter of the time.
        # PP_WORKER_SITE=1 restores it (for sitecustomize or .pth hooks).
        site = _boot.site_flags()
        argv = [sys.executable] + site + [
            "-c", _WORKER_BOOT % os.path.dirname(os.path.abspath(__file__)),
            str(os.getpid()), str(self._proto), "1" if restart else "0"]
        self._engine = _core.Engine(
            argv, env=_worker_env(), nworkers=ncpus, restart=bool(restart),
            max_retries=max_retries, job_type=Job, nodes=nodes or None,
            secret=bytes(secret) if nodes or ports else None,
            node_timeout=float(node_timeout),
            no_capacity_timeout=float(no_capacity_timeout or 0),
            discover=ports or None, max_frame=max_frame or 0,
            capture_output=output != "inherit", max_output=max_output,
            echo=_echo if output == "echo" else None,
            max_node_workers=max_node_workers)
        self.ppservers = tuple(nodes) + tuple(
            "*" if p == Server.default_port else "*:%d" % p for p in ports)
        self._ncpus = ncpus
        self._restart = bool(restart)
        self._groups = {"default": 0}
        self._fcache = {}
        self._t0 = time.time()
        self._closed = False
        self._cbthread = threading.Thread(target=self._events,
                                          name="pp-callbacks", daemon=True)
        self._cbthread.start()
        _servers.add(self)
        _log.debug("pp server started with %d workers", ncpus)

    # -- helpers ---------------------------------------------------------
    @staticmethod
    def _check_nodes(ppservers):
        """Split ppservers into 'host:port' strings and auto-discovery UDP
        ports ("*" is the default port, "*:port" another). The syntax is the
        C core's (_core.parse_ppserver), the one parser of these entries."""
        if isinstance(ppservers, str):
            ppservers = (ppservers,)
        nodes, ports = [], []
        for entry in ppservers:
            spec = _core.parse_ppserver(entry)
            if spec[0] == "discover":
                if spec[1] not in ports:
                    ports.append(spec[1])
                continue
            _, host, port = spec
            name = ("[%s]:%d" if ":" in host else "%s:%d") % (host, port)
            if name not in nodes:
                nodes.append(name)
        return nodes, ports

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

    def _func(self, func, depfuncs, modules, globals, extra):
        """The engine Func for a submit call, cached while its parts live.
        The cache holds strong references to every part of its key, so an
        id can never be reused while an entry refers to it."""
        if type(func) is types.MethodType:
            base = ("m", func.__func__, type(func.__self__))
        else:
            base = func
        if depfuncs or modules or globals is not None or extra:
            key = (base, tuple(depfuncs), tuple(modules),
                   id(globals) if globals is not None else None, extra)
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
                _log.log(ev[1], "%s", ev[2])
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
                                   job.tid)
            elif st != _core.ST_CANCELLED:
                try:
                    job.result()
                except Exception as e:
                    _log.error("job %d failed, its callback was not called: "
                               "%s: %s", job.tid, type(e).__name__, e)
        if isinstance(cbs, list):
            for fn in cbs:
                try:
                    fn(job)
                except Exception:
                    _log.exception("done-callback %r of job %d raised", fn, job.tid)

    # -- pp API ------------------------------------------------------------
    def submit(self, func, args=(), depfuncs=(), modules=(), callback=None,
               callbackargs=(), group="default", globals=None, *,
               timeout=None, memory_limit=None, retries=0):
        """Submit func(*args) for execution; returns a Job.

        depfuncs: functions and classes func uses (shipped by source);
        modules: module names (or "import ..."/"from ..." statements) to
        import first; callback(*callbackargs, result) runs when the job
        succeeds; group: name for wait(group); globals: a dict whose
        modules, functions and classes are made available to func."""
        if self._closed:
            self._check_open()
        if type(args) is not tuple:
            args = tuple(args)
        if not callable(func):
            raise TypeError("func must be callable, not %r" % (func,))
        if callback is not None and not callable(callback):
            raise TypeError("callback must be callable")
        extra = _ship.main_classes(args)
        f, is_method = self._func(func, depfuncs, modules, globals, extra)
        if is_method:
            args = (func.__self__,) + args
        data = pickle.dumps(args, self._proto)
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
            return self._engine.submit(f, data, gid, 0, callback,
                                       tuple(callbackargs))
        return self._engine.submit(f, data, gid, 0, callback,
                                   tuple(callbackargs),
                                   (timeout, memory_limit, retries))

    def abort(self, group=None, grace=1.0):
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

    def wait(self, group=None):
        """Wait for all jobs (of group, when given) to finish, callbacks
        included."""
        if threading.current_thread() is self._cbthread:
            raise RuntimeError("wait() cannot be called from a callback")
        gid = self._known_group(group)
        if gid is not None and not self._closed:
            self._engine.wait_group(gid)

    def get_ncpus(self):
        """The number of local worker processes."""
        return self._ncpus

    def set_ncpus(self, ncpus="autodetect"):
        """Grow or shrink the local pool; queued and running jobs are kept."""
        self._check_open()
        ncpus = self._check_ncpus(ncpus)
        self._engine.set_nworkers(ncpus)
        self._ncpus = ncpus

    def get_active_nodes(self):
        """{'local': ncpus, 'host:port': ncpus, ...}: local workers and every
        remote node connected now."""
        nodes = {"local": self._ncpus}
        if not self._closed:
            for name, connected, nworkers, _, _ in self._engine.node_stats():
                if connected:
                    nodes[name] = nworkers
        return nodes

    def get_stats(self):
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

    def print_stats(self):
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

    def map(self, func, *iterables, chunksize=None):
        """[func(*items) for items in zip(*iterables)], in parallel."""
        items = list(zip(*iterables))
        if not items:
            return []
        if chunksize is None:
            chunksize = max(1, math.ceil(len(items) / (4 * max(1, self._ncpus))))
        out = []
        for job in self._submit_chunks(func, items, chunksize):
            out.extend(job())
        return out

    def imap(self, func, *iterables, chunksize=1):
        """Iterator over func(*items), in order."""
        jobs = self._submit_chunks(func, list(zip(*iterables)), chunksize)
        return (r for job in jobs for r in job())

    def imap_unordered(self, func, *iterables, chunksize=1):
        """Iterator over func(*items), in completion order."""
        jobs = self._submit_chunks(func, list(zip(*iterables)), chunksize)
        return (r for job in as_completed(jobs) for r in job())

    def _submit_chunks(self, func, items, chunksize):
        self._check_open()
        if not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError("chunksize must be an int >= 1")
        f, is_method = self._func(func, (), (), None, ())
        gid = self._groups["default"]
        jobs = []
        for i in range(0, len(items), chunksize):
            chunk = items[i:i + chunksize]
            if is_method:
                chunk = [(func.__self__,) + a for a in chunk]
            data = pickle.dumps(chunk, self._proto)
            jobs.append(self._engine.submit(f, data, gid, _core.JOBF_CHUNK,
                                            None, ()))
        return jobs

    def destroy(self):
        """Stop the workers; unfinished jobs fail with DestroyedError.
        Safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        self._engine.shutdown()
        if threading.current_thread() is not self._cbthread:
            self._cbthread.join(10)
        _log.removeHandler(self._handler)

    def get_worker_stats(self):
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

    def __init__(self, job_server, func, depfuncs=(), modules=(), callback=None,
                 callbackargs=(), group="default", globals=None, *,
                 timeout=None, memory_limit=None, retries=0):
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

    def submit(self, *args):
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
