"""Out-of-band buffers (pickle protocol 5, docs/protocol.md 2.1): every kind
of large buffer a job takes or returns — bytes, bytearray, memoryview (any
format and shape, read-only or not), pickle.PickleBuffer, numpy arrays (C
and Fortran order) — comes back exactly, from local workers and through a
ppserver node; a buffer section above the frame limit is a clear error at
submit time, and a result above it fails its job only."""
import io
import pickle

import pytest

import pp
from pp import _oob
import os

from helpers import SECRET, needs_ppserver, node_env, wait_for

try:
    import numpy as np
except ImportError:  # Debian's python3-numpy serves the pyenv python too
    np = None

needs_numpy = pytest.mark.skipif(np is None, reason="numpy is not installed")

BIG = 3 * _oob.OOB_MIN + 17  # above the out-of-band threshold, odd length


def ident(x):
    return x


def describe(x):
    """What the worker received: type name and a digest of the bytes."""
    import hashlib
    if type(x).__name__ == "ndarray":
        return ("ndarray", str(x.dtype), x.shape,
                hashlib.sha256(x.tobytes()).hexdigest())
    if isinstance(x, memoryview):
        return ("memoryview", x.format, x.shape, x.readonly,
                hashlib.sha256(x.tobytes()).hexdigest())
    return (type(x).__name__, hashlib.sha256(bytes(x)).hexdigest())


def expected(x):
    import hashlib
    if np is not None and isinstance(x, np.ndarray):
        return ("ndarray", str(x.dtype), x.shape,
                hashlib.sha256(x.tobytes()).hexdigest())
    if isinstance(x, memoryview):
        return ("memoryview", x.format, x.shape, x.readonly,
                hashlib.sha256(x.tobytes()).hexdigest())
    if isinstance(x, pickle.PickleBuffer):  # arrives as a memoryview
        return ("memoryview", "B", (len(x.raw()),), False,
                hashlib.sha256(x.raw().tobytes()).hexdigest())
    return (type(x).__name__, hashlib.sha256(bytes(x)).hexdigest())


