"""Server.map/imap batching: items of one iterable travel bare (JOB flag
ONEARG), chunk sizes follow the input's length and the measured run time
per item (pp._chunks), and pp._oob's C persistent_id filter sends only large
buffers out of band. Locally and through a ppserver node."""
import io
import itertools
import time

import pytest

import pp
import pp._chunks as chunks
from pp import _core, _oob
from helpers import SECRET, needs_ppserver, node_env, wait_for


def ident(x):
    return x


def nargs(*a):
    return len(a)


def inc(x):
    return x + 1


def nap(ms):
    time.sleep(ms / 1e3)
    return ms


# ---- the chunk schedule (pure) ---------------------------------------------

def sizes(total, workers, per_item=None):
    d = {} if per_item is None else {"f": per_item}
    c = chunks.Chunker(total, workers, d, "f")
    out = []
    for _ in range(100000):
        if c.remaining == 0:
            break
        out.append(c.next_size())
    return out


def test_chunks_cover_the_input_exactly():
    for total, workers, t in [(1, 1, None), (7, 2, None), (1000, 2, 1e-7),
                              (1_000_000, 2, 1e-7), (50, 3, 0.01),
                              (12345, 4, 2e-5)]:
        s = sizes(total, workers, t)
        assert sum(s) == total and min(s) >= 1, (total, workers, t, s[:10])


def test_trivial_items_travel_in_few_large_chunks():
    s = sizes(1_000_000, 2, 1e-7)        # 0.1 us per item
    assert len(s) <= 40, len(s)
    # each chunk but the remainder carries at least MIN_CHUNK_S of work
    assert all(n * 1e-7 >= chunks.MIN_CHUNK_S for n in s[:-1]), s
    # and shrinks towards the end, so the workers finish together
    assert s[0] > s[-2], s


def test_long_items_go_out_in_small_chunks_that_shrink_to_one():
    s = sizes(40, 2, 0.05)               # 50 ms per item
    assert max(s) <= 40 // (chunks.GUIDE * 2) + 1, s
    assert s[-1] == 1 and s == sorted(s, reverse=True), s


def test_a_chunk_runs_at_most_max_chunk_s():
    s = sizes(10_000_000, 1, 1e-6)       # guided alone would give 3.3M items
    assert max(s) * 1e-6 <= chunks.MAX_CHUNK_S * 1.01, max(s)


def test_unknown_run_time_starts_small():
    assert sizes(1_000_000, 2)[0] == chunks.RAMP
    assert sizes(10, 2)[0] == 2          # never more than a guided share
    c = chunks.Chunker(None, 2, {}, "f")  # unknown length: one item each
    assert [c.next_size() for _ in range(3)] == [1, 1, 1]
    c.observe(1, 1e-7)                   # then sized from what it measured
    assert c.next_size() == round(chunks.UNKNOWN_LEN_S / 1e-7)


def test_observe_keeps_a_moving_average_per_function():
    d = {}
    c = chunks.Chunker(100, 2, d, "f")
    c.observe(10, 1.0)
    assert d["f"] == pytest.approx(0.1)
    c.observe(10, 3.0)
    assert d["f"] == pytest.approx(0.2)
    c.observe(0, 5.0)                    # nothing to learn from
    assert d["f"] == pytest.approx(0.2)


# ---- map over a Server ------------------------------------------------------

def test_one_iterable_of_tuples_passes_each_tuple_as_one_argument(server):
    items = [(1, 2), (3,), (), ("a", "b", "c")]
    assert server.map(ident, items) == items
    assert server.map(nargs, items) == [1, 1, 1, 1]
    assert list(server.imap(ident, items)) == items
    assert sorted(server.imap_unordered(nargs, items)) == [1, 1, 1, 1]
    assert server.map(ident, items, chunksize=3) == items
    # several iterables still spread over the arguments
    assert server.map(nargs, items, items) == [2, 2, 2, 2]


def test_map_of_a_bound_method(server):
    import pathlib
    p = pathlib.PurePosixPath("/m")
    assert server.map(p.joinpath, "abc") == [p / "a", p / "b", p / "c"]
    assert list(server.imap(p.joinpath, "ab", chunksize=None)) == [p / "a", p / "b"]


