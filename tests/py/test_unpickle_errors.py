"""Arguments a worker cannot unpickle (a module the worker lacks, a failing
__reduce__ callable): the job raises the real exception type with its
message, locally and through a ppserver node, and the worker lives on.
(Before the fix the job failed with SystemError from memoryview.release.)"""
import importlib
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

import pp

ROOT = Path(__file__).resolve().parents[2]
PPSERVER = ROOT / "bin" / "ppserver"
SECRET = "test-unpickle-secret"

# unpickling a Boom calls boom("boom"), which raises
BOOM_SRC = '''
def boom(msg):
    raise ValueError(msg)


class Boom:
    def __reduce__(self):
        return (boom, ("boom",))
'''

# a plain class; the worker cannot import its module
PAYLOAD_SRC = '''
class Payload:
    def __init__(self, v):
        self.v = v
'''


@pytest.fixture
def modules(tmp_path):
    """make(src) -> a new module written to tmp_path and imported in this
    process; put_on_path() adds tmp_path to sys.path (a Server created after
    it gives its workers the directory). Both undone at the end."""
    made = []

    def make(src):
        name = "ppt_%s" % uuid.uuid4().hex[:12]
        (tmp_path / (name + ".py")).write_text(src)
        added = str(tmp_path) not in sys.path
        if added:
            sys.path.insert(0, str(tmp_path))
        try:
            importlib.invalidate_caches()
            mod = importlib.import_module(name)
        finally:
            if added:
                sys.path.remove(str(tmp_path))
        made.append(name)
        return mod

    def put_on_path():
        sys.path.insert(0, str(tmp_path))

    make.put_on_path = put_on_path
    make.dir = tmp_path
    yield make
    while str(tmp_path) in sys.path:
        sys.path.remove(str(tmp_path))
    for name in made:
        sys.modules.pop(name, None)


def check_boom(server, mod):
    job = server.submit(len, (mod.Boom(),))
    with pytest.raises(ValueError, match="^boom$"):
        job()
    assert "boom" in job.exception().remote_traceback
    assert server.submit(abs, (-3,))() == 3  # the worker still serves


def check_missing(server, mod):
    job = server.submit(len, (mod.Payload(1),))
    with pytest.raises(ModuleNotFoundError, match=mod.__name__) as info:
        job()
    assert info.value.name == mod.__name__
    assert server.submit(abs, (-4,))() == 4


def test_failing_reduce_raises_its_error_locally(modules):
    modules.put_on_path()  # the workers can import the module
    mod = modules(BOOM_SRC)
    with pp.Server(1) as s:
        check_boom(s, mod)


def test_missing_module_raises_modulenotfound_locally(modules):
    with pp.Server(1) as s:  # started before the module exists on any path
        mod = modules(PAYLOAD_SRC)
        check_missing(s, mod)


class Node:
    """bin/ppserver on 127.0.0.1, port 0 (read back from its log)."""

    def __init__(self, pythonpath):
        env = dict(os.environ, PP_SECRET=SECRET, PYTHONPATH=pythonpath)
        self.proc = subprocess.Popen(
            [str(PPSERVER), "-i", "127.0.0.1", "-p", "0", "-w", "1",
             "--python", sys.executable],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True, errors="replace")
        self.lines = []
        self.cond = threading.Condition()
        threading.Thread(target=self._pump, daemon=True).start()
        line = self.wait_log(r"listening on \S+:\d+ ")
        self.addr = "127.0.0.1:%s" % re.search(r"listening on \S+:(\d+) ",
                                                line).group(1)

    def _pump(self):
        for line in self.proc.stderr:
            with self.cond:
                self.lines.append(line)
                self.cond.notify_all()
        with self.cond:
            self.lines.append(None)
            self.cond.notify_all()

    def wait_log(self, pattern, timeout=10):
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        i = 0
        with self.cond:
            while True:
                while i < len(self.lines):
                    if self.lines[i] is None:
                        pytest.fail("ppserver exited: %s" % "".join(self.lines[:-1]))
                    if rx.search(self.lines[i]):
                        return self.lines[i]
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail("ppserver never logged %r" % pattern)
                self.cond.wait(left)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def node_for(modules):
    made = []

    def make(*extra_paths):
        n = Node(os.pathsep.join([str(ROOT / "python")] + [str(p) for p in extra_paths]))
        made.append(n)
        return n
    yield make
    for n in made:
        n.stop()


@pytest.mark.skipif(not PPSERVER.exists(), reason="bin/ppserver not built (make)")
def test_failing_reduce_raises_its_error_on_a_node(modules, node_for):
    mod = modules(BOOM_SRC)
    node = node_for(modules.dir)  # the node's workers can import it
    with pp.Server(0, ppservers=(node.addr,), secret=SECRET) as s:
        check_boom(s, mod)


@pytest.mark.skipif(not PPSERVER.exists(), reason="bin/ppserver not built (make)")
def test_missing_module_raises_modulenotfound_on_a_node(modules, node_for):
    mod = modules(PAYLOAD_SRC)
    node = node_for()  # the node's workers cannot import it
    with pp.Server(0, ppservers=(node.addr,), secret=SECRET) as s:
        check_missing(s, mod)
