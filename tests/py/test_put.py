"""Server.put: objects sent once (issue 11, item 2; docs/protocol.md 2.2).

A put object travels to each worker and node at most once while it fits in
their object store, jobs see the object itself at any depth of their
arguments, release() (or dropping the handle) frees it everywhere, a small
object_store_limit evicts least recently used objects and jobs stay correct,
and retries, node loss and release with jobs queued all keep their objects.
The node's per-client bound (7.7a) is tested with a raw client."""
import gc
import hashlib
import os
import pickle
import struct

import pytest

import pp
import ppwire
from helpers import SECRET, needs_ppserver, wait_for

MiB = 1 << 20


def at(x, i):
    return x[i]


def nested(d):
    return len(d["a"][0][1]) + d["b"]


def digest(x):
    import hashlib
    return hashlib.sha256(bytes(x)).hexdigest()


def store():
    import os
    import pp
    return os.getpid(), pp.object_store_info()


def stores(s, n, rounds=40):
    """{pid: store info} of the workers a burst of small jobs reached."""
    seen = {}
    for pid, info in (j() for j in [s.submit(store) for _ in range(rounds)]):
        seen[pid] = info
    return seen


def big(n, seed):
    return memoryview(bytearray(hashlib.sha256(seed).digest() * (n // 32)))


def test_round_trip_local_at_any_depth():
    data = big(4 * MiB, b"a")
    with pp.Server(2) as s:
        r = s.put(data)
        assert r.size >= 4 * MiB and len(r.key) == 64
        small = s.put({"k": [1, 2, 3]})
        assert s.submit(digest, (r,))() == digest(data)
        assert s.submit(nested, ({"a": [(0, r)], "b": 5},))() == 4 * MiB + 5
        assert s.submit(at, (small, "k"))() == [1, 2, 3]
        assert [j() for j in [s.submit(at, (r, i)) for i in range(50)]] == \
            [data[i] for i in range(50)]


def test_map_items_may_name_put_objects():
    data = big(MiB, b"map")
    with pp.Server(2) as s:
        r = s.put(data)
        assert list(s.map(at, [r] * 30, range(30), chunksize=4)) == \
            [data[i] for i in range(30)]


def test_sent_once_per_worker():
    data = big(2 * MiB, b"once")
    with pp.Server(2) as s:
        r = s.put(data)
        jobs = [s.submit(at, (r, i)) for i in range(200)]
        assert [j() for j in jobs] == [data[i] for i in range(200)]
        st = s.object_stats()
        assert 1 <= st["sent"] <= 2, st
        assert st["bytes_sent"] == st["sent"] * r.size
        seen = stores(s, 2)
        assert len(seen) <= 2
        for info in seen.values():
            assert info["received"] <= 1 and info["objects"] <= 1, info


def test_release_frees_everywhere_and_dropping_the_handle_too():
    with pp.Server(2) as s:
        r = s.put(big(MiB, b"rel"))
        for j in [s.submit(at, (r, i)) for i in range(20)]:
            j()
        r.release()
        assert r.released
        with pytest.raises(ValueError, match="released"):
            s.submit(at, (r, 0))
        wait_for(lambda: all(i["objects"] == 0 for i in stores(s, 2).values()),
                 what="workers still hold a released object")
        r2 = s.put(big(MiB, b"drop"))
        s.submit(at, (r2, 0))()
        del r2
        gc.collect()
        wait_for(lambda: all(i["objects"] == 0 for i in stores(s, 2).values()),
                 what="workers still hold an object whose handle was dropped")
        assert s.object_stats()["dropped"] >= 2


def slow_at(x, i, t):
    import time
    time.sleep(t)
    return x[i]


def test_release_while_jobs_are_queued_keeps_their_object():
    data = big(MiB, b"queued")
    with pp.Server(1) as s:
        r = s.put(data)
        jobs = [s.submit(slow_at, (r, i, 0.02)) for i in range(20)]
        r.release()
        del r
        gc.collect()
        assert [j() for j in jobs] == [data[i] for i in range(20)]
        wait_for(lambda: all(i["objects"] == 0 for i in stores(s, 1).values()),
                 what="the worker kept a released object after its jobs")


def test_lru_eviction_under_a_small_limit_keeps_jobs_correct():
    limit = 3 * MiB
    objs = [big(MiB + 1000, bytes([k])) for k in range(4)]
    with pp.Server(1, object_store_limit=limit) as s:
        refs = [s.put(o) for o in objs]
        order = [0, 1, 2, 0, 3, 1, 0, 2, 3, 3, 0, 1]
        jobs = [s.submit(digest, (refs[k],)) for k in order]
        assert [j() for j in jobs] == [digest(objs[k]) for k in order]
        st = s.object_stats()
        assert st["dropped"] > 0 and st["sent"] > 4, st
        for info in stores(s, 1).values():
            assert info["bytes"] <= limit, info
        # a job naming two objects at once still fits, the rest go
        assert s.submit(lambda a, b: (len(a), len(b)), (refs[0], refs[1]))() \
            == (len(objs[0]), len(objs[1]))
        with pytest.raises(ValueError, match="object_store_limit"):
            s.put(big(4 * MiB, b"too big"))
        with pytest.raises(ValueError, match="object_store_limit"):
            s.submit(lambda *a: 0, tuple(refs[:3]))


def crash_once(x, flag):
    import os
    import signal
    if not os.path.exists(flag):
        open(flag, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return len(x)


def test_retry_after_a_killed_worker_gets_its_object(tmp_path):
    data = big(2 * MiB, b"retry")
    with pp.Server(1, max_retries=2) as s:
        r = s.put(data)
        s.submit(at, (r, 0))()  # the first worker holds it
        j = s.submit(crash_once, (r, str(tmp_path / "flag")))
        assert j() == len(data)
        assert s.object_stats()["sent"] == 2  # again, to the new worker


def test_put_of_an_unpicklable_object_is_a_clear_error():
    import threading
    with pp.Server(1) as s:
        with pytest.raises(pp.SerializationError, match="cannot put lock"):
            s.put(threading.Lock())
        with pytest.raises(pp.SerializationError, match="ObjectRef"):
            s.put([s.put(1)])
        with pytest.raises(ValueError):
            pp.Server(0, object_store_limit=0)
    import pickle
    with pp.Server(1) as s:
        with pytest.raises(TypeError, match="inside the arguments"):
            pickle.dumps(s.put(1))


@needs_ppserver
def test_round_trip_through_a_node_sent_once_to_node_and_its_workers(ppserver):
    data = big(3 * MiB, b"node")
    n = ppserver(workers=2)
    with pp.Server(0, ppservers=(n.addr,), secret=SECRET) as s:
        wait_for(lambda: s.get_active_nodes().get(n.addr), what="node")
        r = s.put(data)
        jobs = [s.submit(at, (r, i)) for i in range(100)]
        assert [j() for j in jobs] == [data[i] for i in range(100)]
        assert s.submit(nested, ({"a": [(0, r)], "b": 1},))() == len(data) + 1
        assert s.object_stats()["sent"] == 1  # to the node, once
        for pid, info in stores(s, 2).items():
            assert info["received"] <= 1, info  # each node worker once
        r.release()
        wait_for(lambda: all(i["objects"] == 0 for i in stores(s, 2).values()),
                 what="node workers still hold a released object")


@needs_ppserver
def test_node_loss_jobs_run_elsewhere_with_their_objects(ppserver):
    data = big(MiB, b"loss")
    n = ppserver(workers=1)
    with pp.Server(1, ppservers=(n.addr,), secret=SECRET) as s:
        wait_for(lambda: s.get_active_nodes().get(n.addr), what="node")
        r = s.put(data)
        jobs = [s.submit(slow_at, (r, i, 0.05)) for i in range(30)]
        wait_for(lambda: sum(j.done() for j in jobs) >= 3, what="progress")
        n.stop()
        assert [j() for j in jobs] == [data[i] for i in range(30)]


@needs_ppserver
def test_a_node_with_a_smaller_store_gets_less(ppserver):
    n = ppserver("--object-store-limit", str(2 * MiB), workers=1)
    objs = [big(MiB - 4096, bytes([k])) for k in range(3)]
    with pp.Server(0, ppservers=(n.addr,), secret=SECRET) as s:
        wait_for(lambda: s.get_active_nodes().get(n.addr), what="node")
        refs = [s.put(o) for o in objs]
        order = [0, 1, 2, 0, 2, 1]
        assert [j() for j in [s.submit(digest, (refs[k],)) for k in order]] \
            == [digest(objs[k]) for k in order]
        assert s.object_stats()["dropped"] > 0
        too = s.put(big(3 * MiB, b"x"))
        with pytest.raises(pp.PPError, match="object store"):
            s.submit(len, (too,))()
    assert "protocol error" not in n.log()


@needs_ppserver
def test_a_client_cannot_make_a_node_hold_more_than_its_bound(ppserver):
    n = ppserver("--object-store-limit", str(MiB), workers=1)
    with ppwire.Client("127.0.0.1", n.port, SECRET) as c:
        assert c.node_obj_limit == MiB
        blob = os.urandom(600 * 1024)
        c.send(ppwire.OBJ, hashlib.sha256(blob).digest() + blob)
        assert c.ping() == b"ping"  # within the bound: kept
        blob2 = os.urandom(600 * 1024)
        c.send(ppwire.OBJ, hashlib.sha256(blob2).digest() + blob2)
        with pytest.raises((ppwire.ProtocolError, OSError)):
            c.ping()
    n.wait_log(r"object store limit")
    with ppwire.Client("127.0.0.1", n.port, SECRET) as c:
        blob = os.urandom(1000)
        c.send(ppwire.OBJ, hashlib.sha256(b"other").digest() + blob)
        with pytest.raises((ppwire.ProtocolError, OSError)):
            c.ping()
    n.wait_log(r"not the SHA-256")
    with ppwire.Client("127.0.0.1", n.port, SECRET) as c:
        key = c.define(ppwire.ref_descriptor("builtins", "len"))
        args = pickle.dumps(((),))
        c.send(ppwire.JOB, key + struct.pack("<II", 1, 0) + b"\x01" * 32 + args,
               flags=ppwire.JOBF_OBJS, attempt=1, fid=1)
        with pytest.raises((ppwire.ProtocolError, OSError)):
            c.ping()
    n.wait_log(r"JOB names an object never sent")


def test_proto_4_arguments_name_put_objects_too():
    data = bytes(big(MiB, b"p4"))  # protocol 4 pickles no memoryview
    with pp.Server(1, proto=4) as s:
        r = s.put(data)
        assert s.submit(nested, ({"a": [(0, r)], "b": 2},))() == len(data) + 2
        assert s.submit(len, ((1, 2, 3),))() == 3


def keep(x):
    """Keep the object in a global of the worker (a job may do that)."""
    import os
    os.__dict__.setdefault("_pp_test_kept", []).append(x)
    return len(x)


def unkeep():
    import gc
    import os
    os.__dict__.pop("_pp_test_kept", None)
    gc.collect()
    return 0


def test_put_release_cycles_give_all_shared_memory_back():
    """Large objects live in the arena; each block comes back once no worker
    reads it, also when a job kept the object in a global past its release."""
    with pp.Server(2) as s:
        assert s._engine.stats()["shm_used"] == 0
        for k in range(30):
            r = s.put(big(MiB, bytes([k])))
            for j in [s.submit(at, (r, i)) for i in range(5)]:
                j()
            r.release()
        r = s.put(big(MiB, b"kept"))
        assert s.submit(keep, (r,))() == len(big(MiB, b"kept"))
        r.release()
        del r
        wait_for(lambda: stores(s, 2) and
                 all(i["objects"] == 0 for i in stores(s, 2).values()),
                 what="workers still hold released objects")
        assert s._engine.stats()["shm_used"] >= MiB  # the kept one
        for _ in range(20):
            for j in [s.submit(unkeep) for _ in range(4)]:
                j()
            if s._engine.stats()["shm_used"] == 0:
                break
        wait_for(lambda: (s.submit(unkeep)(), s._engine.stats())[1]
                 ["shm_used"] == 0, what="arena blocks never given back")


def spin_on(x):
    while True:
        len(x)


def test_job_control_applies_to_jobs_naming_objects():
    with pp.Server(1) as s:
        r = s.put(big(MiB, b"limits"))
        with pytest.raises(pp.JobTimeoutError):
            s.submit(spin_on, (r,), timeout=0.5)()
        assert s.submit(at, (r, 3), timeout=30, retries=1)() == big(MiB, b"limits")[3]


def test_release_and_dropping_handles_from_other_threads():
    import threading
    with pp.Server(2) as s:
        refs = [s.put(big(MiB, bytes([k]))) for k in range(8)]
        for j in [s.submit(at, (r, 0)) for r in refs]:
            j()
        del j  # a Job keeps the objects it named, as it keeps its arguments
        half = refs[:4]
        del refs[:4]
        ts = [threading.Thread(target=r.release) for r in half]
        ts.append(threading.Thread(target=refs.clear))  # the last handles
        for t in ts:
            t.start()
        for t in ts:
            t.join(10)
        del half
        gc.collect()
        wait_for(lambda: all(i["objects"] == 0 for i in stores(s, 2).values()),
                 what="objects released from other threads still held")
        wait_for(lambda: (s.submit(abs, (1,))(), s._engine.stats())[1]
                 ["shm_used"] == 0, what="arena blocks never given back")
