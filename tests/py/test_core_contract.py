"""The contract of the extension pp._core and of the public pp API: every
_core entry point called many times with bounded memory growth (leaks of C
records or of Python references show), the exported constants and error
table, errors mapped to the right exception classes, heap types, and the
public callables with their signatures, checked in one place."""
import gc
import inspect
import typing
import os
import pickle
import sys

import pytest

import pp
from pp import _core

# RSS growth allowed across a loop. Under AddressSanitizer (make
# SANITIZER=address test preloads it) freed memory waits in a quarantine of
# up to 256 MB, so RSS says nothing about leaks there: the loops still run
# (the sanitizers watch every access) and the reference counts are checked.
RSS_SLACK_KB = 16 * 1024
SANITIZED = "libasan" in os.environ.get("LD_PRELOAD", "")


def rss_kb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def grows(fn, rounds):
    """Run fn() three times to warm up (allocator pools and caches reach
    their working size; after other tests in the same process that takes
    more than one round), then `rounds` times; the RSS growth in KiB (0
    under AddressSanitizer, see SANITIZED)."""
    for _ in range(3):
        fn()
    gc.collect()
    before = rss_kb()
    for _ in range(rounds):
        fn()
    gc.collect()
    return 0 if SANITIZED else rss_kb() - before


def engine(**kw):
    """An Engine with no local worker unless asked (no process is started)."""
    kw.setdefault("nworkers", 0)
    return _core.Engine([sys.executable, "-c", "pass"], **kw)


# ---- exports -----------------------------------------------------------------

def test_constants_come_from_the_core():
    assert _core.DEFAULT_PORT == 60000
    assert _core.SECRET_MAX == 4096
    assert _core.FRAME_MAX == 1 << 30
    assert pp.Server.default_port == _core.DEFAULT_PORT
    codes = _core.errorcode
    assert codes[-5001] == "ENOMEM" and codes[-5008] == "ETIMEDOUT"
    assert all(-5999 <= c <= -5001 for c in codes)
    assert len(set(codes.values())) == len(codes)


def test_types_are_heap_types_of_the_module():
    heap = 1 << 9  # Py_TPFLAGS_HEAPTYPE
    for t in (_core.Engine, _core.Job, _core.Func, _core.Lease):
        assert t.__flags__ & heap, t
        assert t.__module__ == "pp._core"
    assert issubclass(pp.Job, _core.Job)
    with pytest.raises(TypeError):
        _core.Job()


def test_entry_points():
    """What pp._core offers, all of it used by python/pp (a new entry point
    is added here on purpose)."""
    def names(o):
        return {n for n in dir(o) if not n.startswith("__")}
    assert names(_core) == {
        "Engine", "Func", "Job", "Lease", "Obj", "worker_main", "template_serve",
        "parse_ppserver",
        "bufs_loads", "errorcode", "DEFAULT_PORT", "SECRET_MAX",
        "MAX_NODE_WORKERS", "FRAME_MAX", "JOBF_CHUNK", "JOBF_ONEARG", "BUFS_MAX",
        "OOB_MIN", "oob_filter", "JOB_OBJS_MAX", "OBJ_LIMIT_DEFAULT", "ST_OK",
        "ST_EXC", "ST_SERIAL", "ST_LOST", "ST_DESTROYED", "ST_CANCELLED",
        "ST_FAILED", "ST_TIMEOUT", "ST_ABORTED", "STATE_QUEUED",
        "STATE_RUNNING", "STATE_DONE"}
    assert names(_core.Engine) == {
        "submit", "wait_group", "next_event", "set_nworkers", "stats", "pids",
        "node_stats", "shutdown", "want_callback", "callback_done",
        "abort_group", "obj_release"}
    assert names(_core.Job) == {
        "result", "done", "cancel", "_wait", "_status", "_payload",
        "_failure", "callback", "callbackargs", "_done_callbacks", "_engine",
        "tid", "_abort", "_info", "_output"}
    assert names(_core.Func) == set()
    assert names(_core.Obj) == {"key", "size"}
    e = engine()
    assert set(e.stats()) == {"njobs", "time", "queued", "running",
                              "shm_used", "shm_size", "objs_sent",
                              "obj_bytes_sent", "objs_dropped", "template_pid",
                              "handoffs", "direct_results"}
    e.shutdown()


