"""Where the secret comes from, the same for the client (pp.Server) and the
node (ppserver), first found wins: the explicit argument (secret=, -s), a
secret file (secret_file=, --secret-file), PP_SECRET, then `pp_secret` in
~/.pythonrc.py, read without running it and refused when other users may
read it. ppserver's config file (its `secret`/`secret_file` sit between
PP_SECRET and ~/.pythonrc.py) is also read in pp's INI form ([general],
[network]). HOME is a temporary directory in every test."""
import math
import os
import sys
import subprocess

import pytest

import pp
from pp import _server
from helpers import PPSERVER_BIN, PPServer, free_port, needs_ppserver, node_env


def write_private(path, text, mode=0o600):
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty HOME and no PP_SECRET, for the client in this process."""
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("HOME", str(h))
    monkeypatch.delenv("PP_SECRET", raising=False)
    return h


# ---- the client ------------------------------------------------------------

def test_client_lookup_order_each_step(home, tmp_path, monkeypatch):
    sfile = write_private(tmp_path / "secret", "file-secret\n")
    write_private(home / ".pythonrc.py", "import os\npp_secret = 'rc-secret'\n")
    monkeypatch.setenv("PP_SECRET", "env-secret")
    find = _server.find_secret
    assert find("arg-secret", sfile) == (b"arg-secret", "secret=")
    assert find(None, sfile) == (b"file-secret", str(sfile))
    write_private(home / "s.txt", "home-file-secret\n")
    assert find(None, "~/s.txt") == (b"home-file-secret", str(home / "s.txt"))
    assert find(None, None) == (b"env-secret", "PP_SECRET")
    monkeypatch.delenv("PP_SECRET")
    assert find(None, None) == (b"rc-secret", str(home / ".pythonrc.py"))
    (home / ".pythonrc.py").unlink()
    assert find(None, None) == (None, None)
    with pytest.raises(ValueError, match="ppservers need a secret.*pythonrc"):
        pp.Server(0, ppservers=("127.0.0.1:%d" % free_port(),))


def test_client_pythonrc_is_read_not_run(home, tmp_path):
    marker = tmp_path / "it-ran"
    write_private(home / ".pythonrc.py",
                  "open(%r, 'w').write('x')\npp_secret = 'first'\n"
                  "if True:\n    pp_secret = 'nested, not top level'\n"
                  "pp_secret = b'last wins'\n" % str(marker))
    assert _server.find_secret() == (b"last wins", str(home / ".pythonrc.py"))
    assert not marker.exists()
    write_private(home / ".pythonrc.py", "pp_secret = open('/etc/hostname').read()\n")
    with pytest.raises(ValueError, match="string literal"):
        _server.find_secret()


def test_client_refuses_readable_pythonrc_and_secret_file(home, tmp_path):
    rc = write_private(home / ".pythonrc.py", "pp_secret = 'x'\n", 0o644)
    with pytest.raises(ValueError, match="other users may access it.*chmod 600"):
        _server.find_secret()
    # without pp_secret in it, a readable ~/.pythonrc.py is no concern of pp's
    write_private(rc, "print('hello')\n", 0o644)
    assert _server.find_secret() == (None, None)
    sfile = write_private(tmp_path / "secret", "s\n", 0o640)
    with pytest.raises(ValueError, match="chmod 600"):
        _server.find_secret(None, sfile)
    with pytest.raises(ValueError, match="empty"):
        _server.find_secret(None, write_private(tmp_path / "empty", "\n"))


# ---- ppserver ----------------------------------------------------------------

def run_node(args, env, timeout=10):
    return subprocess.run([str(PPSERVER_BIN)] + args, env=env, capture_output=True,
                          text=True, timeout=timeout)


@needs_ppserver
def test_ppserver_lookup_order_each_step(tmp_path, ppserver):
    home = tmp_path / "nodehome"
    home.mkdir()
    write_private(home / ".pythonrc.py", "pp_secret = 'rc-secret'  # the last resort\n")
    sfile = write_private(tmp_path / "secret", "file-secret\n")
    conf = write_private(tmp_path / "node.conf", "secret = conf-secret\n")
    steps = [  # (arguments, PP_SECRET, what the log says)
        (["-s", "arg-secret", "-c", str(conf), "--secret-file", str(sfile)],
         "env-secret", r"secret was given with -s"),
        (["-c", str(conf), "--secret-file", str(sfile)], "env-secret",
         r"secret from --secret-file \(%s\)" % sfile),
        (["-c", str(conf)], "env-secret", r"secret from PP_SECRET environment variable"),
        (["-c", str(conf)], None, r"secret from config file \(secret\) \(%s:1\)" % conf),
        ([], None, r"secret from ~/.pythonrc.py \(pp_secret\) \(%s:1\)"
         % (home / ".pythonrc.py")),
    ]
    for args, env_secret, logged in steps:
        n = ppserver("-d", *args, secret=None, ready=True,
                     env=node_env(env_secret, {"HOME": str(home)}))
        n.wait_log(logged)
        n.stop()
    # and the last step for real: client and node both take ~/.pythonrc.py's
    n = ppserver(secret=None, env=node_env(None, {"HOME": str(home)}))
    env = dict(os.environ, HOME=str(home))
    env.pop("PP_SECRET", None)
    code = ("import math, pp\n"
            "with pp.Server(0, ppservers=(%r,)) as s:\n"
            "    j = s.submit(math.sqrt, (16.0,)); print(j(), j.node)\n" % n.addr)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["4.0", n.addr]


@needs_ppserver
def test_ppserver_pythonrc_refused_when_readable_or_not_literal(tmp_path):
    home = tmp_path / "h"
    home.mkdir()
    env = node_env(None, {"HOME": str(home)})
    rc = write_private(home / ".pythonrc.py", "pp_secret = 'abc'\n", 0o644)
    r = run_node(["-p", "0"], env)
    assert r.returncode == 2, r.stderr
    assert "other users may access it" in r.stderr and "chmod 600 %s" % rc in r.stderr
    marker = tmp_path / "it-ran"
    write_private(rc, "import os; os.system('touch %s')\npp_secret = secret_from_vault()\n"
                  % marker)
    r = run_node(["-p", "0"], env)
    assert r.returncode == 2 and "string literal" in r.stderr and ":2:" in r.stderr, r.stderr
    assert not marker.exists()
    write_private(rc, "pp_secret2 = 'other name'\n")
    r = run_node(["-p", "0"], env)
    assert r.returncode == 2 and "no secret given" in r.stderr, r.stderr


@needs_ppserver
def test_ppserver_reads_pp_ini_config(tmp_path, ppserver):
    """ppft's example.config shape: [general] and [network] sections."""
    port = free_port()
    conf = write_private(tmp_path / "example.config", (
        "[general]\n"
        "debug = False\n"
        "workers = 1\n"
        "secret = epo20pdosl;dksldkmm\n"
        "proto = 4\n"
        "restart = False\n"
        "\n"
        "; the network section\n"
        "[network]\n"
        "autodiscovery = False\n"
        "interface = 127.0.0.1\n"
        "port: %d\n"
        "timeout = 60\n" % port))
    n = ppserver("-c", str(conf), secret=None, port=port, workers=1)
    n.wait_log(r"listening on 127\.0\.0\.1:%d with 1 workers.*exits after 60 s" % port)
    with pp.Server(0, ppservers=(n.addr,), secret="epo20pdosl;dksldkmm") as s:
        assert s.submit(math.sqrt, (9.0,))() == 3.0
    bad = write_private(tmp_path / "bad.config", "[general]\nworkers = 1\n[mail]\nport = 1\n")
    r = run_node(["-c", str(bad), "-s", "x"], node_env(None))
    assert r.returncode == 2 and "unknown section [mail]" in r.stderr and ":3:" in r.stderr


@needs_ppserver
def test_ppserver_version_is_pp_version():
    r = run_node(["--version"], node_env(None))
    assert r.returncode == 0 and r.stdout == "ppserver (pp) %s\n" % pp.__version__
