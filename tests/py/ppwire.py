"""ppwire — a small pure-Python client for pp's TCP protocol (docs/protocol.md
sections 1, 6 and 7), used by the ppserver tests.

It implements the framing, the mutual HMAC-SHA256 handshake (client role),
sealed frames (HMAC-SHA256-128 over an implicit sequence number, header and
payload, per-direction keys from HKDF-SHA256), and helpers to ship a function
descriptor (FUNC) and a job (JOB) and read the RESULT. Only the standard
library is used (hmac, hashlib, socket, struct, pickle).

With tls=True the same frames travel inside TLS 1.3 (section 6.6): the
connection is made by tests/c/bin/tls_shim (built by `make ctests`), which
keys TLS from the stretched secret as the real client does and relays
plaintext over a socketpair; inside TLS frames after the handshake carry no
MAC (Client.seal and recv follow). connect() gives either kind of socket.
"""
import hashlib
import hmac
import os
import pickle
import socket
import struct
import subprocess
import time

MAGIC = 0x7070
VERSION = 1
HDR = struct.Struct("<HBBIIIQ")  # magic, version, type, flags, length, attempt, id
HDR_LEN = HDR.size  # 24
MAC_LEN = 16

HELLO, FUNC, JOB, RESULT, BYE, PING, PONG = 1, 2, 3, 4, 5, 6, 7
AUTH_HELLO, AUTH_CHALLENGE, AUTH_PROOF, AUTH_FAIL = 16, 17, 18, 19

RES_OK, RES_EXC, RES_SERIAL, RES_LOST, RES_FAILED = 0, 1, 2, 3, 4
FUNCF_RESET = 1
OBJ = 11
OBJF_DROP = 1
JOBF_OBJS = 0x20
JOBF_CHUNK = 1


class ProtocolError(Exception):
    """The peer sent something this client does not accept."""


class AuthError(ProtocolError):
    """The handshake failed (wrong secret, FAIL frame, bad proof)."""


class Closed(ProtocolError):
    """The peer closed the connection."""


def header(ftype, length, flags=0, attempt=0, fid=0, magic=MAGIC, version=VERSION):
    """The 24-byte frame header."""
    return HDR.pack(magic, version, ftype, flags, length, attempt, fid)


def frame(ftype, payload=b"", flags=0, attempt=0, fid=0):
    """An unsealed frame (handshake frames)."""
    return header(ftype, len(payload), flags, attempt, fid) + payload


def hkdf_extract(salt, ikm):
    return hmac.new(salt, ikm, hashlib.sha256).digest()


def hkdf_expand(prk, info, length=32):
    out, block, i = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([i]), hashlib.sha256).digest()
        out += block
        i += 1
    return out[:length]


_stretched = {}


def stretch(secret):
    """S = scrypt(secret, "pp-secret-v1", N=2^14, r=8, p=1, 32 bytes): what
    every key is derived from (docs/protocol.md 6.1); cached."""
    if isinstance(secret, str):
        secret = secret.encode()
    if secret not in _stretched:
        _stretched[secret] = hashlib.scrypt(secret, salt=b"pp-secret-v1", n=1 << 14,
                                            r=8, p=1, maxmem=64 << 20, dklen=32)
    return _stretched[secret]


def derive(secret, nonce_c, nonce_s):
    """The per-connection keys: (K_cp, K_sp, K_c2s, K_s2c)."""
    k0 = hkdf_extract(b"pp-auth-v1", stretch(secret))
    prk = hkdf_extract(nonce_c + nonce_s, k0)
    return tuple(hkdf_expand(prk, info) for info in (
        b"pp-auth-v1 client proof", b"pp-auth-v1 server proof",
        b"pp-auth-v1 mac client->server", b"pp-auth-v1 mac server->client"))


def mac(key, seq, hdr, payload):
    return hmac.new(key, struct.pack("<Q", seq) + hdr + payload,
                    hashlib.sha256).digest()[:MAC_LEN]



