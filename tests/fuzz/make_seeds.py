"""make_seeds.py — writes the hand-made seed inputs of tests/fuzz/corpus/
(a few small files per target, each a well-formed example of what the
target parses, plus typical broken ones). Run from the repository root:
    python3 tests/fuzz/make_seeds.py
The fuzzers grow their own corpora from these (tests/fuzz/work/, not
committed); inputs worth keeping (findings, new coverage) are copied into
corpus/NAME/ by hand and replayed by `make test` from then on."""
import hashlib
import hmac
import os
import struct
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "py"))
import ppwire  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SECRET = b"fuzz-secret-0123456789"


def put(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def frame(t, payload=b"", flags=0, attempt=0, fid=0, version=1, magic=0x7070):
    return ppwire.header(t, len(payload), flags, attempt, fid, magic, version) + payload


# ---- frame: [limit selector][chunk size][stream]
stream = (frame(1, struct.pack("<I", 1234)) + frame(2, b"k" * 32 + b"desc") +
          frame(3, b"k" * 32 + b"args", flags=1, attempt=2, fid=7) +
          frame(4, struct.pack("<Q", 5) + b"data", attempt=2, fid=7) + frame(5))
put("frame", "stream", bytes([5, 255]) + stream)
put("frame", "stream-bytewise", bytes([4, 0]) + stream)
put("frame", "bad-magic", bytes([5, 7]) + b"GET / HTTP/1.0\r\n\r\n")
put("frame", "bad-version", bytes([5, 255]) + frame(1, b"1234", version=2))
put("frame", "too-big", bytes([3, 255]) + ppwire.header(3, 1 << 30))
put("frame", "unknown-type", bytes([5, 255]) + frame(9, b"x"))

# ---- auth: [role][secret][ops...]; see fuzz_auth.c for the ops
seal = bytes([6, 3, 0, 1, 7, 0, 5, 0]) + b"hello"   # JOB frame, 5 bytes
ping = bytes([6, 6, 0, 0, 0, 0, 4, 0]) + b"ping"
put("auth", "server-ok", bytes([0, 0, 0, 5, 0, 5]) + seal + ping + bytes([0]))
put("auth", "client-ok", bytes([1, 0, 5, 0, 5, 0]) + seal + bytes([0]))
put("auth", "server-wrong-secret", bytes([0, 3, 0, 5, 0, 5, 0]))
put("auth", "client-wrong-secret", bytes([1, 3, 5, 0, 5, 0]))
put("auth", "server-flip", bytes([0, 0, 0, 5, 0, 5]) + seal + bytes([1, 30, 0, 4]))
put("auth", "server-replay", bytes([0, 0, 0, 5, 0, 5]) + seal + bytes([0, 7]))
put("auth", "server-drop", bytes([0, 0, 0, 5, 0, 5]) + seal + bytes([3]) + ping + bytes([0]))
put("auth", "server-garbage", bytes([0, 0, 4, 60]) + frame(16, b"\x01\x00\x00\x00" + b"n" * 32))
put("auth", "server-split", bytes([0, 0, 2, 10, 2, 200, 5, 2, 3, 0]))

# ---- disco: [mode][clock offset][datagram]
def disco(kind, port=60000, t=None):
    return ppwire.disco_datagram(SECRET, kind, port=port, interval_ms=2000, nworkers=4,
                                 time_ms=t if t is not None else 1700000000000)
put("disco", "announce", bytes([0, 0]) + disco(1))
put("disco", "query", bytes([0, 0]) + disco(2, port=0))
put("disco", "announce-resign-fresh", bytes([3, 5]) + disco(1))
put("disco", "announce-stale", bytes([3, 100]) + disco(1))
put("disco", "announce-port0", bytes([3, 0]) + disco(1, port=0))
put("disco", "bad-mac", bytes([2, 0]) + disco(1)[:-1] + b"\x00")
put("disco", "short", bytes([3, 0]) + disco(1)[:40])
put("disco", "bad-kind", bytes([3, 0]) + disco(1)[:5] + b"\x09" + disco(1)[6:])

# ---- config: the file's bytes
put("config", "example", b"""# /etc/ppserver.conf
port = 35000
workers = 8
socket_timeout = 60
log_format = "%(asctime)s ppserver %(levelname)s %(message)s"
""")
put("config", "all-keys", b"""debug = yes
log-format = %(levelname)-8s %(process)d %(name)s %(levelno)d %%
autodiscovery = on
restart = false
proto = 2
interface = 127.0.0.1
broadcast = 127.255.255.255
port = 0
workers = 1
timeout = 10
socket_timeout = 5
pid_file = /nonexistent/pp.pid
python = python3
announce_interval = 0.5
""")
put("config", "secret-in-file", b"secret = \"abc def\"\n")
put("config", "bad-line", b"port 35000\n")
put("config", "unknown-key", b"colour = blue\n")
put("config", "bad-values", b"port = 99999\nworkers = -1\n")
put("config", "bad-bool", b"debug = maybe\n")
put("config", "bad-format", b"log_format = %(nope)s\n")
put("config", "nul", b"port = 1\x00\n")
put("config", "ini-section", b"[general]\nport = 35000\n")
put("config", "ini-ppft", b"[general]\ndebug = False\nworkers = 2\nsecret = epo20pdosl;dksldkmm\n"
    b"; comment\n[network]\nautodiscovery: False\ninterface = 0.0.0.0\nport = 60000\n"
    b"timeout = 10\n[other]\n")

# ---- intake: [flags][njobs][attempt seed][limit][chunk][stream]
def result(jid, status=0, data=b"x", attempt=1):
    return frame(4, struct.pack("<Q", 1000) + data, flags=status, attempt=attempt, fid=jid)
put("intake", "worker-results", bytes([0, 3, 0, 3, 255]) +
    frame(1, struct.pack("<I", 99)) + result(1) + result(2, 1) + result(3, 2))
put("intake", "worker-out-of-order", bytes([0, 3, 0, 3, 255]) + result(2) + result(1))
put("intake", "worker-unknown-id", bytes([0, 3, 0, 3, 255]) + result(9))
put("intake", "worker-bytewise", bytes([0, 2, 0, 2, 0]) + result(1) + result(2))
put("intake", "node-lost-failed", bytes([1, 4, 0, 3, 255]) +
    result(1, 3, struct.pack("<ii", 1, 9) + b"worker died") + result(3, 4, b"cannot run") +
    result(2, 0) + result(7))
put("intake", "node-attempts", bytes([1, 4, 0xff, 3, 255]) + result(1, attempt=2) +
    result(2, attempt=1) + result(4, attempt=2))
put("intake", "short-result", bytes([0, 1, 0, 3, 255]) + frame(4, b"abc", fid=1, attempt=1))
put("intake", "job-from-worker", bytes([0, 1, 0, 3, 255]) + frame(3, b"k" * 32))
put("intake", "over-limit", bytes([0, 1, 0, 0, 255]) + result(1, data=b"x" * 20))
# ---- tls: [role][mode][flags][ops...]; see fuzz_tls.c for the ops. role 0:
# the side under test is the server, 1: the client; mode 0: PSK, 1: PSK with
# another secret at the peer, 2: certificates; flags 1: a clean handshake
# first, 2: the peer (as server) sends session tickets.
def tls_peer_writes(n, pattern=b"job"):
    return bytes([7]) + struct.pack("<H", n) + bytes([len(pattern)]) + pattern


def tls_record(rtype, length, body=b"", minor=3):
    return bytes([5, rtype, minor]) + struct.pack("<H", length) + bytes([len(body)]) + body


data_round = tls_peer_writes(100) + bytes([0]) + bytes([10, 4]) + b"echo" + bytes([6])
for role, rname in ((0, "server"), (1, "client")):
    put("tls", rname + "-psk", bytes([role, 0, 1]) + data_round)
    put("tls", rname + "-cert", bytes([role, 2, 3]) + data_round)
    put("tls", rname + "-wrong-secret", bytes([role, 1, 0, 0, 6, 0, 6, 0]))
    # the handshake step by step, a byte at a time for the first record
    put("tls", rname + "-stepwise", bytes([role, 0, 0]) + bytes([2, 1, 0, 2, 4, 0, 0, 6, 0, 6, 0]) +
        data_round)
    put("tls", rname + "-keyupdate", bytes([role, 0, 1, 8, 1, 0, 6]) + data_round + bytes([8, 0, 0]) +
        data_round)
    put("tls", rname + "-close-notify", bytes([role, 0, 1]) + data_round + bytes([9, 0]))
    put("tls", rname + "-flip", bytes([role, 0, 1]) + tls_peer_writes(300) + bytes([1, 40, 0, 1]))
    put("tls", rname + "-flip-handshake", bytes([role, 0, 0, 6, 1, 20, 0, 4]))
put("tls", "server-large", bytes([0, 0, 1]) + tls_peer_writes(39999, b"0123456789") +
    bytes([2, 0, 0x40, 0, 0, 2, 0, 1, 0]))
put("tls", "server-truncated", bytes([0, 0, 1]) + tls_peer_writes(500) + bytes([2, 100, 0, 3]) +
    tls_peer_writes(10) + bytes([0]))
put("tls", "server-replay", bytes([0, 0, 1]) + tls_peer_writes(50) + bytes([0, 11]))
put("tls", "server-drop", bytes([0, 0, 1]) + tls_peer_writes(50) + bytes([3]) + tls_peer_writes(5) +
    bytes([0]))
put("tls", "server-oversized-record", bytes([0, 0, 1]) + tls_record(0x17, 0xffff, b"x" * 32))
put("tls", "server-alert", bytes([0, 0, 1]) + tls_record(0x15, 2, b"\x02\x28"))
put("tls", "server-ccs", bytes([0, 0, 1]) + tls_record(0x14, 1, b"\x01"))
put("tls", "server-plain-record", bytes([0, 0, 1]) + tls_record(0x16, 4, b"\x18\x00\x00\x00"))
put("tls", "server-garbage-first", bytes([0, 0, 0, 4, 18]) + b"GET / HTTP/1.0\r\n\r\n")
put("tls", "server-pp-frame-first", bytes([0, 0, 0, 4, 22]) + frame(16, b"\x01\x00\x00\x00" + b"n" * 2))
put("tls", "client-early-data", bytes([1, 0, 0, 6, 0]) + tls_record(0x17, 20, b"z" * 20))
put("tls", "client-sslv3-header", bytes([1, 0, 0, 6, 5, 0x16, 0, 0, 0x30, 0]))
put("tls", "client-tickets", bytes([1, 0, 3, 0]) + data_round)
print("seeds written under", os.path.join(HERE, "corpus"))
