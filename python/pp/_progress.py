"""Progress bars for pp: pp.progress(jobs) and Server.map/imap/
imap_unordered(..., progress=True). tqdm draws the bar when it is
importable; otherwise a plain one-line bar on stderr, redrawn at most ten
times a second. Used from the thread that iterates."""
from __future__ import annotations

import sys
import time
from typing import IO, Iterable, Iterator, Optional, TypeVar

T = TypeVar("T")
_MIN_REDRAW = 0.1  # seconds between two redraws of the plain bar


class TextBar:
    """A one-line progress bar written to stream (stderr), redrawn with a
    carriage return at most every 0.1 s, and once more at close() with
    the final count and a newline. total None: a counter without a bar."""

    def __init__(self, total: Optional[int] = None, desc: Optional[str] = None,
                 stream: Optional[IO[str]] = None, width: int = 30) -> None:
        self.total = total
        self.desc = desc
        self.n = 0
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.t0 = time.monotonic()
        self.last = None   # monotonic time of the last redraw
        self.draws = 0     # how many times the line was written
        self.closed = False

    def update(self, n: int = 1) -> None:
        """Count n more finished items; redraw if 0.1 s have passed."""
        self.n += n
        now = time.monotonic()
        if self.last is None or now - self.last >= _MIN_REDRAW:
            self._draw(now)

    def _draw(self, now: float) -> None:
        elapsed = now - self.t0
        rate = self.n / elapsed if elapsed > 0 else 0.0
        head = (self.desc + ": ") if self.desc else ""
        if self.total:
            frac = min(1.0, self.n / self.total)
            fill = int(frac * self.width)
            line = "%s[%s%s] %d/%d %3d%% %.1f/s" % (
                head, "#" * fill, "." * (self.width - fill), self.n,
                self.total, int(frac * 100), rate)
        else:
            line = "%s%d done %.1f/s" % (head, self.n, rate)
        try:
            self.stream.write("\r" + line)
            self.stream.flush()
        except Exception:
            pass
        self.last = now
        self.draws += 1

    def close(self) -> None:
        """Draw the final state and end the line (once)."""
        if self.closed:
            return
        self.closed = True
        self._draw(time.monotonic())
        try:
            self.stream.write("\n")
            self.stream.flush()
        except Exception:
            pass

    def __enter__(self) -> "TextBar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def Bar(total: Optional[int] = None, desc: Optional[str] = None):
    """A progress bar with update(n) and close(): tqdm's when tqdm can be
    imported, else a TextBar on stderr."""
    try:
        from tqdm import tqdm
    except Exception:
        return TextBar(total, desc)
    return tqdm(total=total, desc=desc)


def progress(jobs: Iterable[T], total: Optional[int] = None, *,
             desc: Optional[str] = None) -> Iterator[T]:
    """Iterate over jobs (any iterable of pp jobs or futures) showing a
    progress bar: each job is yielded, in the given order, once it has
    finished, so ``for job in pp.progress(jobs): use(job())`` never waits
    inside job(). total: the number of jobs (default: len(jobs) when it
    has one)."""
    if total is None:
        try:
            total = len(jobs)  # type: ignore[arg-type]
        except TypeError:
            total = None
    bar = Bar(total, desc)
    try:
        for job in jobs:
            wait = getattr(job, "wait", None)
            if callable(wait):
                wait()  # pp.Job.wait, or a ppft task's
            elif hasattr(job, "exception"):
                try:
                    job.exception()  # a concurrent.futures.Future
                except BaseException:
                    pass  # cancelled: the caller sees it from the job
            bar.update(1)
            yield job
    finally:
        bar.close()
