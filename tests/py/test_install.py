"""Installing pp works offline, from nothing but what `make deps` installs:
`make install` (pip, no build isolation, the in-tree build backend); an
sdist that holds every file the build needs, installed into a fresh virtual
environment from another directory, gives `ppserver` on PATH, `python -m
pp.server`, the man page, the metadata and a working pp, locally and on a
ppserver started from that installed copy; and in a fresh clone with no
build outputs, `make run` (like `make test`) installs its Debian packages
first and runs the example."""
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from helpers import PPServer, SECRET

ROOT = Path(__file__).resolve().parents[2]


def run(argv, **kw):
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    kw.setdefault("timeout", 300)
    r = subprocess.run(argv, **kw)
    assert r.returncode == 0, "%s\n%s%s" % (argv, r.stdout, r.stderr)
    return r


def clean_env(**extra):
    """This environment without PYTHONPATH or PP_SECRET (an installed pp must
    stand on its own), plus extra."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PP_SECRET")}
    env.update(extra)
    return env


@pytest.mark.watchdog(600)
def test_make_install_into_a_target_dir(tmp_path):
    target = tmp_path / "site"
    run(["make", "-s", "install", "PYTHON=" + sys.executable,
         "PIPFLAGS=-q --target %s" % target], cwd=ROOT, timeout=600)
    assert list((target / "pp").glob("_core*.so"))
    assert list((target / "pp").glob("_wcore*.so"))  # what workers load
    assert (target / "pp" / "py.typed").is_file()
    assert (target / "ppft" / "__init__.py").is_file()
    assert (target / "ppft" / "common.py").is_file()
    assert os.access(target / "pp" / "bin" / "ppserver", os.X_OK)
    code = ("import pp, math; assert pp.__file__.startswith(%r), pp.__file__\n"
            "with pp.Server(2) as s:\n"
            "    print(sum(j() for j in [s.submit(math.sqrt, (x * x,)) for x in range(10)]))"
            % str(target))
    r = run([sys.executable, "-c", code], cwd=tmp_path,
            env=clean_env(PYTHONPATH=str(target)), timeout=120)
    assert r.stdout.strip() == "45.0"


def where_is_pp():
    import pp
    return list(pp.__path__)[0]


@pytest.mark.watchdog(600)
def test_sdist_into_a_fresh_venv_runs_jobs_locally_and_on_its_ppserver(tmp_path):
    dist = tmp_path / "dist"
    r = run([sys.executable, str(ROOT / "tools" / "pp_build.py"), "sdist", str(dist)])
    sdist = Path(r.stdout.strip())
    import pp
    assert sdist.name == "pp-%s.tar.gz" % pp.__version__
    with tarfile.open(sdist) as tf:
        names = set(tf.getnames())
    base = "pp-%s/" % pp.__version__
    for f in ["PKG-INFO", "pyproject.toml", "LICENSE", "README.md", "tools/pp_build.py",
              "docs/ppserver.1", "docs/deploy.md", "deploy/ppserver.service",
              "deploy/slurm/pp.sbatch", "python/pp/_version.py", "python/pp/server.py"]:
        assert base + f in names, f
    # every C source and header the build compiles or includes
    for sub in ("src/core", "src/ext", "src/ppserver"):
        for p in (ROOT / sub).iterdir():
            if p.suffix in (".c", ".h"):
                assert base + "%s/%s" % (sub, p.name) in names, p

    # a fresh venv (the interpreter's site-packages visible: cloudpickle, pip)
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)])
    vpy = venv / "bin" / "python"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = clean_env(PATH="%s:%s" % (venv / "bin", os.environ.get("PATH", "")))
    run([str(vpy), "-m", "pip", "install", "-q", "--no-build-isolation", "--no-deps",
         "--no-index", str(sdist)], cwd=elsewhere, env=env, timeout=600)
    site = run([str(vpy), "-c", "import pp; print(pp.__file__)"], cwd=elsewhere,
               env=env).stdout.strip()
    assert site.startswith(str(venv)), site
    assert (venv / "share" / "man" / "man1" / "ppserver.1").read_text().startswith(".\\\"")
    # pip installed what the wheel's RECORD listed: the program, executable
    record = next(venv.glob("lib/python*/site-packages/pp-*.dist-info/RECORD")).read_text()
    assert "pp/bin/ppserver," in record and "ppserver.1," in record
    assert os.access(Path(site).parent / "bin" / "ppserver", os.X_OK)
    # the version, one string: the package, the program, python -m pp.server
    version = "ppserver (pp) %s\n" % pp.__version__
    assert run(["ppserver", "--version"], cwd=elsewhere, env=env).stdout == version
    assert run([str(vpy), "-m", "pp.server", "--version"], cwd=elsewhere,
               env=env).stdout == version
    meta = run([str(vpy), "-c", "import importlib.metadata as m; "
                "print(m.metadata('pp').as_string())"], cwd=elsewhere, env=env).stdout
    for line in ("Name: pp", "Version: %s" % pp.__version__, "License: BSD-3-Clause",
                 "Requires-Python: >=3.10", "Provides-Extra: cloudpickle",
                 "Provides-Extra: tqdm"):
        assert line in meta.splitlines(), line

    # local workers, then a ppserver started from the venv's PATH (its
    # workers use the venv's interpreter and its installed pp)
    code = ("import math, pp\n"
            "with pp.Server(2) as s:\n"
            "    print(sum(j() for j in [s.submit(math.sqrt, (x * x,)) for x in range(10)]))\n")
    assert run([str(vpy), "-c", code], cwd=elsewhere, env=env).stdout.strip() == "45.0"
    node = PPServer(program="ppserver", python=None, workers=1,
                    env=clean_env(PATH=env["PATH"], PP_SECRET=SECRET, HOME=str(tmp_path)))
    try:
        import inspect
        src = inspect.getsource(where_is_pp)
        code = ("import pp\n%s\n"
                "with pp.Server(0, ppservers=(%r,), secret=%r) as s:\n"
                "    j = s.submit(where_is_pp)\n"
                "    print(j(), j.node)\n" % (src, node.addr, SECRET))
        out = run([str(vpy), "-c", code], cwd=elsewhere, env=env).stdout.split()
        assert out[1] == node.addr
        assert out[0].startswith(str(venv)), out
    finally:
        node.stop()


@pytest.mark.watchdog(600)
def test_make_run_from_a_fresh_clone(tmp_path):
    """`make run`, like `make test`, first installs the Debian packages (make
    deps: a no-op when they are there, as here), then builds and runs."""
    if run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT).stdout:
        pytest.skip("the work tree has uncommitted changes; a clone would not test them")
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(ROOT), str(clone)])
    assert not list(clone.glob("python/pp/_core*")) and not (clone / "bin").exists()
    for target in ("run", "test"):
        dry = run(["make", "-n", target], cwd=clone).stdout
        # under `make test` a sub-make also prints "make[N]: Entering ..."
        lines = [l for l in dry.splitlines() if not l.startswith("make[")]
        assert "dpkg -s" in lines[0] and "apt-get install" in dry, (target, dry)
    r = run(["make", "run", "PYTHON=" + sys.executable], cwd=clone,
            env=clean_env(), timeout=600)
    assert "Sum of primes below 100000 is 454396537" in r.stdout, r.stdout
    assert "Jobs run by each local worker process" in r.stdout, r.stdout
