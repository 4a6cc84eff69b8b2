"""Chunk sizes for Server.map/imap/imap_unordered when the caller gives none
(chunksize=None): sized from the input's length and from the measured run
time of the function's items, so trivial items travel in few large chunks
(the cost of a job is paid per chunk, not per item) and long items in small
ones (no worker waits idle behind another's long chunk at the end).

The schedule is "guided": each chunk is a share of what is left,
remaining / (GUIDE * workers), so chunks shrink towards the end and the
workers finish together. It is bounded below by the number of items that
run for MIN_CHUNK_S (so a chunk's fixed cost, tens of microseconds, stays
about 1 % of its work) and above by MAX_CHUNK_S of work (so results stream
back and memory stays bounded, also for endless inputs). Until one chunk of
the function has come back, its items' run time is unknown: the first
chunks are small (RAMP items) so every worker starts at once and the first
result gives the measure.

Caller's thread only (the thread iterating the map); the per-function
measure is kept by the Server across calls."""
from __future__ import annotations

import math
from typing import Any, Dict, Optional

GUIDE = 3             # each chunk is remaining / (GUIDE * workers)
RAMP = 256            # items per chunk before any run time is known
MIN_CHUNK_S = 0.002   # a chunk runs at least this long when items allow
MAX_CHUNK_S = 0.2     # and at most this long
UNKNOWN_LEN_S = 0.02  # target chunk time when the input's length is unknown


class Chunker:
    """The chunk sizes of one map call.

    total: the number of items, or None when the input is an iterator of
    unknown length. workers: local workers plus the workers of connected
    nodes. per_item: the function's measured seconds per item from earlier
    calls (a dict shared with the Server, keyed by the function's pp._core.Func),
    or an empty dict."""

    def __init__(self, total: Optional[int], workers: int,
                 per_item: Dict[Any, float], key: Any):
        self.remaining = total
        self.workers = max(1, workers)
        self._per_item = per_item
        self._key = key

    def item_time(self) -> Optional[float]:
        """Seconds per item measured so far, or None."""
        return self._per_item.get(self._key)

    def next_size(self) -> int:
        """The size of the next chunk (>= 1); counts it as taken."""
        t = self.item_time()
        if t is None:
            # unknown run time: small chunks until the first comes back
            # (one item each when the length is unknown too: an item may
            # be long)
            if self.remaining is None:
                size = 1
            else:
                size = min(RAMP, math.ceil(self.remaining /
                                           (GUIDE * self.workers)))
        else:
            lo = max(1, math.ceil(MIN_CHUNK_S / t)) if t > 0 else 1 << 20
            hi = max(lo, math.ceil(MAX_CHUNK_S / t)) if t > 0 else 1 << 20
            if self.remaining is None:
                size = max(lo, min(hi, math.ceil(UNKNOWN_LEN_S / t)
                                   if t > 0 else hi))
            else:
                guided = math.ceil(self.remaining / (GUIDE * self.workers))
                size = max(lo, min(hi, guided))
        if self.remaining is not None:
            size = max(1, min(size, self.remaining))
            self.remaining -= size
        return size

    def observe(self, items: int, seconds: float) -> None:
        """A chunk of `items` items ran for `seconds` (its worker's clock):
        fold it into the function's per-item time (moving average, so the
        newest chunks count most)."""
        if items <= 0 or seconds < 0:
            return
        t = seconds / items
        old = self._per_item.get(self._key)
        self._per_item[self._key] = t if old is None else 0.5 * old + 0.5 * t