def test_type_references_balance():
    """Instances of heap types own a reference to their type: every one
    made and freed gives it back (a missing or extra Py_DECREF shows)."""
    types = (pp.Job, _core.Job, _core.Func, _core.Engine, _core.Obj)
    gc.collect()
    before = [sys.getrefcount(t) for t in types]
    with pp.Server(1) as s:
        jobs = [s.submit(abs, (-i,), callback=lambda r: None) for i in range(100)]
        assert [j() for j in jobs] == list(range(100))
        s.wait()
        del jobs
    del s
    funcs = [_core.Func(b"descriptor %d" % i) for i in range(100)]
    del funcs
    objs = [_core.Obj(b"object %d" % i) for i in range(100)]
    del objs
    for _ in range(5):
        e = engine()
        e.shutdown()
        del e
    gc.collect()
    assert [sys.getrefcount(t) for t in types] == before


def test_module_instances_are_independent():
    """Multi-phase initialisation: a second module object has its own types
    and state, and the two do not mix."""
    import importlib.util
    spec = importlib.util.find_spec("pp._core")
    m2 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m2)
    assert m2 is not _core and m2.Job is not _core.Job
    assert m2.Engine is not _core.Engine and m2.DEFAULT_PORT == _core.DEFAULT_PORT

    class Job2(m2.Job):
        __slots__ = ()

    e = m2.Engine([sys.executable, "-c", "pass"], nworkers=0, job_type=Job2)
    e.shutdown()
    with pytest.raises(TypeError, match="job_type"):
        engine(job_type=Job2)  # a Job of the other module


def test_parse_ppserver():
    p = _core.parse_ppserver
    assert p("host") == ("node", "host", 60000)
    assert p("host:7000") == ("node", "host", 7000)
    assert p("::1") == ("node", "::1", 60000)
    assert p("[::1]:7000") == ("node", "::1", 7000)
    assert p("*") == ("discover", 60000)
    assert p("*:7001") == ("discover", 7001)
    for bad in ("", "h:", "h:0", "h:65536", "h:x", "h: 5", "h:+5", "*:",
                "*:0", "*: 5", "[::1", "[::1]x", "a\0b", 5, None, b"h"):
        with pytest.raises(ValueError):
            p(bad)
    # pp.Server uses it: the same entries are accepted and rejected
    assert pp.Server._check_nodes(("h", "::1", "*", "*:7", "h:60000", "h")) == (
        ["h:60000", "[::1]:60000"], [60000, 7])
    with pytest.raises(ValueError):
        pp.Server(0, ppservers=("h:+5",), secret="s")


def test_engine_takes_keywords_and_maps_errors():
    e = engine(nworkers=0, restart=False, max_retries=1, max_frame=1 << 20)
    e.shutdown()
    f = _core.Func(pickle.dumps(("ref", "builtins", "abs", None)))
    with pytest.raises(RuntimeError, match="engine closed"):
        e.submit(f, pickle.dumps((1,)), 0, 0, None, ())
    with pytest.raises(TypeError):
        _core.Engine([sys.executable], 0)  # options are keywords
    with pytest.raises(ValueError, match="argv"):
        _core.Engine([])
    with pytest.raises(ValueError, match="max_frame"):
        engine(max_frame=-1)
    with pytest.raises(ValueError, match="max_frame"):
        engine(max_frame=_core.FRAME_MAX + 1)
    with pytest.raises(TypeError, match="job_type"):
        engine(job_type=int)
    with pytest.raises(ValueError, match="invalid argument"):  # from the core
        engine(nodes=["127.0.0.1:1"], secret=None)


