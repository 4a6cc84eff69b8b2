"""Nodes under a cluster manager (deploy/, docs/deploy.md): the systemd unit
passes `systemd-analyze verify`; ppserver tells a service manager READY=1 and
STOPPING=1 over $NOTIFY_SOCKET (Type=notify); pp.slurm_nodes() expands Slurm
node lists; and deploy/slurm/pp.sbatch runs on a real single-node Slurm
(munged, slurmctld and slurmd from Debian's packages, started here on
loopback, stopped by pid) — skipped, saying why, when those cannot start."""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import pp
from helpers import (PPSERVER_BIN, REPO, free_port, needs_ppserver, node_env,
                     wait_for)

UNIT = REPO / "deploy" / "ppserver.service"
SBATCH = REPO / "deploy" / "slurm" / "pp.sbatch"


# ---- pp.slurm_nodes ------------------------------------------------------------

def test_slurm_nodes_expands_hostlists(monkeypatch):
    assert pp.slurm_nodes("node[01-03,07],gpu5") == [
        "node01", "node02", "node03", "node07", "gpu5"]
    assert pp.slurm_nodes("a[8-10]") == ["a8", "a9", "a10"]
    assert pp.slurm_nodes("rack[1-2]-n[1,3]") == ["rack1-n1", "rack1-n3",
                                                  "rack2-n1", "rack2-n3"]
    assert pp.slurm_nodes("solo") == ["solo"]
    assert pp.slurm_nodes("x[1-2],x1") == ["x1", "x2"]  # each once
    assert pp.slurm_nodes("n[1-2]", port=35000) == ["n1:35000", "n2:35000"]
    monkeypatch.setenv("SLURM_JOB_NODELIST", "c[001-002]")
    assert pp.slurm_nodes() == ["c001", "c002"]
    monkeypatch.delenv("SLURM_JOB_NODELIST")
    monkeypatch.delenv("SLURM_NODELIST", raising=False)
    with pytest.raises(ValueError, match="SLURM_JOB_NODELIST is not set"):
        pp.slurm_nodes()
    for bad in ("n[1-", "n]1[", "n[3-1]", "n[a-b]", "n[[1]]"):
        with pytest.raises(ValueError):
            pp.slurm_nodes(bad)


# ---- systemd -------------------------------------------------------------------