def read_sealed(read_exact, key, seq, sender):
    """One sealed frame read with read_exact(n) and checked under key at
    sequence number seq: (type, flags, attempt, id, payload). ProtocolError
    for a bad header or MAC (naming sender)."""
    hdr = read_exact(HDR_LEN)
    magic, version, ftype, flags, length, attempt, fid = HDR.unpack(hdr)
    if magic != MAGIC or version != VERSION:
        raise ProtocolError("bad header")
    payload = read_exact(length)
    m = read_exact(MAC_LEN)
    if not hmac.compare_digest(m, mac(key, seq, hdr, payload)):
        raise ProtocolError("bad MAC from %s" % sender)
    return ftype, flags, attempt, fid, payload

TLS_SHIM = os.environ.get("PP_TLS_SHIM") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "c", "bin", "tls_shim")
SHIM_EXIT_AUTH = 3  # tls_shim's status when the TLS handshake failed on the secret


class ShimSocket(socket.socket):
    """The client's end of a socketpair whose other end is a tls_shim
    process holding the TLS connection. close() closes it and waits for the
    shim (at most 5 s, then kills it by pid)."""

    proc = None

    def shim_status(self, timeout=5.0):
        """The shim's exit status once it has exited (None if it is still
        running after timeout s), and what it said on stderr."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None, ""
        return self.proc.returncode, self.proc.stderr.read().decode(errors="replace")

    def close(self):
        super().close()
        p = self.proc
        if p is not None:
            self.proc = None
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
            p.stderr.close()
            self.proc = p  # kept for shim_status()


def connect(host, port, secret, tls=False, timeout=10.0, source=None, rcvbuf=None,
            certs=None, flip_at=None, replay_at=None):
    """A connected socket to host:port: plain TCP, or with tls=True a
    ShimSocket through tls_shim (PSK from secret, or certs = (cert, key,
    ca) files). source binds the local address first; rcvbuf sets
    SO_RCVBUF before connecting (on the TCP socket, the shim's with tls).
    flip_at / replay_at (tls only): the shim flips a bit in, or replays,
    the TLS record carrying that plaintext byte."""
    if not tls:
        s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        try:
            s.settimeout(timeout)
            if rcvbuf:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            if source:
                s.bind((source, 0))
            s.connect((host, port))
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except BaseException:
            s.close()
            raise
        return s
    if isinstance(secret, str):
        secret = secret.encode()
    argv = [TLS_SHIM]
    for opt, val in (("--source", source), ("--rcvbuf", rcvbuf),
                     ("--flip-at", flip_at), ("--replay-at", replay_at)):
        if val is not None:
            argv += [opt, str(val)]
    if certs:
        argv += ["--cert", str(certs[0]), "--key", str(certs[1]), "--ca", str(certs[2])]
    mine, theirs = socket.socketpair()
    env = dict(os.environ, PP_SHIM_SECRET=secret.hex())
    try:
        proc = subprocess.Popen(argv + [host, str(port)], stdin=theirs,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                env=env, close_fds=True)
    except BaseException:
        mine.close()
        raise
    finally:
        theirs.close()
    s = ShimSocket(mine.family, mine.type, mine.proto, mine.detach())
    s.proc = proc
    s.settimeout(timeout)
    return s


def accept_tls(sock, secret, timeout=10.0, certs=None):
    """The node's side of TLS on an accepted TCP socket (a fake node's):
    a ShimSocket through `tls_shim --server-fd`, which takes sock over (it
    is closed here)."""
    if isinstance(secret, str):
        secret = secret.encode()
    fd = sock.fileno()
    argv = [TLS_SHIM, "--server-fd", str(fd)]
    if certs:
        argv += ["--cert", str(certs[0]), "--key", str(certs[1]), "--ca", str(certs[2])]
    mine, theirs = socket.socketpair()
    env = dict(os.environ, PP_SHIM_SECRET=secret.hex())
    try:
        proc = subprocess.Popen(argv, stdin=theirs, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, env=env, pass_fds=(fd,))
    except BaseException:
        mine.close()
        raise
    finally:
        theirs.close()
        sock.close()
    s = ShimSocket(mine.family, mine.type, mine.proto, mine.detach())
    s.proc = proc
    s.settimeout(timeout)
    return s


def func_key(desc):
    return hashlib.sha256(desc).digest()


def ref_descriptor(module, qualname):
    """A descriptor as python/pp/_ship.py makes it for importable functions."""
    return pickle.dumps(("ref", module, qualname), 4)


class Client:
    """One authenticated connection to a ppserver.

    Client(host, port, secret) connects and runs the handshake; `node_pid` and
    `node_workers` come from the node's HELLO. Every wait is bounded by
    `timeout` seconds (socket timeout). tls=True: inside TLS (section 6.6,
    through tls_shim; frames after the handshake unsealed); the other
    keywords are connect()'s."""

    def __init__(self, host, port, secret, timeout=10.0, record=None, connect=True,
                 tls=False, **conn_kw):
        if isinstance(secret, str):
            secret = secret.encode()
        self.secret = secret
        self.timeout = timeout
        self.tls = tls
        self.sock = None
        self.rbuf = bytearray()
        self.send_seq = 0
        self.recv_seq = 0
        self.record = record  # list: every byte sent during the handshake
        self.known = set()
        self.next_id = 1
        self.node_pid = None
        self.node_workers = None
        if connect:
            self.sock = globals()["connect"](host, port, secret, tls=tls,
                                             timeout=timeout, **conn_kw)
            try:
                self.handshake()
                self.read_hello()
            except BaseException:
                self.close()
                raise

    # -- raw bytes -------------------------------------------------------
    def send_raw(self, data):
        if self.record is not None:
            self.record.append(data)
        self.sock.sendall(data)

    def _read_exact(self, n):
        deadline = time.monotonic() + self.timeout
        while len(self.rbuf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("timed out waiting for %d bytes" % n)
            self.sock.settimeout(left)
            chunk = self.sock.recv(max(65536, n - len(self.rbuf)))
            if not chunk:
                raise Closed("connection closed by the node")
            self.rbuf += chunk
        data = bytes(self.rbuf[:n])
        del self.rbuf[:n]
        return data

    def read_plain(self):
        """One unsealed frame: (type, flags, attempt, id, payload, raw bytes)."""
        hdr = self._read_exact(HDR_LEN)
        magic, version, ftype, flags, length, attempt, fid = HDR.unpack(hdr)
        if magic != MAGIC:
            raise ProtocolError("bad magic")
        if length > 256:
            raise ProtocolError("handshake frame too long")
        payload = self._read_exact(length)
        return ftype, flags, attempt, fid, payload, hdr + payload

    # -- handshake -------------------------------------------------------
    def handshake(self):
        nonce_c = os.urandom(32)
        hello = frame(AUTH_HELLO, struct.pack("<I", 1) + nonce_c)
        self.send_raw(hello)
        try:
            ftype, _, _, _, payload, raw = self.read_plain()
        except Closed:
            if isinstance(self.sock, ShimSocket):
                status, said = self.sock.shim_status()
                if status == SHIM_EXIT_AUTH:
                    raise AuthError("TLS handshake failed on the secret: "
                                    + said.strip())
            raise
        if ftype == AUTH_FAIL:
            raise AuthError("node refused the handshake: %r" % (struct.unpack("<II", payload),))
        if ftype != AUTH_CHALLENGE or len(payload) != 36:
            raise ProtocolError("expected CHALLENGE, got type %d" % ftype)
        if struct.unpack("<I", payload[:4])[0] != 1:
            raise ProtocolError("challenge of another version")
        nonce_s = payload[4:]
        if nonce_s == nonce_c:
            raise AuthError("reflected nonce")
        k_cp, k_sp, self.k_c2s, self.k_s2c = derive(self.secret, nonce_c, nonce_s)
        transcript = hello + raw
        proof_c = hmac.new(k_cp, b"client" + transcript, hashlib.sha256).digest()
        self.send_raw(frame(AUTH_PROOF, proof_c))
        try:
            ftype, _, _, _, payload, raw = self.read_plain()
        except Closed:
            raise AuthError("node closed the connection after our proof")
        if ftype == AUTH_FAIL:
            raise AuthError("node rejected our proof: %r" % (struct.unpack("<II", payload),))
        if ftype != AUTH_PROOF or len(payload) != 32:
            raise ProtocolError("expected PROOF, got type %d" % ftype)
        want = hmac.new(k_sp, b"server" + transcript + proof_c, hashlib.sha256).digest()
        if not hmac.compare_digest(want, payload):
            self.send_raw(frame(AUTH_FAIL, struct.pack("<II", 2, 1)))
            raise AuthError("node did not prove the secret")

    def read_hello(self):
        ftype, flags, attempt, fid, payload = self.recv()
        if ftype != HELLO or len(payload) != 16:
            raise ProtocolError("expected sealed HELLO, got type %d" % ftype)
        self.node_pid, self.node_workers, self.node_obj_limit = \
            struct.unpack("<IIQ", payload)

    # -- sealed frames ---------------------------------------------------
    def seal(self, ftype, payload=b"", flags=0, attempt=0, fid=0):
        """The bytes of one sealed frame (advances the send sequence);
        inside TLS the frame without a MAC."""
        hdr = header(ftype, len(payload), flags, attempt, fid)
        if self.tls:
            return hdr + payload
        m = mac(self.k_c2s, self.send_seq, hdr, payload)
        self.send_seq += 1
        return hdr + payload + m

    def send(self, ftype, payload=b"", flags=0, attempt=0, fid=0):
        self.send_raw(self.seal(ftype, payload, flags, attempt, fid))

    def recv(self):
        """One sealed frame (inside TLS: one frame without a MAC):
        (type, flags, attempt, id, payload)."""
        if self.tls:
            magic, version, ftype, flags, length, attempt, fid = HDR.unpack(
                self._read_exact(HDR_LEN))
            if magic != MAGIC or version != VERSION:
                raise ProtocolError("bad header")
            return ftype, flags, attempt, fid, self._read_exact(length)
        frame_ = read_sealed(self._read_exact, self.k_s2c, self.recv_seq, "the node")
        self.recv_seq += 1
        return frame_

    # -- requests --------------------------------------------------------
    def ping(self, payload=b"ping"):
        self.send(PING, payload)
        while True:
            ftype, _, _, _, p = self.recv()
            if ftype == PONG:
                return p

    def define(self, desc):
        """Send FUNC for desc once; return its key."""
        key = func_key(desc)
        if key not in self.known:
            self.send(FUNC, key + desc)
            self.known.add(key)
        return key

    def submit(self, desc, args, flags=0, attempt=1, jid=None):
        """Send FUNC (if new) and JOB; return the job id."""
        key = self.define(desc)
        if jid is None:
            jid = self.next_id
            self.next_id += 1
        self.send(JOB, key + pickle.dumps(tuple(args)), flags=flags, attempt=attempt, fid=jid)
        return jid

    def result(self):
        """Read frames until a RESULT: (id, attempt, status, runtime_ns, data)."""
        while True:
            ftype, flags, attempt, fid, p = self.recv()
            if ftype == RESULT:
                status = flags & 0xFF
                runtime = struct.unpack("<Q", p[:8])[0]
                return fid, attempt, status, runtime, p[8:]
            if ftype == BYE:
                raise Closed("node said BYE")
            if ftype != PONG:
                raise ProtocolError("unexpected frame type %d" % ftype)

    def call(self, module, qualname, *args):
        """Run module.qualname(*args) on the node; return (status, value).
        value is the unpickled result for OK, the unpickled exception info
        tuple for EXC/SERIAL, and the raw bytes otherwise."""
        self.submit(ref_descriptor(module, qualname), args)
        _, _, status, _, data = self.result()
        if status in (RES_OK, RES_EXC, RES_SERIAL):
            return status, pickle.loads(data)
        return status, data

    def bye(self):
        try:
            self.send(BYE)
        except OSError:
            pass
        self.close()

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def connection_closed(sock, timeout):
    """Wait up to timeout s for the peer to close sock (reading and dropping
    whatever it sends). True if it closed (EOF or reset), False on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return True
        except socket.timeout:
            return False
        except ConnectionError:
            return True


# ---------------------------------------------------------------------------
# auto-discovery datagrams (docs/protocol.md section 8)

DISCO = struct.Struct("<4sBBH4sIIQ8s")  # magic .. nonce; then mac[16]
DISCO_LEN = DISCO.size + 16  # 52
DISCO_ANNOUNCE = 1
DISCO_QUERY = 2


def disco_key(secret):
    if isinstance(secret, str):
        secret = secret.encode()
    return hkdf_expand(hkdf_extract(b"pp-auth-v1", stretch(secret)), b"pp-discovery-v1")


def disco_datagram(secret, kind, port=0, addr="0.0.0.0", interval_ms=0,
                   nworkers=0, time_ms=None, nonce=None, magic=b"ppDI", version=1):
    """A signed discovery datagram, built independently of the C code."""
    if time_ms is None:
        time_ms = int(time.time() * 1000)
    body = DISCO.pack(magic, version, kind, port, socket.inet_aton(addr),
                      interval_ms, nworkers, time_ms, nonce or os.urandom(8))
    return body + hmac.new(disco_key(secret), body, hashlib.sha256).digest()[:16]


def disco_parse(secret, data):
    """(kind, port, addr, interval_ms, nworkers, time_ms) of a datagram whose
    MAC verifies under secret; None otherwise."""
    if len(data) != DISCO_LEN:
        return None
    body, tag = data[:DISCO.size], data[DISCO.size:]
    want = hmac.new(disco_key(secret), body, hashlib.sha256).digest()[:16]
    if not hmac.compare_digest(tag, want):
        return None
    magic, version, kind, port, addr, interval, nworkers, t, _ = DISCO.unpack(body)
    if magic != b"ppDI" or version != 1:
        return None
    return kind, port, socket.inet_ntoa(addr), interval, nworkers, t


# ---------------------------------------------------------------------------
# the node's side, for tests of clients facing a node that knows the secret
# but misbehaves

class NodeConn:
    """The node's end of one accepted connection: NodeConn(sock, secret)
    runs the handshake in the node role (it proves itself after the
    client, docs/protocol.md 6.2) and then speaks sealed frames. tls=True:
    sock is accept_tls()'s, and frames after the handshake carry no MAC."""

    def __init__(self, sock, secret, timeout=10.0, tls=False):
        if isinstance(secret, str):
            secret = secret.encode()
        self.sock, self.secret, self.timeout = sock, secret, timeout
        self.tls = tls
        self.rbuf = b""
        self.send_seq = self.recv_seq = 0
        sock.settimeout(timeout)
        hello = self._read_exact(HDR_LEN + 36)
        if HDR.unpack(hello[:HDR_LEN])[2] != AUTH_HELLO:
            raise ProtocolError("expected an AUTH HELLO")
        nonce_c = hello[HDR_LEN + 4:]
        challenge = frame(AUTH_CHALLENGE, struct.pack("<I", 1) + os.urandom(32))
        sock.sendall(challenge)
        nonce_s = challenge[HDR_LEN + 4:]
        k_cp, k_sp, self.k_c2s, self.k_s2c = derive(secret, nonce_c, nonce_s)
        transcript = hello + challenge
        proof = self._read_exact(HDR_LEN + 32)[HDR_LEN:]
        want = hmac.new(k_cp, b"client" + transcript, hashlib.sha256).digest()
        if not hmac.compare_digest(proof, want):
            raise AuthError("client did not prove the secret")
        sock.sendall(frame(AUTH_PROOF, hmac.new(k_sp, b"server" + transcript + proof,
                                                hashlib.sha256).digest()))

    def _read_exact(self, n):
        while len(self.rbuf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise Closed("client closed the connection")
            self.rbuf += chunk
        out, self.rbuf = self.rbuf[:n], self.rbuf[n:]
        return out

    def send(self, ftype, payload=b"", flags=0, attempt=0, fid=0):
        hdr = header(ftype, len(payload), flags, attempt, fid)
        if self.tls:
            self.sock.sendall(hdr + payload)
            return
        m = mac(self.k_s2c, self.send_seq, hdr, payload)
        self.send_seq += 1
        self.sock.sendall(hdr + payload + m)

    def recv(self):
        """One sealed frame from the client (inside TLS: without a MAC):
        (type, flags, attempt, id, payload)."""
        if self.tls:
            magic, version, ftype, flags, length, attempt, fid = HDR.unpack(
                self._read_exact(HDR_LEN))
            if magic != MAGIC or version != VERSION:
                raise ProtocolError("bad header")
            return ftype, flags, attempt, fid, self._read_exact(length)
        frame_ = read_sealed(self._read_exact, self.k_c2s, self.recv_seq, "the client")
        self.recv_seq += 1
        return frame_

    def hello(self, nworkers, pid=4242):
        self.send(HELLO, struct.pack("<II", pid, nworkers))

    def result(self, fid, attempt, value, status=RES_OK):
        self.send(RESULT, struct.pack("<Q", 1000) + pickle.dumps(value), flags=status,
                  attempt=attempt, fid=fid)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass
