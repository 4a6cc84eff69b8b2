"""TLS 1.3 between pp clients and ppserver nodes (docs/protocol.md 6.6): on
by default and keyed from the secret; certificates verified both ways;
plain connections only where both sides allow them, with a clear error on
both sides otherwise; captured traffic carries no plaintext of a job; a
wrong secret, a wrong CA, a flipped bit and malformed TLS bytes each close
one connection, and the job runs elsewhere. Everything on 127.0.0.1; every
process is stopped by pid (the ppserver fixture), every loop is bounded."""
import atexit
import io
import logging
import pathlib
import re
import shutil
import socket
import subprocess
import tempfile
import threading

import pytest

import ppwire
from helpers import PPSERVER_BIN, REPO, SECRET, needs_ppserver, node_env, wait_for

import pp

pytestmark = needs_ppserver

def _private_certs():
    """tests/certs copied into a private directory with the keys at mode
    0600: a checkout leaves them 0644, and ppserver and Server refuse a key
    file other users may read."""
    d = pathlib.Path(tempfile.mkdtemp(prefix="pp-test-certs-"))
    atexit.register(shutil.rmtree, str(d), True)
    for f in (REPO / "tests" / "certs").iterdir():
        if f.suffix in (".pem", ".key"):
            shutil.copyfile(f, d / f.name)
            (d / f.name).chmod(0o600 if f.suffix == ".key" else 0o644)
    return d


CERTS = _private_certs()
NODE_CERTS = ("--tls-cert", str(CERTS / "node.pem"), "--tls-key",
              str(CERTS / "node.key"), "--tls-ca", str(CERTS / "ca.pem"))
CLIENT_CERTS = dict(tls_cert=str(CERTS / "client.pem"),
                    tls_key=str(CERTS / "client.key"), tls_ca=str(CERTS / "ca.pem"))

MARK_SRC = "tls_marker_function_body"
MARK_ARG = "ARGUMENT-IN-CLEAR-7d1f"
MARK_RES = "RESULT-IN-CLEAR-93ab"


def tls_marker_function(s):
    tls_marker_function_body = "RESULT-IN-CLEAR-"
    return tls_marker_function_body + "93ab" + s[:0]


def double(x):
    return 2 * x


class Relay:
    """A TCP relay on 127.0.0.1 to a node that keeps every byte in each
    direction. tamper(pred) flips one bit in the first client->node chunk
    for which pred(chunk) is true (once); refuse() makes it close every
    connection accepted from then on. Loops end with stop()."""

    def __init__(self, port):
        self.upstream = ("127.0.0.1", port)
        self.up, self.down = bytearray(), bytearray()
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.tampered = threading.Event()
        self.pred = None
        self.refusing = False
        self.accepted = 0
        self.socks = []
        self.ls = socket.socket()
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(8)
        self.ls.settimeout(0.2)
        self.addr = "127.0.0.1:%d" % self.ls.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def tamper(self, pred):
        self.pred = pred

    def refuse(self):
        self.refusing = True

    def _accept(self):
        while not self.stopping.is_set():
            try:
                c, _ = self.ls.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.accepted += 1
            if self.refusing:
                c.close()
                continue
            u = socket.create_connection(self.upstream, timeout=5)
            self.socks += [c, u]
            threading.Thread(target=self._pump, args=(c, u, self.up, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(u, c, self.down, False), daemon=True).start()

    def _pump(self, src, dst, store, upward):
        src.settimeout(0.2)
        while not self.stopping.is_set():
            try:
                data = src.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            if not data:
                break
            if upward and self.pred is not None and not self.tampered.is_set() \
                    and self.pred(data):
                data = bytearray(data)
                data[len(data) // 2] ^= 0x10  # inside a record's ciphertext
                data = bytes(data)
                self.tampered.set()
            with self.lock:
                store += data
            try:
                dst.sendall(data)
            except OSError:
                break
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stop(self):
        self.stopping.set()
        self.ls.close()
        for s in self.socks:
            s.close()


@pytest.fixture
def relay():
    made = []

    def start(port):
        r = Relay(port)
        made.append(r)
        return r
    try:
        yield start
    finally:
        for r in made:
            r.stop()


def client(nodes, ncpus=0, **kw):
    """A pp.Server on nodes logging at INFO into a string buffer (.log)."""
    log = io.StringIO()
    kw.setdefault("secret", SECRET)
    kw.setdefault("no_capacity_timeout", 20)
    s = pp.Server(ncpus, ppservers=tuple(nodes), logstream=log,
                  loglevel=logging.INFO, **kw)
    s.log = log
    return s


def run_marker_job(s):
    return s.submit(tls_marker_function, (MARK_ARG,))()


def test_tls_is_the_default_and_no_job_byte_is_in_clear(ppserver, relay):
    n = ppserver()
    r = relay(n.port)
    s = client([r.addr])
    try:
        assert run_marker_job(s) == MARK_RES
        assert s.submit(double, (21,))() == 42
        assert re.search(r"connected to node \S+ \(1 workers, TLSv1\.3 TLS_\w+, PSK\)",
                         s.log.getvalue())
    finally:
        s.destroy()
    n.wait_log(r"client 127\.0\.0\.1:\d+ authenticated .*TLSv1\.3.*PSK")
    up, down = bytes(r.up), bytes(r.down)
    assert up[:1] == b"\x16" and down[:1] == b"\x16"  # TLS handshake records
    assert len(up) > 1000 and len(down) > 100
    for mark in (MARK_SRC, MARK_ARG, MARK_RES, "tls_marker_function", "double"):
        assert mark.encode() not in up + down, mark


def test_plain_mode_carries_the_job_in_clear(ppserver, relay):
    """The control for the test above: the same capture shows the job when
    the client asks for plain frames (so the search would find it)."""
    n = ppserver()
    r = relay(n.port)
    s = client([r.addr], tls=False)
    try:
        assert run_marker_job(s) == MARK_RES
        assert "no TLS: authenticated frames in clear" in s.log.getvalue()
    finally:
        s.destroy()
    assert bytes(r.up[:2]) == b"pp"
    assert MARK_SRC.encode() in r.up and MARK_ARG.encode() in r.up
    assert MARK_RES.encode() in r.down


def test_wrong_secret_fails_the_tls_handshake_and_sends_no_job(ppserver, relay):
    n = ppserver()
    r = relay(n.port)
    s = client([r.addr], ncpus=1, secret="another-secret-entirely")
    try:
        assert s.submit(double, (4,))() == 8  # ran on the local worker
        wait_for(lambda: "authentication failed" in s.log.getvalue(), 10,
                 what=s.log.getvalue)
        line = n.wait_log(r"connection 127\.0\.0\.1:\d+: handshake failed: "
                          r"authentication failed \(TLS: ")
        assert "binder" in line
        assert re.search(r"cannot use node \S+: authentication failed \(is the secret "
                         r"the same on both sides\?\): TLS: ", s.log.getvalue())
    finally:
        s.destroy()
    assert not any("authenticated" in ln for ln in n.lines)
    # the client's bytes were a ClientHello (and its alert), never a pp frame
    assert b"pp\x01" not in bytes(r.up) and len(r.up) < 4096


def test_certificates_are_verified_both_ways(ppserver):
    n = ppserver(*NODE_CERTS, "--require-tls")
    assert "TLS with certificates only" in n.log()
    s = client([n.addr], **CLIENT_CERTS)
    try:
        assert s.submit(double, (5,))() == 10
        assert re.search(r"TLSv1\.3 TLS_\w+, certificates\)", s.log.getvalue())
    finally:
        s.destroy()
    n.wait_log(r"client \S+ authenticated .*certificates")


def test_client_certificate_from_another_ca_is_refused(ppserver):
    n = ppserver(*NODE_CERTS)
    s = client([n.addr], no_capacity_timeout=3,
               tls_cert=str(CERTS / "other-client.pem"),
               tls_key=str(CERTS / "other-client.key"), tls_ca=str(CERTS / "ca.pem"))
    try:
        with pytest.raises(pp.PPError):
            s.submit(double, (1,))()
        n.wait_log(r"connection \S+: handshake failed: TLS handshake failed "
                   r"\(TLS: certificate verify failed")
        assert "TLS failed" in s.log.getvalue()
    finally:
        s.destroy()
    assert not any("authenticated" in ln for ln in n.lines)


def test_node_certificate_from_another_ca_is_refused(ppserver):
    n = ppserver("--tls-cert", str(CERTS / "other-node.pem"), "--tls-key",
                 str(CERTS / "other-node.key"), "--tls-ca", str(CERTS / "ca.pem"))
    s = client([n.addr], no_capacity_timeout=3, **CLIENT_CERTS)
    try:
        with pytest.raises(pp.PPError):
            s.submit(double, (1,))()
        assert re.search(r"cannot use node \S+: TLS failed: certificate verify failed",
                         s.log.getvalue()), s.log.getvalue()
    finally:
        s.destroy()
    wait_for(lambda: "handshake failed" in n.log(), 5, what=n.log)


def test_psk_client_is_refused_by_a_certificate_node(ppserver):
    n = ppserver(*NODE_CERTS)
    s = client([n.addr], no_capacity_timeout=3)
    try:
        with pytest.raises(pp.PPError):
            s.submit(double, (1,))()
        assert "TLS failed" in s.log.getvalue()
    finally:
        s.destroy()
    assert not any("authenticated" in ln for ln in n.lines)


def test_tls_client_against_a_plain_only_node(ppserver):
    n = ppserver("--no-tls")
    assert "plain connections only (--no-tls)" in n.log()
    s = client([n.addr], no_capacity_timeout=3)
    try:
        with pytest.raises(pp.PPError):
            s.submit(double, (1,))()
        assert "the node does not accept TLS (ppserver --no-tls" in s.log.getvalue()
    finally:
        s.destroy()
    n.wait_log(r"connection \S+: TLS client refused: this node accepts plain "
               r"connections only \(--no-tls\)")
    s = client([n.addr], tls=False)
    try:
        assert s.submit(double, (3,))() == 6  # both sides allow plain
    finally:
        s.destroy()


def test_plain_client_against_a_tls_only_node(ppserver):
    n = ppserver("--require-tls")
    s = client([n.addr], no_capacity_timeout=3, tls=False)
    try:
        with pytest.raises(pp.PPError):
            s.submit(double, (1,))()
        assert "the node requires TLS (ppserver --require-tls) and this client " \
               "has tls=False" in s.log.getvalue()
    finally:
        s.destroy()
    n.wait_log(r"connection \S+: plain client refused: this node requires TLS "
               r"\(--require-tls\)")
    # the raw plain client reads the refusal too: FAIL(MODE = 4)
    with pytest.raises(ppwire.AuthError, match=r"\(4, 1\)"):
        ppwire.Client("127.0.0.1", n.port, SECRET)


def test_default_node_still_serves_plain_clients(ppserver):
    n = ppserver()
    with ppwire.Client("127.0.0.1", n.port, SECRET) as c:
        assert c.call("math", "sqrt", 16) == (ppwire.RES_OK, 4.0)


def test_flipped_bit_closes_the_connection_and_the_job_runs_elsewhere(ppserver, relay):
    n = ppserver()
    r = relay(n.port)
    s = client([r.addr])
    try:
        assert s.submit(double, (1,))() == 2  # connected, through TLS
        r.tamper(lambda chunk: len(chunk) > 20000)  # the next big JOB
        r.refuse()  # and no reconnection: the job must run elsewhere
        big = "x" * 50000
        j = s.submit(len, (big,))
        wait_for(r.tampered.is_set, 10)
        n.wait_log(r"client 127\.0\.0\.1:\d+: bad TLS record: .*bad record mac")
        wait_for(lambda: "lost node" in s.log.getvalue(), 10, what=s.log.getvalue)
        s.set_ncpus(1)
        assert j() == 50000
        assert s.get_stats()["local"].njobs == 1
    finally:
        s.destroy()


def test_flipped_bit_toward_the_client_closes_it_too(ppserver, relay):
    """The same in the other direction: a result whose record was altered is
    never delivered; the client drops the node and the job runs again."""
    n = ppserver()

    class Down(Relay):
        def _pump(self, src, dst, store, upward):
            return Relay._pump(self, src, dst, store, not upward)
    r = Down(n.port)
    try:
        s = client([r.addr])
        try:
            assert s.submit(double, (1,))() == 2
            r.tamper(lambda chunk: len(chunk) > 20000)  # the big RESULT
            j = s.submit(str.__mul__, ("y", 60000))
            assert j() == "y" * 60000  # after a reconnect, through the relay
            assert r.tampered.is_set()
            assert re.search(r"lost node \S+ \(TLS failed: .*bad record mac",
                             s.log.getvalue()), s.log.getvalue()
        finally:
            s.destroy()
    finally:
        r.stop()


# ---- malformed TLS bytes at the node: one connection closes, it serves on

def raw_send(port, data, wait=3.0):
    """Send data to the node, return what it answers until it closes (or
    wait seconds pass)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as so:
        so.sendall(data)
        got = b""
        try:
            while True:
                b = so.recv(4096)
                if not b:
                    break
                got += b
        except socket.timeout:
            return None
        return got


@pytest.mark.parametrize("data,reason", [
    (b"\x16\x03\x01\x00\x05\x01\x02\x03\x04\x05", "TLS handshake failed"),
    (b"\x16\x03\x03\xff\xff" + b"\x00" * 64, "TLS handshake failed"),  # record too long
    (b"\x16\x03\x01\x00\x30" + b"\x02" + b"\x00" * 47, "TLS handshake failed"),
])
def test_malformed_tls_bytes_close_one_connection(ppserver, data, reason):
    n = ppserver()
    got = raw_send(n.port, data)
    assert got is not None and got[:1] in (b"", b"\x15")  # at most an alert
    n.wait_log(r"connection 127\.0\.0\.1:\d+: handshake failed: " + reason)
    with ppwire.Client("127.0.0.1", n.port, SECRET) as c:  # still serving
        assert c.call("math", "sqrt", 9) == (ppwire.RES_OK, 3.0)
    s = client([n.addr])
    try:
        assert s.submit(double, (2,))() == 4
    finally:
        s.destroy()


def test_tls_handshake_that_stalls_is_closed_in_time(ppserver):
    n = ppserver("-k", "2")
    got = raw_send(n.port, b"\x16\x03\x01\x00\x40\x01", wait=10)
    assert got == b""
    n.wait_log(r"connection \S+: handshake not completed in time")


# ---- options ---------------------------------------------------------------

def run_node(*args, timeout=20):
    return subprocess.run([str(PPSERVER_BIN), *args], env=node_env(), timeout=timeout,
                          capture_output=True, text=True)


def test_gen_secret_prints_a_fresh_256_bit_secret():
    a, b = run_node("--gen-secret"), run_node("--gen-secret")
    assert a.returncode == 0 and b.returncode == 0
    assert re.fullmatch(r"[0-9a-f]{64}\n", a.stdout) and a.stdout != b.stdout
    env = node_env(secret=None)
    c = subprocess.run([str(PPSERVER_BIN), "--gen-secret"], env=env, timeout=20,
                       capture_output=True, text=True)
    assert c.returncode == 0 and len(c.stdout) == 65  # needs no secret itself


@pytest.mark.parametrize("args,msg", [
    (("--no-tls", "--require-tls"), "contradict"),
    (("--tls-cert", str(CERTS / "node.pem")), "all three"),
    (("--no-tls",) + NODE_CERTS, "contradict"),
    (("--tls-cert", "/nonexistent.pem", "--tls-key", str(CERTS / "node.key"),
      "--tls-ca", str(CERTS / "ca.pem")), "cannot load the TLS certificate /nonexistent.pem"),
    (("--tls-cert", str(CERTS / "node.pem"), "--tls-key", str(CERTS / "client.key"),
      "--tls-ca", str(CERTS / "ca.pem")), "mismatch"),
])
def test_bad_tls_options_exit_2(args, msg):
    r = run_node("-p", "0", "-w", "1", *args)
    assert r.returncode == 2, r.stderr
    assert msg in r.stderr


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_tls_key_others_may_read_is_refused(tmp_path, mode):
    key = tmp_path / "node.key"
    shutil.copyfile(CERTS / "node.key", key)
    key.chmod(mode)
    args = ("--tls-cert", str(CERTS / "node.pem"), "--tls-key", str(key),
            "--tls-ca", str(CERTS / "ca.pem"))
    r = run_node("-p", "0", "-w", "1", *args)
    assert r.returncode == 2, r.stderr
    assert ("TLS key file %s holds the secret and other users may access it"
            % key) in r.stderr and "chmod 600 %s" % key in r.stderr, r.stderr
    ckey = tmp_path / "client.key"
    shutil.copyfile(CERTS / "client.key", ckey)
    ckey.chmod(mode)
    with pytest.raises(ValueError, match=r"tls_key %s: other users may access "
                       r"it.*refused; run `chmod 600 " % re.escape(str(ckey))):
        pp.Server(0, ppservers=("127.0.0.1:1",), secret=SECRET,
                  **dict(CLIENT_CERTS, tls_key=str(ckey)))
    ckey.chmod(0o600)  # the same file, private: accepted (the nodes of the
    pp.Server(0, ppservers=("127.0.0.1:1",), secret=SECRET,  # tests above
              **dict(CLIENT_CERTS, tls_key=str(ckey))).destroy()  # use 0600)


def test_server_tls_arguments_are_checked():
    with pytest.raises(ValueError, match="all three"):
        pp.Server(0, ppservers=("127.0.0.1:1",), secret=SECRET,
                  tls_cert=CLIENT_CERTS["tls_cert"])
    with pytest.raises(ValueError, match="tls=False cannot be combined"):
        pp.Server(0, ppservers=("127.0.0.1:1",), secret=SECRET, tls=False,
                  **CLIENT_CERTS)
    with pytest.raises(ValueError, match="cannot read"):
        pp.Server(0, ppservers=("127.0.0.1:1",), secret=SECRET,
                  **dict(CLIENT_CERTS, tls_ca="/nonexistent/ca.pem"))
    with pytest.raises(ValueError, match="mismatch"):
        pp.Server(0, ppservers=("127.0.0.1:1",), secret=SECRET,
                  **dict(CLIENT_CERTS, tls_key=str(CERTS / "node.key")))
    with pytest.raises(TypeError):
        pp.Server(0, tls="yes")