def test_max_frame_bounds_submitted_arguments():
    with pp.Server(1, max_frame=64 * 1024) as s:
        assert s.submit(len, (b"x" * 1000,))() == 1000
        with pytest.raises(ValueError, match="frame limit"):
            s.submit(len, (b"x" * (128 * 1024),))
    for bad in (0, -1, True, 1.5, "1", _core.FRAME_MAX + 1):
        with pytest.raises(ValueError, match="max_frame"):
            pp.Server(0, max_frame=bad)


# ---- leaks -------------------------------------------------------------------

def test_submit_and_results_do_not_leak():
    payload = b"p" * 10000
    cb_args = ("tag",)
    seen = []

    def callback(tag, result):
        seen.append(len(result))

    with pp.Server(2) as s:
        refs = (sys.getrefcount(payload), sys.getrefcount(callback),
                sys.getrefcount(cb_args))

        def batch():
            jobs = [s.submit(bytes, (payload,)) for _ in range(200)]
            jobs += [s.submit(bytes, (payload,), callback=callback,
                              callbackargs=cb_args) for _ in range(50)]
            for j in jobs:
                assert j() == payload
                assert j.done() and j.exception() is None
                j._payload(), j._failure(), j.tid
            s.wait()
            bad = s.submit(int, ("x",))
            with pytest.raises(ValueError):
                bad()
            assert s.get_stats()["local"].njobs > 0
            s.get_worker_stats(), s.get_active_nodes()

        # 10 x 250 jobs of 10 kB out and back: 50 MB if records leaked
        assert grows(batch, 10) < RSS_SLACK_KB
        s.wait()
    gc.collect()
    assert (sys.getrefcount(payload), sys.getrefcount(callback),
            sys.getrefcount(cb_args)) == refs
    assert len(seen) == 13 * 50  # 3 warm-up rounds + 10


def test_engine_create_destroy_does_not_leak():
    def cycle():
        for _ in range(5):
            e = engine(discover=None, nodes=None, max_frame=0)
            e.stats(), e.pids(), e.node_stats(), e.next_event(0)
            e.wait_group(-1, 0)
            e.shutdown()
            assert e.next_event(0) is False
            del e

    assert grows(cycle, 10) < RSS_SLACK_KB  # 65 engines


def test_small_entry_points_do_not_leak():
    blob = pickle.dumps(("ref", "builtins", "abs", None))

    def many():
        for i in range(2000):
            _core.Func(blob)
            _core.Obj(blob)
            _core.Obj((blob, [memoryview(blob)]))
            _core.parse_ppserver("host:%d" % (1 + i))
            _core.parse_ppserver("*")
            try:
                _core.parse_ppserver("bad:port")
            except ValueError:
                pass

    assert grows(many, 10) < RSS_SLACK_KB


# ---- the public API ------------------------------------------------------------

def sig(fn):
    """fn's signature without its type annotations (checked apart)."""
    s = inspect.signature(fn)
    return str(s.replace(
        parameters=[p.replace(annotation=p.empty) for p in s.parameters.values()],
        return_annotation=s.empty))


def test_public_api_is_annotated_and_typed():
    """The public API carries type hints, and the package says so (PEP 561)."""
    import pathlib
    assert (pathlib.Path(pp.__file__).parent / "py.typed").is_file()
    for fn in (pp.Server.__init__, pp.Server.submit, pp.Server.map, pp.Server.imap,
               pp.Server.imap_unordered, pp.Server.executor, pp.Executor.__init__,
               pp.Executor.submit, pp.Executor.map, pp.Executor.shutdown,
               pp.Job.exception, pp.Job.wait, pp.Job.add_done_callback,
               pp.Server.put, pp.Server.object_stats,
               pp.as_completed, pp.progress):
        hints = typing.get_type_hints(fn)
        assert hints, fn.__qualname__
        assert "return" in hints, fn.__qualname__


