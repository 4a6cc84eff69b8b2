"""Regression: a worker imported the whole pp package (pp/__init__ and
everything the client side needs: _server, _executor, _ship, ...) before
its first job, doubling the start of every worker and of the fork server
(W5 about 50 ms instead of about 25 on a quiet 2-core VM).

The worker bootstrap registers a bare `pp` package whose __getattr__ runs
the real __init__ on first use (_worker.lazy_package); `from . import
_core` inside the worker asked that package for `_core` and so ran it.
Before the fix every job saw pp._server in sys.modules.

The fork server loads the whole package once its first workers are
forked and it is idle (_worker._warm), so workers forked later (a respawn)
start with it: their first job does not pay for it either.

Likewise a worker used pickle.py, signal.py and threading.py where their C
modules do, about 9 ms of each worker's start in W5 (see SLOW_STDLIB),
and os and functools (through _pickle) another 3 ms."""
import time

import pytest

import pp

CLIENT_SIDE = ("pp._server", "pp._executor", "pp._ship", "pp._slurm",
               "pp._progress")


def loaded_pp_modules():
    import sys
    return sorted(m for m in sys.modules if m == "pp" or m.startswith("pp."))


def uses_the_package():
    import pp
    return pp.Template.__name__, pp.__version__ == pp._version.__version__


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_worker_starts_without_the_client_side_of_pp(start_method):
    with pp.Server(1, start_method=start_method) as s:
        mods = s.submit(loaded_pp_modules)()
        assert "pp._worker" in mods and "pp._wcore" in mods
        assert not set(CLIENT_SIDE) & set(mods), mods
        # the package is still whole for a job that uses it
        assert s.submit(uses_the_package)() == ("Template", True)


# What a worker needs of pickle and signal is their C modules (_pickle,
# _signal, whose functions pickle.py and signal.py re-export); the Python
# modules import re, struct, enum and more, and threading.py (for
# pp._objects) more again: about 6-9 ms of W5 together. os (posix is its C
# module) and functools (which _pickle asks for partial: _functools's)
# import collections, operator, stat, posixpath and more: 3 ms.
SLOW_STDLIB = ("pickle", "re", "enum", "signal", "threading", "struct",
               "os", "functools", "collections")


def loaded_modules():
    import sys
    return sorted(sys.modules)


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_worker_starts_without_the_slow_stdlib_modules(start_method):
    with pp.Server(1, start_method=start_method) as s:
        # shipped as source (modules= makes it so): importing this test
        # module by reference would import pytest and all it needs
        mods = s.submit(loaded_modules, (), modules=("sys",))()
        assert "_pickle" in mods and "pp._objects" in mods
        assert not set(SLOW_STDLIB) & set(mods), set(SLOW_STDLIB) & set(mods)
        # and pickling still works whole: an exception crosses back
        with pytest.raises(ZeroDivisionError):
            s.submit(divide, (1, 0))()


def divide(a, b):
    return a / b


def pickle_needing_partial():
    """Below protocol 4 _pickle saves a __newobj_ex__ reduction through
    functools.partial: the one it took at import, while the worker had no
    functools. Returns what the job saw."""
    import sys
    import builtins
    import _pickle

    class KwOnly:
        def __new__(cls, *, a):
            obj = object.__new__(cls)
            obj.a = a
            return obj

        def __getnewargs_ex__(self):
            return (), {"a": self.a}

    # picklable by reference from this job's worker: builtins._pp_test_KwOnly
    KwOnly.__module__, KwOnly.__qualname__ = "builtins", "_pp_test_KwOnly"
    KwOnly.__new__.__module__ = "builtins"
    KwOnly.__new__.__qualname__ = "_pp_test_KwOnly.__new__"
    builtins._pp_test_KwOnly = KwOnly
    before = "functools" in sys.modules
    # saving the partial by reference imports the real functools
    back = _pickle.loads(_pickle.dumps(KwOnly(a=41), 2))
    import functools
    return (before, back.a, type(back).__name__,
            callable(getattr(functools, "lru_cache", None)),
            functools.reduce(lambda x, y: x + y, [1, 2, 3]))


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_pickle_is_whole_without_functools_at_start(start_method):
    """The worker imports _pickle without functools (pp._worker.
    _import_pickle): pickling that needs partial still works, and a job that
    imports functools gets the real module, not the stand-in."""
    with pp.Server(1, start_method=start_method) as s:
        got = s.submit(pickle_needing_partial, (), modules=("sys",))()
        assert got == (False, 41, "KwOnly", True, 6), got


def loaded_libraries():
    import sys
    with open("/proc/self/maps") as f:
        libs = {line.split()[-1].rsplit("/", 1)[-1] for line in f
                if ".so" in line}
    return "pp._core" in sys.modules, sorted(libs)


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_worker_starts_without_the_engine_and_openssl(start_method):
    """A worker's loop is pp._wcore, built without the engine and without
    OpenSSL: loading pp._core maps libssl and libcrypto, about 2 ms of each
    start before the first job (W5). A job that needs the engine (the whole
    package) still gets it."""
    with pp.Server(1, start_method=start_method) as s:
        core, libs = s.submit(loaded_libraries, (), modules=("sys",))()
        assert not core
        assert not [lib for lib in libs if lib.startswith(("libssl", "libcrypto"))], libs
        assert [lib for lib in libs if lib.startswith("_wcore")], libs
        assert s.submit(uses_the_package)() == ("Template", True)


def die():
    import os
    os._exit(3)


def test_workers_forked_after_the_first_start_with_the_whole_package():
    with pp.Server(1, start_method="fork", max_retries=0) as s:
        assert not set(CLIENT_SIDE) & set(s.submit(loaded_pp_modules)())
        time.sleep(0.3)  # the fork server is idle: it loads the rest
        with pytest.raises(pp.WorkerLostError):
            s.submit(die)()
        mods = s.submit(loaded_pp_modules)()  # a worker forked just now
        assert set(CLIENT_SIDE) <= set(mods), mods
        assert s.submit(uses_the_package)() == ("Template", True)


def test_the_build_leaves_pp_compiled():
    """`make` compiles pp's modules ahead: workers are often started with
    PYTHONDONTWRITEBYTECODE=1 and would compile each module they import on
    every start. Every module has current bytecode next to it."""
    import glob
    import importlib.util
    import os
    pkg = os.path.dirname(pp.__file__)
    stale = []
    for src in glob.glob(os.path.join(pkg, "*.py")):
        pyc = importlib.util.cache_from_source(src)
        if not os.path.exists(pyc) or os.path.getmtime(pyc) < os.path.getmtime(src):
            stale.append(os.path.basename(src))
    assert stale == [], stale
