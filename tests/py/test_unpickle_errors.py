"""Arguments a worker cannot unpickle (a module the worker lacks, a failing
__reduce__ callable): the job raises the real exception type with its
message, locally and through a ppserver node, and the worker lives on.
(Before the fix the job failed with SystemError from memoryview.release.)"""
import importlib
import os
import sys
import uuid

import pytest

import pp
from helpers import REPO, SECRET, needs_ppserver, node_env

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


@pytest.fixture
def node_for(ppserver):
    """node_for(*dirs): a 1-worker ppserver whose workers also import from dirs."""
    def make(*extra_paths):
        path = os.pathsep.join([str(REPO / "python")] + [str(p) for p in extra_paths])
        return ppserver(workers=1, env=node_env(SECRET, extra={"PYTHONPATH": path}))
    return make


@needs_ppserver
def test_failing_reduce_raises_its_error_on_a_node(modules, node_for):
    mod = modules(BOOM_SRC)
    node = node_for(modules.dir)  # the node's workers can import it
    with pp.Server(0, ppservers=(node.addr,), secret=SECRET) as s:
        check_boom(s, mod)


@needs_ppserver
def test_missing_module_raises_modulenotfound_on_a_node(modules, node_for):
    mod = modules(PAYLOAD_SRC)
    node = node_for()  # the node's workers cannot import it
    with pp.Server(0, ppservers=(node.addr,), secret=SECRET) as s:
        check_missing(s, mod)
