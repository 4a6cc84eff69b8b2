"""The fork server (start_method="fork", the default; docs/protocol.md 4.3):
local workers are forked from one clean template process, never from the
client; a crash, a set_ncpus growth or the template's own death are
recovered; a client killed with SIGKILL leaves no process behind; and
start_method="spawn" still starts fresh interpreters."""
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import pp
from helpers import (PPSERVER_BIN, REPO, SECRET, descendants, needs_ppserver,
                     pid_state, wait_for)


def ppid(pid):
    """The parent pid of pid, from /proc (None when it is gone)."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("PPid:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def template_pid(s, wait=True):
    """The server's fork server pid (the engine starts it on its thread,
    so it may take a moment after Server() returns)."""
    if not wait:
        return s._engine.stats()["template_pid"]
    return wait_for(lambda: s._engine.stats()["template_pid"], 10)


def worker_pids(s, n, timeout=15):
    """The pids of the server's n live workers, once it has n."""
    found = []

    def enough():
        found[:] = sorted(s._engine.pids())
        return len(found) == n
    wait_for(enough, timeout, what=lambda: "workers: %r" % (found,))
    return found


def whoami():
    import os
    return os.getpid(), os.getppid()


def state():
    import pickle
    import sys
    return (sys.flags.no_site, "site" in sys.modules,
            "colorsys" in sys.modules, hasattr(pickle, "_pp_client_marker"),
            sys.modules["__main__"].__dict__.get("CLIENT_ONLY"))


def crash_once(path):
    """Dies the first time (no result), returns its pid the next."""
    import os
    if not os.path.exists(path):
        open(path, "w").write("crashed")
        os._exit(3)
    return os.getpid()


def nap_then_whoami(t):
    import os
    import time
    time.sleep(t)
    return os.getpid(), os.getppid()


def bits():
    import random
    return random.getrandbits(64)


def test_workers_are_children_of_the_template_not_of_the_client():
    with pp.Server(2) as s:
        tpl = template_pid(s)
        assert tpl > 0 and tpl != os.getpid()
        assert ppid(tpl) == os.getpid()
        pids = worker_pids(s, 2)
        assert all(ppid(p) == tpl for p in pids), (tpl, pids, [ppid(p) for p in pids])
        got = {s.submit(nap_then_whoami, (0.2,))() for _ in range(4)}
        assert all(parent == tpl for _, parent in got)
        assert {pid for pid, _ in got} <= set(pids)


def test_a_worker_has_run_no_site_and_holds_none_of_the_clients_state():
    import colorsys  # noqa: F401  (the client has it; a fresh worker does not)
    import pickle
    pickle._pp_client_marker = 1
    sys.modules["__main__"].CLIENT_ONLY = "client"
    try:
        with pp.Server(1) as s:
            no_site, has_site, has_colorsys, marker, main_var = s.submit(state)()
    finally:
        del pickle._pp_client_marker
        del sys.modules["__main__"].CLIENT_ONLY
    assert no_site == 1 and not has_site  # started with -S, never imported site
    assert not has_colorsys and not marker and main_var is None


def test_respawn_after_a_crash_forks_again_and_the_template_survives(tmp_path):
    with pp.Server(1) as s:
        tpl = template_pid(s)
        (first,) = worker_pids(s, 1)
        pid = s.submit(crash_once, (str(tmp_path / "flag"),))()
        assert pid != first
        assert template_pid(s) == tpl and pid_state(tpl) == "alive"
        assert ppid(pid) == tpl
        assert s.submit(whoami)() == (pid, tpl)


def test_set_ncpus_growth_forks_from_the_template():
    with pp.Server(1) as s:
        tpl = template_pid(s)
        worker_pids(s, 1)
        s.set_ncpus(3)
        pids = worker_pids(s, 3)
        assert all(ppid(p) == tpl for p in pids)
        jobs = [s.submit(nap_then_whoami, (0.3,)) for _ in range(6)]
        assert {j()[1] for j in jobs} == {tpl}


def test_template_killed_is_replaced_and_the_jobs_complete():
    """Killing the template kills its workers (PR_SET_PDEATHSIG); their jobs
    run again uncharged (max_retries=0 would fail a charged one), on workers
    forked by a new template."""
    with pp.Server(2, max_retries=0) as s:
        tpl = template_pid(s)
        old = worker_pids(s, 2)
        busy = [s.submit(nap_then_whoami, (1.0,)) for _ in range(2)]
        wait_for(lambda: all(j.running() for j in busy), 10)
        time.sleep(0.2)
        os.kill(tpl, signal.SIGKILL)
        results = [j() for j in busy]
        more = [s.submit(whoami)() for _ in range(6)]
        new = template_pid(s, wait=False)
        assert new not in (0, tpl) and ppid(new) == os.getpid()
        assert {parent for _, parent in results + more} == {new}
        wait_for(lambda: all(pid_state(p) != "alive" for p in old + [tpl]), 10)


