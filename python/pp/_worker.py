"""The worker process's Python side: turning a function descriptor back into
a callable (load) and an exception into bytes (excfmt). The loop itself is C
(pp._wcore.worker_main); it calls these only for new functions and errors.
A worker never imports pp._core (the engine, linked with OpenSSL): loading
it is about 2 ms of every start.

Started by the engine as (see _boot.WORKER_BOOT):
    python -S -c "<register a bare pp package>; import pp._worker as w; w.main()" \
        PARENT_PID PROTO RESTART
with its frame pipe on file descriptor 3, or forked by the fork server,
started the same way with w.template() (_boot.TEMPLATE_BOOT)."""
import builtins
import sys

# posix is os's C module (os itself imports _collections_abc, stat,
# posixpath: about 1 ms of every start); a job that wants os imports it.
import posix
import _signal as signal

_ModuleType = type(sys)  # types.ModuleType, without importing types


def _import_pickle():
    """_pickle, the C module behind pickle (pickle.py imports re, struct and
    more; its functions are _pickle's), imported without functools: the one
    thing _pickle takes from functools at import is `partial` (for
    __newobj_ex__ below protocol 4), which is _functools.partial, while
    functools itself imports collections, operator, reprlib, keyword and
    types, about 3 ms of a worker's start. A stand-in `functools` holding
    only _functools.partial is in sys.modules while _pickle initialises and
    is gone right after, so a job that imports functools gets the real one
    (test_worker_imports). Returns the _pickle module. Called once, at this
    module's import."""
    if "_pickle" in sys.modules or "functools" in sys.modules:
        import _pickle
        return _pickle
    import _functools
    stand_in = _ModuleType("functools")
    stand_in.partial = _functools.partial
    sys.modules["functools"] = stand_in
    try:
        import _pickle
    finally:
        if sys.modules.get("functools") is stand_in:
            del sys.modules["functools"]
    return _pickle


pickle = _import_pickle()
_proto = 5  # pickle.HIGHEST_PROTOCOL; the engine's own comes in argv


def _resolve(module, qualname):
    __import__(module)  # (importlib's package imports warnings: slower)
    obj = sys.modules[module]
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def load(blob):
    """Descriptor bytes -> (callable, namespace module or None)."""
    desc = pickle.loads(blob)
    kind = desc[0]
    if kind == "ref":
        try:
            return _resolve(desc[1], desc[2]), None
        except (ImportError, AttributeError):
            if len(desc) > 3 and desc[3] is not None:
                return load(desc[3])  # not importable here: use its source
            raise
    if kind == "cp":
        return pickle.loads(desc[1]), None
    if kind == "kw":  # Executor.submit with keyword arguments
        fn, mod = load(desc[1])
        return _with_kwargs(fn), mod
    if kind != "src":
        raise ValueError("unknown function descriptor kind %r" % (kind,))
    _, name, imports, refs, sources, method = desc
    mod = _ModuleType("__main__")
    ns = mod.__dict__
    ns["__builtins__"] = builtins
    for spec in imports:
        if spec.startswith(("import ", "from ")):
            exec(spec, ns)
        else:
            ns[spec.split(".")[0]] = __import__(spec)
    for bound, (module, qualname) in refs:
        ns[bound] = _resolve(module, qualname)
    for i, src in enumerate(sources):
        filename = "<pp %s #%d>" % (name, i)
        _sources[filename] = src  # for tracebacks, see _register_sources
        exec(compile(src, filename, "exec"), ns)
    if method is not None:
        fn = getattr(ns[method[0]], method[1])
    else:
        fn = ns[name]
    return fn, mod


def _with_kwargs(fn):
    """A callable taking the keyword arguments as its last positional
    argument (a dict): how Executor.submit(fn, *args, **kwargs) travels."""
    def call(*args):
        return fn(*args[:-1], **args[-1])
    call.__wrapped__ = fn
    return call


_sources = {}  # filename -> source text of shipped code


