"""How a worker process starts: the one definition used by pp.Server for its
local workers (_server.py) and by ppserver for its own (src/ppserver/wboot.c
asks the interpreter for these values once, at start-up, importing only this
module under a bare `pp` package).

A worker needs pp._worker and pp._core only: WORKER_BOOT registers a bare
`pp` package (the full one loads on first use, see _worker.lazy_package)
instead of importing pp/__init__, which costs more than the interpreter's
start. The worker runs with -S (no site import, whose .pth files can cost
more again) and PYTHONPATH set to the starting process's sys.path, so it sees
the same modules. PP_WORKER_SITE=1 keeps site (for sitecustomize or .pth
hooks that must run in workers).

Worker command: python [-S] -c WORKER_BOOT % pkgdir PARENT_PID PROTO RESTART,
with its frame pipe on file descriptor 3. With start_method "fork" (the
default) the same interpreter, started once with TEMPLATE_BOOT instead and
its control socket on file descriptor 3, is the fork server that forks
every worker (docs/protocol.md 4.3). Keep this module free of imports
beyond os and sys: ppserver's question imports it on every start."""
import os
import sys

WORKER_BOOT = ("import sys; p = type(sys)('pp'); "
               "p.__path__ = [%r]; p.__package__ = 'pp'; sys.modules['pp'] = p; "
               "import pp._worker as w; w.main()")

TEMPLATE_BOOT = WORKER_BOOT.replace("w.main()", "w.template()")

START_METHODS = ("fork", "spawn")


def check_start_method(value):
    """start_method as given, or ValueError naming the choices."""
    if value not in START_METHODS:
        raise ValueError("start_method must be \"fork\" (workers forked from "
                         "a clean fork server, the default) or \"spawn\" "
                         "(each worker a fresh interpreter), not %r" % (value,))
    return value


def site_flags():
    """The interpreter flags before -c: ["-S"], or [] with PP_WORKER_SITE=1."""
    return [] if os.environ.get("PP_WORKER_SITE") == "1" else ["-S"]


def worker_pythonpath():
    """PYTHONPATH for a worker: this process's sys.path, absolute, each
    directory once ('' is the current directory)."""
    paths = []
    for p in sys.path:
        p = os.path.abspath(p) if p else os.getcwd()
        if p not in paths:
            paths.append(p)
    return os.pathsep.join(paths)
