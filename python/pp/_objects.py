"""Objects put once (Server.put): the client's handle and the worker's store.

Client side: ObjectRef is what Server.put returns. It holds the pickled
object (a pp._core.Obj: the bytes, named by their SHA-256) and may be
passed anywhere inside the arguments of any number of jobs: while a job's
arguments are pickled (collecting(), any pickler, any protocol), a ref
reduces to _resolve(key) and is listed with the job; and the engine sends the object to each worker and node at most once
while it fits in their store (docs/protocol.md 2.2). release() (or
dropping the last reference to the handle) frees it everywhere; jobs
already submitted keep it until they are done.

Worker side: the engine sends OBJ frames and says when to forget them (OBJ
DROP); the worker keeps what it is told, nothing else, and builds each
object from its bytes on first use, inside a job (so classes of the
client's __main__ resolve as for arguments). Every job of this worker then
sees that same object: treat it as read-only."""
# _thread, not threading: every worker imports this module before its first
# job, and threading.py costs about half a millisecond more.
import _thread

from . import _wcore  # (not _core: workers import this module)

_tls = _thread._local()  # .refs: the list a job's pickling collects into


def collecting(refs):
    """Make ObjectRefs pickled from now on in this thread append themselves
    to refs (a job's arguments are being pickled). Returns what to give
    done() afterwards."""
    prev = getattr(_tls, "refs", None)
    _tls.refs = refs
    return prev


def done(prev):
    """End collecting() (prev: what it returned)."""
    _tls.refs = prev


def _resolve(key):
    """What a pickled ObjectRef unpickles to, in a worker: the object."""
    return get(key)


class ObjectRef:
    """A handle to an object put once with Server.put. Pass it (at any depth)
    in the arguments of jobs: each job sees the object itself. release()
    frees it on the client, the workers and the nodes."""

    __slots__ = ("_obj", "_engine", "_released", "__weakref__")

    def __init__(self, obj, engine):
        self._obj = obj
        self._engine = engine
        self._released = False

    @property
    def key(self):
        """The SHA-256 of the pickled object, as hex."""
        return self._obj.key.hex()

    @property
    def size(self):
        """Bytes of the pickled object (what object stores count)."""
        return self._obj.size

    @property
    def released(self):
        return self._released

    def release(self):
        """Free the object everywhere: no new job may name it; workers and
        nodes that hold it drop it. Jobs already submitted still get it.
        Idempotent; safe from any thread."""
        if self._released:
            return
        self._released = True
        try:
            self._engine.obj_release(self._obj)
        except Exception:  # the engine is gone: nothing holds it any more
            pass

    def __del__(self):
        try:
            self.release()
        except Exception:
            pass

    def __reduce__(self):
        refs = getattr(_tls, "refs", None)
        if refs is None:
            raise TypeError("an ObjectRef can only travel inside the "
                            "arguments of a job submitted to the Server "
                            "that made it")
        if self._released:
            raise ValueError("%r was released: put the object again" % (self,))
        refs.append(self)
        return (_resolve, (self._obj.key,))

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self

    def __repr__(self):
        return "<pp.ObjectRef %s, %d bytes%s>" % (
            self.key[:12], self.size, ", released" if self._released else "")


# ---- the worker's store ----------------------------------------------------

_lock = _thread.allocate_lock()
_store = {}          # key (bytes) -> [raw or None, object, built, holds, size]
_stats = {"received": 0, "dropped": 0}
_UNBUILT = object()


def worker_put(key, raw, size):
    """An OBJ frame arrived: raw is the pickle (bytes) or (lease, off, len)
    of a buffer section. Called by the worker loop (C)."""
    with _lock:
        _stats["received"] += 1
        ent = _store.get(key)
        if ent is not None:  # the same bytes again (another client's)
            ent[3] += 1
            return
        _store[key] = [raw, _UNBUILT, None, 1, size]


def worker_drop(key):
    """An OBJ DROP frame: forget one hold of key. Called by the loop (C)."""
    with _lock:
        ent = _store.get(key)
        if ent is None:
            return
        _stats["dropped"] += 1
        ent[3] -= 1
        if ent[3] <= 0:
            del _store[key]


def get(key):
    """The object put under key, built on first use. Raises when this
    worker was never sent it, or when it cannot be unpickled here."""
    ent = _store.get(key)
    if ent is None:
        raise RuntimeError("pp worker: a job names object %s, which this "
                           "worker was never sent" % key.hex()[:12])
    if ent[1] is _UNBUILT:
        if ent[2] is not None:
            raise RuntimeError("the object put as %s cannot be unpickled on "
                               "this worker: %s" % (key.hex()[:12], ent[2]))
        raw = ent[0]
        try:
            if type(raw) is tuple:
                obj = _wcore.bufs_loads(*raw)
            else:
                from . import _oob
                obj = _oob.loads(raw, None)
        except Exception as e:
            ent[2] = "%s: %s" % (type(e).__name__, e)
            raise RuntimeError("the object put as %s cannot be unpickled on "
                               "this worker: %s" % (key.hex()[:12], ent[2])) \
                from e
        ent[1] = obj
        ent[0] = None  # the object (or its arrays, on the lease) keeps it
    return ent[1]


def info():
    """What this process's object store holds: a dict with "objects" (how
    many), "bytes" (their pickled size), "received" (OBJ frames ever
    received: each object counts once per time it was sent here) and
    "dropped" (OBJ DROP frames). In a job: pp.object_store_info()."""
    with _lock:
        return {"objects": len(_store),
                "bytes": sum(e[4] for e in _store.values()),
                "received": _stats["received"],
                "dropped": _stats["dropped"]}