def test_systemd_unit_verifies(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (make deps installs systemd)")
    text = UNIT.read_text()
    for line in ("Type=notify", "Restart=on-failure", "DynamicUser=yes",
                 "LoadCredential=pp-secret:/etc/ppserver/secret"):
        assert re.search("^%s$" % re.escape(line), text, re.M), line
    assert re.search(r"^ExecStart=/usr/local/bin/ppserver .*--secret-file %d/pp-secret$",
                     text, re.M)
    # verify checks that ExecStart's program exists: point it at the build,
    # and let man(1) find the unit's Documentation=man:ppserver(1)
    (tmp_path / "man" / "man1").mkdir(parents=True)
    shutil.copy(REPO / "docs" / "ppserver.1", tmp_path / "man" / "man1")
    env = dict(os.environ, MANPATH=str(tmp_path / "man"))
    unit = tmp_path / "ppserver.service"
    unit.write_text(text.replace("/usr/local/bin/ppserver", str(PPSERVER_BIN)))
    r = subprocess.run([analyze, "verify", str(unit)], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and r.stdout + r.stderr == "", r.stdout + r.stderr
    # the check can fail: a mistyped directive is reported
    unit.write_text(text.replace("/usr/local/bin/ppserver", str(PPSERVER_BIN))
                    .replace("Type=notify", "Type=notifyy"))
    r = subprocess.run([analyze, "verify", str(unit)], env=env, capture_output=True,
                       text=True, timeout=60)
    assert "notifyy" in r.stderr, r.stderr


def recv_states(sock, want, timeout=15):
    """Datagrams from sock until one holds the line `want`; all of them."""
    got = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            got.append(sock.recv(4096).decode())
        except socket.timeout:
            break
        if want in got[-1].split("\n"):
            return got
    pytest.fail("no %r from ppserver on NOTIFY_SOCKET within %g s (got %r)"
                % (want, timeout, got))


@needs_ppserver
@pytest.mark.parametrize("abstract", [False, True])
def test_ppserver_notifies_ready_and_stopping(tmp_path, ppserver, abstract):
    if abstract:
        name = "@pp-test-notify-%d-%d" % (os.getpid(), time.monotonic_ns())
        addr = "\0" + name[1:]
    else:
        name = addr = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(addr)
        n = ppserver(workers=1, env=node_env(extra={"NOTIFY_SOCKET": name}))
        ready = recv_states(sock, "READY=1")[-1].split("\n")
        assert "MAINPID=%d" % n.pid in ready
        assert "STATUS=listening on %s" % n.addr in ready
        n.send_signal(signal.SIGTERM)
        recv_states(sock, "STOPPING=1")
        assert n.wait_exit() == 0


# ---- Slurm -----------------------------------------------------------------------

SLURM_CONF = """\
ClusterName=pptest
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={d}/munge/sock
CredType=cred/munge
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=pp Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


def _tail(path, n=15):
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no %s)" % path


@pytest.fixture
def slurm(tmp_path):
    """A single-node Slurm on 127.0.0.1 (node `localhost`): munged, slurmctld
    and slurmd in the foreground, as root, with their state in tmp_path.
    Yields the environment for sbatch/squeue; stops every daemon by pid."""
    tools = ["munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo"]
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip("Slurm is not installed (%s missing; make deps installs "
                    "slurm-wlm and munge)" % ", ".join(missing))
    if os.geteuid() != 0:
        pytest.skip("a test Slurm needs root (slurmd runs jobs as their user)")
    d = tmp_path / "slurm"
    for sub in ("state", "spool", "munge"):
        (d / sub).mkdir(parents=True)
    (d / "munge").chmod(0o700)
    key = d / "munge" / "key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    ctld_port = free_port()
    slurmd_port = free_port()
    conf = d / "slurm.conf"
    conf.write_text(SLURM_CONF.format(d=d, ctld_port=ctld_port, slurmd_port=slurmd_port,
                                      cpus=os.cpu_count() or 1))
    env = dict(os.environ, SLURM_CONF=str(conf))
    procs = []

    def start(argv, log):
        with open(d / log, "wb") as out:
            procs.append(subprocess.Popen(argv, env=env, stdout=out,
                                          stderr=subprocess.STDOUT))
    try:
        m = d / "munge"
        start(["munged", "-F", "--force", "--socket=%s/sock" % m, "--key-file=%s" % key,
               "--pid-file=%s/pid" % m, "--log-file=%s/log" % m,
               "--seed-file=%s/seed" % m], "munged.out")
        if not wait_for(lambda: (m / "sock").exists() or procs[0].poll() is not None,
                        10, fail=False) or procs[0].poll() is not None:
            pytest.skip("munged cannot start here:\n%s" % _tail(m / "log"))
        start(["slurmctld", "-D", "-i"], "slurmctld.out")
        start(["slurmd", "-D", "-N", "localhost"], "slurmd.out")

        def idle():
            if any(p.poll() is not None for p in procs):
                return "exited"
            r = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True,
                               text=True, timeout=10)
            return r.stdout.strip() == "idle"
        state = wait_for(idle, 20, fail=False, interval=0.2)
        if state != True:  # noqa: E712 - "exited" is a string
            pytest.skip("the Slurm daemons cannot start here (%s):\nslurmctld: %s\n"
                        "slurmd: %s" % (state or "node not idle in 20 s",
                                        _tail(d / "slurmctld.log"), _tail(d / "slurmd.log")))
        yield env
    finally:
        for p in reversed(procs):  # slurmd, slurmctld, munged: by pid
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(procs):
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)


@needs_ppserver
@pytest.mark.watchdog(120)
def test_sbatch_recipe_on_single_node_slurm(tmp_path, slurm):
    secret = tmp_path / "secret"
    secret.write_text("slurm-test-secret\n")
    secret.chmod(0o600)
    port = free_port()
    out = tmp_path / "job.out"
    env = dict(slurm, PP_SECRET_FILE=str(secret), PP_PORT=str(port),
               PP_INTERFACE="127.0.0.1", PPSERVER=str(PPSERVER_BIN),
               PP_PYTHON=sys.executable, PYTHONPATH=str(REPO / "python"))
    env.pop("PP_SECRET", None)
    r = subprocess.run(["sbatch", "--parsable", "--nodes=1", "--output=%s" % out,
                        str(SBATCH)], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    job = r.stdout.strip().split(";")[0]

    def finished():
        q = subprocess.run(["squeue", "-h", "-j", job], env=env, capture_output=True,
                           text=True, timeout=10)
        return q.returncode == 0 and q.stdout.strip() == ""
    wait_for(finished, 60, what=lambda: _tail(out, 40), interval=0.25)
    text = out.read_text()
    assert "pp.sbatch: job %s on localhost" % job in text, text
    assert "pp.sbatch: 4 jobs on nodes ['localhost:%d']" % port in text, text
    # the node was told to stop and stopped cleanly
    assert "ppserver stopped" in text, text
    state = subprocess.run(["scontrol", "show", "job", job], env=env,
                           capture_output=True, text=True, timeout=10).stdout
    assert "JobState=COMPLETED" in state and "ExitCode=0:0" in state, state