def _register_sources():
    """Let tracebacks show the lines of shipped source. Done at the first
    exception rather than at load: linecache costs milliseconds to import."""
    import linecache
    for filename, src in _sources.items():
        linecache.cache.setdefault(
            filename, (len(src), None, src.splitlines(True), filename))


def excfmt(exc, serial):
    """Exception -> pickled (type name, message, traceback text, exc bytes)."""
    import traceback
    _register_sources()
    if exc is None:
        return pickle.dumps(("builtins.SystemError", "unknown error", "", None), _proto)
    try:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except Exception:
        tb = ""
    t = type(exc)
    tname = "%s.%s" % (t.__module__, t.__qualname__)
    try:
        msg = str(exc)
    except Exception:
        msg = "<unprintable %s>" % t.__name__
    excb = None
    if not serial:
        try:
            excb = pickle.dumps(exc, _proto)
        except Exception:
            excb = None
    return pickle.dumps((tname, msg, tb, excb), _proto)


def lazy_package():
    """Make the bare `pp` package the bootstrap registered load its real
    __init__ the first time a job touches one of its names."""
    pkg = sys.modules.get("pp")
    if pkg is None or hasattr(pkg, "__getattr__") or hasattr(pkg, "Server"):
        return

    def __getattr__(name):
        del pkg.__getattr__
        init = pkg.__path__[0] + "/__init__.py"
        with open(init) as f:
            code = compile(f.read(), init, "exec")
        pkg.__file__ = init
        exec(code, pkg.__dict__)
        try:
            return pkg.__dict__[name]
        except KeyError:
            raise AttributeError("module 'pp' has no attribute %r" % name) from None

    pkg.__getattr__ = __getattr__


def _submodule(name):
    """pp.<name>, imported without touching the package's attributes: in a
    worker `from . import x` asks the bare package for x first, and its
    lazy __getattr__ (lazy_package) would run the whole pp/__init__ (as
    long as the interpreter's own start) before the first job."""
    full = __package__ + "." + name
    __import__(full)
    return sys.modules[full]


def _prepare():
    """What every worker sets up first (a spawned one, or the fork server
    for all it forks): returns (parent pid, restart)."""
    global _proto
    lazy_package()
    # Ctrl-C is the client's: the worker loop ignores SIGINT itself, while
    # Python's handler stays the default one, so that an abort (SIGUSR2 from
    # the engine) can raise KeyboardInterrupt inside the running job.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    parent, proto, restart = (int(a) for a in sys.argv[1:4])
    _proto = proto
    try:
        sys.stdout.reconfigure(line_buffering=True)
    except Exception:
        pass
    return parent, restart


def _serve(parent, restart):
    """The worker loop on fd 3 until the engine is done; never returns."""
    _wcore = _submodule("_wcore")
    try:
        _wcore.worker_main(3, load, excfmt, _proto, restart, parent)
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
    posix._exit(0)


def main():
    """A worker started as a fresh interpreter (start_method="spawn")."""
    _serve(*_prepare())


def _warm():
    """The fork server, once its first workers are forked and no request
    waits: load the whole pp package (the lazy one of lazy_package) and what
    it imports, which jobs often need, so workers forked from now on
    (respawns, set_ncpus growth, restart=True) start with it. The first
    workers start without it: it costs as much as the interpreter's start."""
    import gc
    getattr(sys.modules[__package__], "__version__", None)
    gc.freeze()


def template():
    """The fork server (start_method="fork", docs/protocol.md 4.3): import
    what every worker needs, then fork a worker for every request on the
    control socket (fd 3). A forked child returns from template_serve and
    is a worker at once; the template exits when the engine is gone."""
    parent, restart = _prepare()
    _wcore = _submodule("_wcore")
    _submodule("_oob")  # workers need it too
    import io  # noqa: F401  (output capture)
    import gc
    gc.freeze()  # never scanned, so its pages stay shared with the children
    if _wcore.template_serve(3, parent, _warm):
        _serve(posix.getppid(), restart)
    posix._exit(0)