def test_start_method_spawn_starts_fresh_interpreters():
    with pp.Server(2, start_method="spawn") as s:
        pids = worker_pids(s, 2)
        assert template_pid(s, wait=False) == 0
        assert all(ppid(p) == os.getpid() for p in pids)
        assert s.submit(state)()[0] == 1
        assert s.submit(whoami)()[1] == os.getpid()


@pytest.mark.parametrize("bad", ["forkserver", "", None, 1])
def test_a_bad_start_method_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="start_method must be"):
        pp.Server(1, start_method=bad)


def test_forked_workers_do_not_share_random_state():
    with pp.Server(1, restart=True) as s:
        got = [s.submit(bits)() for _ in range(8)]
    assert len(set(got)) == len(got)


def test_a_client_with_running_threads_and_a_held_lock_starts_workers():
    """The client never forks, so whatever its threads hold does not reach a
    worker."""
    lock = threading.Lock()
    stop = threading.Event()
    held = threading.Event()

    def hold():
        with lock:
            held.set()
            stop.wait(30)

    def spin():
        while not stop.is_set():
            sum(range(1000))
    threads = [threading.Thread(target=hold, daemon=True),
               threading.Thread(target=spin, daemon=True)]
    for t in threads:
        t.start()
    try:
        assert held.wait(10)
        with pp.Server(2) as s:
            tpl = template_pid(s)
            got = [s.submit(whoami) for _ in range(4)]
            assert {j()[1] for j in got} == {tpl}
            s.set_ncpus(3)
            assert all(ppid(p) == tpl for p in worker_pids(s, 3))
    finally:
        stop.set()
        for t in threads:
            t.join(10)


CLIENT = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, %(python)r)
    import pp

    def nap(t):
        import time
        time.sleep(t)

    s = pp.Server(2)
    s.submit(nap, (0,))()
    busy = s.submit(nap, (60,))
    while not busy.running():
        time.sleep(0.01)
    time.sleep(0.2)
    print(s._engine.stats()["template_pid"], *s._engine.pids(), flush=True)
    time.sleep(60)
""")


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_client_killed_with_sigkill_leaves_no_process(tmp_path, method):
    script = tmp_path / "client.py"
    script.write_text(CLIENT.replace("pp.Server(2)", "pp.Server(2, start_method=%r)"
                                     % method) % {"python": str(REPO / "python")})
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            text=True)
    try:
        line = proc.stdout.readline()
        pids = [int(x) for x in line.split()]
        assert len(pids) == 3, line
        tpl, workers = pids[0], pids[1:]
        if method == "fork":
            assert tpl > 0 and all(ppid(p) == tpl for p in workers)
        else:
            assert tpl == 0 and all(ppid(p) == proc.pid for p in workers)
        everyone = descendants(proc.pid)
        assert set(workers) <= set(everyone)
    finally:
        proc.kill()
        proc.wait(10)
        proc.stdout.close()
    wait_for(lambda: all(pid_state(p) != "alive" for p in everyone), 10,
             what=lambda: {p: pid_state(p) for p in everyone})


# ---------------------------------------------------------------------------
# ppserver: --start-method and the config file's start_method

def node_pid(n):
    """(the node's fork server or None, its workers) once it has them all."""
    wait_for(lambda: len(n.worker_pids()) == n.workers, 15, what=n.log)
    servers = n.fork_server_pids()
    return (servers[0] if servers else None), n.worker_pids()


@needs_ppserver
def test_ppserver_forks_its_workers_and_recovers_its_fork_server(ppserver, tmp_path):
    n = ppserver(workers=2)
    tpl, workers = node_pid(n)
    assert tpl is not None and ppid(tpl) == n.pid
    assert all(ppid(p) == tpl for p in workers)
    with pp.Server(0, ppservers=(n.addr,), secret=SECRET) as s:
        assert s.submit(crash_once, (str(tmp_path / "flag"),))() not in workers
        assert n.fork_server_pids() == [tpl]  # it survived the crash
        os.kill(tpl, signal.SIGKILL)
        got = {s.submit(nap_then_whoami, (0.1,))() for _ in range(6)}
        new, _ = node_pid(n)
        assert new not in (None, tpl)
        assert {parent for _, parent in got} == {new}


@needs_ppserver
def test_ppserver_start_method_from_the_config_file(ppserver, tmp_path):
    conf = tmp_path / "pp.conf"
    conf.write_text("start_method = spawn\n")
    n = ppserver("-c", str(conf), workers=2)
    tpl, workers = node_pid(n)
    assert tpl is None and all(ppid(p) == n.pid for p in workers)
    n.wait_log(r"workers start as fresh interpreters \(--start-method spawn\)")
    bad = tmp_path / "bad.conf"
    bad.write_text("workers = 1\nstart_method = vfork\n")
    r = subprocess.run([str(PPSERVER_BIN), "-c", str(bad)], capture_output=True,
                       text=True, timeout=10, env=dict(os.environ, PP_SECRET=SECRET))
    assert r.returncode == 2 and "bad.conf:2" in r.stderr and "fork or spawn" in r.stderr, r.stderr