def test_public_api_callables_and_signatures():
    assert sorted(pp.__all__) == sorted([
        "Server", "Template", "Job", "Statistics", "as_completed", "Executor",
        "progress", "PPError",
        "WorkerLostError", "DestroyedError", "SerializationError",
        "RemoteError", "RemoteTraceback", "CancelledError", "JobTimeoutError",
        "JobAbortedError", "version", "slurm_nodes", "ObjectRef",
        "object_store_info"])
    for name in pp.__all__:
        assert hasattr(pp, name), name
    S = pp.Server
    assert sig(S.__init__) == (
        "(self, ncpus='autodetect', ppservers=(), secret=None, loglevel=30, "
        "logstream=None, restart=False, proto=%d, socket_timeout=3600, "
        "max_retries=2, node_timeout=5.0, no_capacity_timeout=None, *, "
        "max_frame=None, job_timeout=None, job_memory_limit=None, "
        "output='echo', max_output=1048576, max_node_workers=256, tls=True, "
        "tls_cert=None, tls_key=None, tls_ca=None, secret_file=None, "
        "object_store_limit=None, start_method='fork')"
        % (pickle.HIGHEST_PROTOCOL,))
    expected = {
        "submit": "(self, func, args=(), depfuncs=(), modules=(), callback=None, "
                  "callbackargs=(), group='default', globals=None, *, "
                  "timeout=None, memory_limit=None, retries=0)",
        "abort": "(self, group=None, grace=1.0)",
        "wait": "(self, group=None)",
        "get_ncpus": "(self)",
        "set_ncpus": "(self, ncpus='autodetect')",
        "get_active_nodes": "(self)",
        "get_stats": "(self)",
        "print_stats": "(self)",
        "map": "(self, func, *iterables, chunksize=None, progress=False, timeout=None)",
        "imap": "(self, func, *iterables, chunksize=1, progress=False, timeout=None)",
        "imap_unordered": "(self, func, *iterables, chunksize=1, progress=False, timeout=None)",
        "executor": "(self)",
        "destroy": "(self)",
        "get_worker_stats": "(self)",
        "put": "(self, obj)",
        "object_stats": "(self)",
    }
    for name, s in expected.items():
        assert sig(getattr(S, name)) == s, name
    assert sig(pp.Template.__init__) == (
        "(self, job_server, func, depfuncs=(), modules=(), callback=None, "
        "callbackargs=(), group='default', globals=None, *, timeout=None, "
        "memory_limit=None, retries=0)")
    assert sig(pp.Template.submit) == "(self, *args)"
    assert sig(pp.as_completed) == "(jobs, timeout=None)"
    assert sig(pp.slurm_nodes) == "(nodelist=None, port=None)"
    assert pp.version == pp.__version__
    job_methods = ["result", "exception", "done", "cancel", "cancelled",
                   "running", "add_done_callback", "ready", "wait", "get",
                   "successful", "abort"]
    for name in job_methods:
        assert callable(getattr(pp.Job, name)), name
    assert sig(pp.Job.exception) == "(self, timeout=None)"
    assert sig(pp.Job.wait) == "(self, timeout=None)"
    assert issubclass(pp.WorkerLostError, pp.PPError)
    assert issubclass(pp.JobTimeoutError, pp.PPError)
    assert issubclass(pp.JobTimeoutError, TimeoutError)
    assert issubclass(pp.JobAbortedError, pp.PPError)
    assert sig(pp.Job.abort) == "(self, grace=1.0)"
    assert issubclass(pp.DestroyedError, pp.PPError)
    assert issubclass(pp.SerializationError, pp.PPError)
    assert issubclass(pp.RemoteError, pp.PPError)
    assert isinstance(pp.version, str)
