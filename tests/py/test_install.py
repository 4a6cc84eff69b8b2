"""`make install` works offline: pip builds pp (C core and extension) without
build isolation, and the installed copy runs jobs on its own."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_make_install_into_a_target_dir(tmp_path):
    target = tmp_path / "site"
    r = subprocess.run(["make", "-s", "install", "PYTHON=" + sys.executable,
                        "PIPFLAGS=-q --target %s" % target],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert list((target / "pp").glob("_core*.so"))
    assert (target / "pp" / "py.typed").is_file()
    assert (target / "ppft" / "__init__.py").is_file()
    assert (target / "ppft" / "common.py").is_file()
    code = ("import pp, math; assert pp.__file__.startswith(%r), pp.__file__\n"
            "with pp.Server(2) as s:\n"
            "    print(sum(j() for j in [s.submit(math.sqrt, (x * x,)) for x in range(10)]))"
            % str(target))
    env = dict(os.environ, PYTHONPATH=str(target))
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "45.0"