def kinds():
    """(name, object) for every buffer kind, all above the threshold."""
    out = [
        ("bytes", bytes(range(256)) * (BIG // 256) + b"tail"),
        ("bytearray", bytearray(b"\x01\x02\x03") * (BIG // 3)),
        ("memoryview", memoryview(b"m" * BIG)),
        ("memoryview-writable", memoryview(bytearray(b"w" * BIG))),
        ("memoryview-int32-2d",
         memoryview(bytearray(range(256)) * 1024).cast("i", (256, 256))),
        ("memoryview-noncontiguous", memoryview(b"abcd" * BIG)[::2]),
        ("picklebuffer", pickle.PickleBuffer(bytearray(b"p" * BIG))),
    ]
    if np is not None:
        a = np.arange(BIG // 8 * 3, dtype=np.float64)
        out += [("numpy", a),
                ("numpy-2d-fortran", np.asfortranarray(a.reshape(3, -1))),
                ("numpy-int8", np.frombuffer(b"\x7f" * BIG, dtype=np.int8).copy()),
                ("numpy-strided", a[::3])]
    return out


def check_round_trips(s):
    for name, obj in kinds():
        got = s.submit(ident, (obj,)).result(timeout=60)
        assert expected(got) == expected(obj), name
        if np is not None and isinstance(obj, np.ndarray):
            assert np.array_equal(got, obj), name
            assert got.flags.writeable, name
        elif isinstance(obj, (bytes, bytearray)):
            assert type(got) is type(obj) and got == obj, name
        seen = s.submit(describe, (obj,)).result(timeout=60)
        assert tuple(seen) == expected(obj), name
    # several buffers, nested, one object twice, with small ones in band
    b = b"z" * BIG
    nest = {"a": [b, b, bytearray(b"q" * BIG)], "small": b"tiny", "n": 7}
    got = s.submit(ident, (nest,)).result(timeout=60)
    assert got == nest and type(got["a"][2]) is bytearray


def test_dumps_puts_large_buffers_out_of_band():
    data = _oob.dumps((b"x" * BIG, b"small", bytearray(b"y" * BIG)), 5)
    assert isinstance(data, tuple)
    stream, bufs = data
    assert [len(b) for b in bufs] == [BIG, BIG]
    assert len(stream) < 1000  # the large ones are not in the stream
    assert _oob.loads(stream, bufs) == (b"x" * BIG, b"small",
                                        bytearray(b"y" * BIG))
    assert isinstance(_oob.dumps((1, "a", None), 5), bytes)
    assert isinstance(_oob.dumps((b"x" * BIG,), 4), bytes)  # no protocol 5


def test_every_buffer_kind_round_trips_locally(server):
    check_round_trips(server)


@needs_numpy
def test_numpy_argument_is_read_in_place_and_may_be_changed(server1):
    def bump(a):
        a += 1  # the worker's copy; the client's array is untouched
        return float(a.sum())
    a = np.zeros(1 << 20)
    assert server1.submit(bump, (a,)).result(timeout=60) == float(1 << 20)
    assert server1.submit(bump, (a,)).result(timeout=60) == float(1 << 20)
    assert a.sum() == 0


@needs_ppserver
def test_every_buffer_kind_round_trips_through_a_node(ppserver):
    # -n 5: the node's workers pickle results with protocol 5, so results
    # come back out of band too (arguments always do, with the client's 5)
    env = node_env(SECRET)
    if np is not None:  # the node's workers import numpy where we do
        env["PYTHONPATH"] += os.pathsep + os.path.dirname(
            os.path.dirname(np.__file__))
    n = ppserver("-n", "5", workers=1, env=env)
    with pp.Server(0, ppservers=(n.addr,), secret=SECRET,
                   logstream=io.StringIO()) as s:
        wait_for(lambda: n.addr in s.get_active_nodes(), 30, what=n.log)
        check_round_trips(s)
        assert n.running(), n.log()


def test_arguments_above_the_frame_limit_are_a_clear_error():
    limit = 1 << 20
    with pp.Server(1, max_frame=limit, logstream=io.StringIO()) as s:
        with pytest.raises(ValueError) as ei:
            s.submit(ident, (b"x" * (limit + 1),))
        msg = str(ei.value)
        assert "frame limit" in msg and str(limit) in msg, msg
        assert "out-of-band" in msg, msg
        # a result above it fails that job, with the size and the limit
        def make(n):
            return b"r" * n
        with pytest.raises(pp.SerializationError) as ei:
            s.submit(make, (limit + 1,)).result(timeout=60)
        assert "frame limit" in str(ei.value) and str(limit) in str(ei.value)
        assert s.submit(ident, (b"ok" * 40000,)).result(timeout=60) == \
            b"ok" * 40000


# ---- shared memory to local workers (protocol 4.2) ---------------------------

def keep(a):
    global KEPT
    KEPT = a
    return len(a)


def drop():
    global KEPT
    KEPT = None
    return True


def keep_and_die(a):
    import os
    global KEPT
    KEPT = a
    os._exit(3)


def shm_used(s):
    return s._engine.stats()["shm_used"]


def test_shared_memory_is_held_while_a_worker_uses_it_and_freed_after():
    import gc
    with pp.Server(1, logstream=io.StringIO()) as s:
        assert s._engine.stats()["shm_size"] > 0
        s.submit(len, ((),)).result(timeout=30)  # the worker mapped the arena
        arg = bytearray(b"k" * (1 << 20))
        j = s.submit(keep, (memoryview(arg),))
        assert j.result(timeout=30) == 1 << 20
        del j
        gc.collect()
        # the worker keeps a view of its argument: the block stays
        assert shm_used(s) >= 1 << 20
        assert s.submit(drop, ()).result(timeout=30)
        wait_for(lambda: shm_used(s) == 0, 10, what="RELEASE after drop()")


def test_a_worker_that_dies_holding_shared_memory_leaks_none(logbuf):
    import gc
    with pp.Server(1, max_retries=1, logstream=logbuf) as s:
        s.submit(len, ((),)).result(timeout=30)
        j = s.submit(keep_and_die, (b"d" * (1 << 20),))
        with pytest.raises(pp.WorkerLostError):
            j.result(timeout=60)
        del j
        gc.collect()
        wait_for(lambda: shm_used(s) == 0, 10, what="arena after the crash")
        # and the replacement worker serves from the arena again
        assert s.submit(len, (b"x" * (1 << 20),)).result(timeout=30) == 1 << 20
        gc.collect()
        wait_for(lambda: shm_used(s) == 0, 10, what="arena after a job")
