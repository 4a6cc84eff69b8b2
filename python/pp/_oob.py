"""Out-of-band pickling (pickle protocol 5) for job arguments and results.

dumps(obj, proto) returns plain pickle bytes when nothing large is inside,
else (pickle, [buffers]): the pickle stream and, apart from it, every large
buffer (bytes, bytearray, memoryview, pickle.PickleBuffer, numpy arrays and
anything else whose __reduce_ex__(5) makes a PickleBuffer) of at least
OOB_MIN bytes. The C side (pp._core) copies the buffers once into the job's
buffer section (docs/protocol.md 2.1) or writes them straight from the
objects' memory; loads(pickle, buffers) rebuilds the object with the buffers
read in place (memoryviews of memory pp owns: numpy arrays and memoryviews
are not copied; bytes and bytearray are, since they must own their memory).

Large bytes/bytearray/memoryview objects are not PickleBuffers and pickle
never offers them to buffer_callback, so persistent_id replaces each by a
persistent id holding a PickleBuffer of it; pickle then sends that buffer
out of band in its own order, and persistent_load turns it back into the
original type."""
import io
# functools.partial is this C type; functools itself imports collections
# and more, which a worker does not need (pp._worker._import_pickle).
from _functools import partial
# pickle.py's classes and functions are these (it re-exports them); the
# module itself, imported in every worker, would cost milliseconds more.
import _pickle as pickle

from . import _wcore  # (not _core: workers import this module)

OOB_MIN = _wcore.OOB_MIN      # smaller buffers stay inside the pickle stream
_MAX = _wcore.BUFS_MAX        # at most this many buffers per section
_PLAIN = frozenset((int, float, str, bool, type(None), complex))


def _taker(bufs):
    """A buffer_callback appending large contiguous buffers to bufs and
    returning False (out of band); True keeps a buffer in the stream. A
    closure, not a bound method: a pickler holding its own method would be
    a reference cycle, and the garbage collector cannot clear memoryviews
    that still export their memory."""
    def take(pb):
        if len(bufs) >= _MAX:
            return True
        try:
            raw = pb.raw()
        except BufferError:  # not contiguous: pickle copies it in band
            return True
        if raw.nbytes < OOB_MIN:
            raw.release()
            return True
        bufs.append(raw)
        return False
    return take


def _pid_taker(bufs, pids):
    """persistent_id's slow path, for a bytes, bytearray or memoryview
    object of at least OOB_MIN bytes (pp._wcore.oob_filter answers None for
    everything else in C, so pickling many small objects pays no Python
    call per object): a persistent id holding a PickleBuffer of it, the
    same one for the same object. A closure over bufs and pids, not a
    method, for the reason _taker gives."""
    def take(obj):
        if len(bufs) >= _MAX:
            return None
        pid = pids.get(id(obj))
        if pid is not None:
            return pid[0]
        t = type(obj)
        if t is memoryview:
            if not obj.c_contiguous:
                obj = memoryview(obj.tobytes()).cast(obj.format, obj.shape)
            pid = ("m", pickle.PickleBuffer(obj), obj.format,
                   obj.shape, obj.readonly)
        else:
            pid = ("b" if t is bytes else "y", pickle.PickleBuffer(obj))
        pids[id(obj)] = (pid, obj)  # keeps obj's id unique
        return pid
    return take


class _Pickler(pickle.Pickler):
    """A protocol-5 pickler collecting large buffers in self.bufs. Its
    persistent_id is an instance attribute set before the C pickler reads
    it: pp._wcore.oob_filter bound (_functools.partial, also C) to the slow
    path _pid_taker."""

    def __init__(self, f, proto):
        self.bufs = []
        self._pids = {}
        self.persistent_id = partial(
            _wcore.oob_filter, _pid_taker(self.bufs, self._pids))
        super().__init__(f, proto, buffer_callback=_taker(self.bufs))


class _Unpickler(pickle.Unpickler):
    """Turns the persistent ids of _Pickler back into their objects."""

    def __init__(self, f, buffers):
        super().__init__(f, buffers=buffers)
        self._seen = {}

    def persistent_load(self, pid):
        hit = self._seen.get(id(pid))
        if hit is not None:
            return hit[0]
        kind = pid[0]
        if kind == "b":
            obj = bytes(pid[1])
        elif kind == "y":
            obj = bytearray(pid[1])
        elif kind == "m":
            obj = memoryview(pid[1]).cast("B")
            if pid[2] != "B" or len(pid[3]) != 1:
                obj = obj.cast(pid[2], pid[3])
            if pid[4]:
                obj = obj.toreadonly()
        else:
            raise pickle.UnpicklingError("unknown persistent id %r" % (kind,))
        self._seen[id(pid)] = (obj, pid)
        return obj


def dumps(obj, proto):
    """obj pickled: bytes, or (pickle bytes, [buffers]) when large buffers
    travel out of band (protocol 5 and above only)."""
    if proto < 5 or (type(obj) is tuple and all(type(a) in _PLAIN for a in obj)):
        return pickle.dumps(obj, proto)
    f = io.BytesIO()
    p = _Pickler(f, proto)
    p.dump(obj)
    bufs = p.bufs
    p.clear_memo()
    del p
    if not bufs:
        return f.getvalue()
    return f.getvalue(), bufs


def loads(data, buffers):
    """The object pickled by dumps, its buffers given in order."""
    u = _Unpickler(io.BytesIO(data), buffers)
    try:
        return u.load()
    finally:
        u._seen.clear()
