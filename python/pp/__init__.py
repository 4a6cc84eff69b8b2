"""pp — Parallel Python with a C engine.

    import pp
    job_server = pp.Server()                 # one worker per core
    job = job_server.submit(func, (arg,), depfuncs, modules)
    result = job()

The API is Parallel Python's (Server, submit, Template, wait, get_stats,
print_stats, set_ncpus, ...); the engine beneath is C. See docs/api.md."""
from ._errors import (CancelledError, DestroyedError, JobAbortedError,
                      JobTimeoutError, PPError, RemoteError, RemoteTraceback,
                      SerializationError, WorkerLostError)
from ._server import Job, Server, Statistics, Template, as_completed
from ._executor import Executor
from ._objects import ObjectRef, info as object_store_info
from ._progress import progress
from ._slurm import slurm_nodes

from ._version import __version__

version = __version__
copyright = "Copyright (c) 2026 the pp developers"

__all__ = ["Server", "Template", "Job", "Statistics", "as_completed",
           "Executor", "progress", "PPError",
           "WorkerLostError", "DestroyedError", "SerializationError",
           "RemoteError", "RemoteTraceback", "CancelledError", "JobTimeoutError",
           "JobAbortedError", "version", "slurm_nodes", "ObjectRef",
           "object_store_info"]
