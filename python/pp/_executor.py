"""pp.Executor: a concurrent.futures.Executor on pp's engine, usable where a
ProcessPoolExecutor was (including asyncio's loop.run_in_executor). Its
futures are pp Jobs. Methods may be called from any thread."""
from __future__ import annotations

import concurrent.futures as _cf
import itertools
import threading
import time
import weakref
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, Union

from ._server import Job, Server

_ids = itertools.count(1)


class Executor(_cf.Executor):
    """Executor(max_workers=None, *, ppservers=(), secret=None,
    **server_options): a concurrent.futures.Executor running on a new
    pp.Server with max_workers local workers (None: one per core; 0 with
    ppservers: nodes only). server_options are pp.Server's keyword
    arguments. Server.executor() makes one over an existing Server.

    submit(fn, /, *args, **kwargs) returns a pp.Job (a Future); keyword
    arguments reach fn. fn is shipped as pp ships functions (by reference
    or by source), so functions defined in __main__ work."""

    def __init__(self, max_workers: Optional[int] = None, *,
                 ppservers: Sequence[str] = (),
                 secret: Union[str, bytes, None] = None,
                 **server_options: Any) -> None:
        if max_workers is None:
            ncpus: Union[int, str] = "autodetect"
        elif isinstance(max_workers, bool) or not isinstance(max_workers, int):
            raise TypeError("max_workers must be an int or None")
        elif max_workers < 0 or (max_workers == 0 and not ppservers):
            raise ValueError("max_workers must be greater than 0")
        else:
            ncpus = max_workers
        server = Server(ncpus, ppservers=ppservers, secret=secret,
                        **server_options)
        self._setup(server, True)

    @classmethod
    def _over(cls, server: Server) -> "Executor":
        """An Executor over an existing Server (Server.executor())."""
        self = cls.__new__(cls)
        self._setup(server, False)
        return self

    def _setup(self, server: Server, own: bool) -> None:
        self._server = server
        self._own = own            # shutdown destroys the Server
        self._group = "pp.Executor-%d" % next(_ids)
        self._jobs = weakref.WeakSet()  # for shutdown(cancel_futures=True)
        self._lock = threading.Lock()
        self._shutdown = False

    @property
    def server(self) -> Server:
        """The pp.Server the jobs run on."""
        return self._server

    def submit(self, fn: Callable[..., Any], /, *args: Any,
               **kwargs: Any) -> Job:
        """Schedule fn(*args, **kwargs); returns its Job (a Future).
        RuntimeError after shutdown()."""
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            s = self._server
            job = s._submit(fn, args, (), (), None, (), self._group, None,
                            None, None, 0, kwargs if kwargs else None)
            self._jobs.add(job)
        return job

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any],
            timeout: Optional[float] = None, chunksize: int = 1
            ) -> Iterator[Any]:
        """Like ProcessPoolExecutor.map: every call is submitted now (in
        chunks of chunksize items, one job each); the returned iterator
        yields the results in order and raises TimeoutError if they are not
        all there timeout seconds after this call."""
        if isinstance(chunksize, bool) or not isinstance(chunksize, int) or \
                chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if chunksize == 1:
            return super().map(fn, *iterables, timeout=timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        items = list(zip(*iterables))
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            jobs = self._server._submit_chunks(fn, items, chunksize)
            for j in jobs:
                self._jobs.add(j)
        return self._chunked_results(jobs, deadline)

    @staticmethod
    def _chunked_results(jobs, deadline):
        """Yield the results of chunk jobs in order, within the deadline;
        closing the iterator early cancels the chunks not started."""
        try:
            jobs.reverse()
            while jobs:
                job = jobs[-1]
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError()
                part = job.result(left)
                jobs.pop()
                yield from part
        finally:
            for job in jobs:
                job.cancel()

    def shutdown(self, wait: bool = True, *,
                 cancel_futures: bool = False) -> None:
        """No new jobs; cancel_futures=True cancels those not started;
        wait=True waits for the others. An Executor that made its Server
        destroys it once its jobs are done (in the background with
        wait=False)."""
        with self._lock:
            first = not self._shutdown
            self._shutdown = True
        if cancel_futures:
            for job in list(self._jobs):
                job.cancel()
        if wait:
            self._server.wait(self._group)
            if self._own and first:
                self._server.destroy()
        elif self._own and first:
            threading.Thread(target=self._finish, name="pp-executor-shutdown",
                             daemon=True).start()

    def _finish(self) -> None:
        """shutdown(wait=False) of an owned Server: wait, then destroy it
        (a daemon thread)."""
        self._server.wait(self._group)
        self._server.destroy()