def test_map_default_chunks_are_few_for_trivial_items(server):
    n = 200_000
    server.map(inc, range(1000))          # the function's run time is known
    before = server.get_stats()["local"].njobs
    assert server.map(inc, range(n)) == list(range(1, n + 1))
    used = server.get_stats()["local"].njobs - before
    assert 2 <= used <= 60, used          # not one job per item, nor one in all


def test_map_of_long_items_keeps_the_tail_short(server):
    server.map(nap, [20] * 4)              # measured: 20 ms per item
    before = server.get_stats()["local"].njobs
    assert server.map(nap, [20] * 12) == [20] * 12
    used = server.get_stats()["local"].njobs - before
    # guided over 2 workers: 2, 2, 2, then single items; the old fixed rule
    # (ceil(12 / 8) = 2 per chunk) made 6 jobs of 2 items
    assert used >= 8, used


def test_imap_chunksize_none_reads_an_endless_input_lazily(server):
    it = server.imap(inc, itertools.count(), chunksize=None)
    assert list(itertools.islice(it, 5000)) == list(range(1, 5001))
    it.close()
    it = server.imap_unordered(inc, itertools.count(), chunksize=None)
    got = list(itertools.islice(it, 3000))
    it.close()
    assert len(set(got)) == 3000 and min(got) >= 1


def test_map_chunk_that_raises_re_raises_with_adaptive_chunks(server):
    def inv(x):
        return 1 / x
    with pytest.raises(ZeroDivisionError):
        server.map(inv, [1, 2, 0, 4] * 1000)


@needs_ppserver
def test_map_of_one_iterable_through_a_node(ppserver):
    n = ppserver(workers=1, env=node_env(SECRET))
    with pp.Server(0, ppservers=(n.addr,), secret=SECRET,
                   logstream=io.StringIO()) as s:
        wait_for(lambda: n.addr in s.get_active_nodes(), 30, what=n.log)
        items = [(1, 2), (3,), ()] * 50
        assert s.map(ident, items) == items
        assert s.map(inc, range(20000)) == list(range(1, 20001))
        assert s.map(nargs, items, items) == [2] * 150
        assert n.running(), n.log()


# ---- the out-of-band filter -------------------------------------------------

def test_oob_filter_calls_the_slow_path_only_for_large_buffers():
    seen = []

    def slow(obj):
        seen.append(type(obj))
        return "pid"
    m = _core.OOB_MIN
    assert m == _oob.OOB_MIN
    small = [b"x" * (m - 1), bytearray(m - 1), memoryview(b"y" * (m - 1)),
             1, "s" * m, (b"x" * m,), [bytearray(m)], 2.5, None]
    for o in small:
        assert _core.oob_filter(slow, o) is None
    assert seen == []

    class B(bytes):
        pass
    assert _core.oob_filter(slow, B(b"x" * m)) is None  # pickled in band
    for o in (b"x" * m, bytearray(m), memoryview(bytearray(m + 5))):
        assert _core.oob_filter(slow, o) == "pid"
    assert seen == [bytes, bytearray, memoryview]
    with pytest.raises(TypeError):
        _core.oob_filter(slow)


def test_oob_dumps_sends_large_buffers_apart_and_small_ones_inside():
    m = _oob.OOB_MIN
    big, arr = b"b" * (m + 3), bytearray(b"a" * m)
    obj = {"small": [b"s" * 10] * 1000, "big": big, "arr": arr,
           "mv": memoryview(b"m" * (2 * m))[::2]}  # not contiguous: copied
    data, bufs = _oob.dumps(obj, 5)
    assert len(bufs) == 3
    back = _oob.loads(data, bufs)
    assert back["small"] == obj["small"] and back["big"] == big
    assert back["arr"] == arr and type(back["arr"]) is bytearray
    assert bytes(back["mv"]) == b"m" * m
    assert isinstance(_oob.dumps([b"s" * 10] * 1000, 5), bytes)
