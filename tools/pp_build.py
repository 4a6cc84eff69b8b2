"""pp's build backend (PEP 517) and build tool, with nothing but the standard
library and a C compiler: `pip install --no-build-isolation .` works offline,
without setuptools or the `wheel` package. pyproject.toml names it
(build-backend = "pp_build", backend-path = ["tools"]).

It builds, from src/ and python/pp:
  * the extension pp._core (src/core + src/ext, linked with libuv and
    OpenSSL), compiled with the interpreter's headers, and pp._wcore (the
    worker's part of those sources only, WCORE_SOURCES, without OpenSSL:
    what workers and the fork server import);
  * the ppserver daemon (src/core + src/ppserver), shipped as pp/bin/ppserver
    and run by the `ppserver` console script and `python -m pp.server`;
  * a wheel holding those, the package's Python files, the man page
    (share/man/man1/ppserver.1) and its dist-info with RECORD;
  * an sdist holding every file the build needs (and the docs).
The version is python/pp/_version.py's, the only definition.

As a tool (the Makefile uses it):
    python3 tools/pp_build.py ext        build pp/_core*.so, pp/_wcore*.so in python/pp
    python3 tools/pp_build.py sdist DIR  write DIR/pp-VERSION.tar.gz
    python3 tools/pp_build.py wheel DIR  write DIR/pp-VERSION-TAG.whl
PP_SANITIZE=address,undefined builds the extension under those sanitizers;
CC picks the compiler (default cc)."""
import base64
import glob
import hashlib
import io
import os
import re
import shlex
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = "pp"

# what the sdist carries: enough to build, plus the docs and recipes
SDIST_GLOBS = [
    "pyproject.toml", "LICENSE", "README.md", "Makefile", "tools/pp_build.py",
    "tools/layers.py", "python/pp/*.py", "python/pp/py.typed", "python/ppft/*.py", "src/core/*.[ch]", "src/ext/*.[ch]",
    "src/ppserver/*.[ch]", "docs/*.md", "docs/ppserver.1", "deploy/*",
    "deploy/*/*", "examples/*.py",
]

CFLAGS = ["-std=c11", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-Werror"]
LIBS = ["-luv", "-lssl", "-lcrypto", "-lpthread"]
# pp._wcore: the worker loop, the fork server and the buffer helpers, with
# the core files they use; no OpenSSL (src/ext/wmodule.c says why)
WCORE_SOURCES = ["src/ext/wmodule.c", "src/ext/worker.c", "src/ext/lease.c",
                 "src/ext/forkserver.c", "src/core/frame.c", "src/core/buf.c",
                 "src/core/shm.c", "src/core/template.c", "src/core/fdpass.c",
                 "src/core/log.c"]
WCORE_LIBS = ["-luv", "-lpthread"]


# ---- facts about the project ----------------------------------------------

def version():
    """The version string in python/pp/_version.py."""
    with open(os.path.join(ROOT, "python", "pp", "_version.py")) as f:
        m = re.search(r'^__version__ = "([^"]+)"$', f.read(), re.M)
    if not m:
        raise RuntimeError("python/pp/_version.py has no __version__ line")
    return m.group(1)


def project():
    """pyproject.toml's [project] table."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]


def metadata():
    """The core metadata (METADATA / PKG-INFO) text, from pyproject.toml."""
    p = project()
    lines = ["Metadata-Version: 2.1", "Name: %s" % p["name"],
             "Version: %s" % version(), "Summary: %s" % p["description"]]
    lic = p.get("license", {})
    lines.append("License: %s" % (lic.get("text") if isinstance(lic, dict) else lic))
    for c in p.get("classifiers", []):
        lines.append("Classifier: %s" % c)
    lines.append("Requires-Python: %s" % p["requires-python"])
    for dep in p.get("dependencies", []):
        lines.append("Requires-Dist: %s" % dep)
    for extra, deps in sorted(p.get("optional-dependencies", {}).items()):
        lines.append("Provides-Extra: %s" % extra)
        for dep in deps:
            lines.append('Requires-Dist: %s; extra == "%s"' % (dep, extra))
    readme = p.get("readme")
    body = ""
    if readme:
        lines.append("Description-Content-Type: text/markdown")
        with open(os.path.join(ROOT, readme), encoding="utf-8") as f:
            body = "\n" + f.read()
    return "\n".join(lines) + "\n" + body


def wheel_tag():
    """This interpreter's wheel tag, e.g. cp311-cp311-linux_x86_64."""
    impl = "cp" if sys.implementation.name == "cpython" else sys.implementation.name[:2]
    py = "%s%d%d" % (impl, sys.version_info[0], sys.version_info[1])
    abi = py + getattr(sys, "abiflags", "")
    plat = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    return "%s-%s-%s" % (py, abi, plat)


# ---- compiling --------------------------------------------------------------

def _run_all(cmds):
    """Run the compiler commands, as many at once as there are cores; raise
    RuntimeError with the compiler's output on the first failure."""
    todo, running = list(cmds), []
    jobs = max(1, os.cpu_count() or 1)
    while todo or running:
        while todo and len(running) < jobs:
            cmd = todo.pop(0)
            running.append((cmd, subprocess.Popen(cmd, stdout=subprocess.PIPE,
                                                  stderr=subprocess.STDOUT)))
        cmd, proc = running.pop(0)
        out = proc.communicate()[0]
        if proc.returncode != 0:
            for _, p in running:
                p.wait()
            raise RuntimeError("%s failed:\n%s" % (" ".join(map(shlex.quote, cmd)),
                                                   out.decode(errors="replace")))


def _compile_link(sources, out, flags, link_flags, tmp, libs=None):
    """Compile sources (paths relative to ROOT) into objects under tmp, then
    link them into out with libs (default LIBS). flags and link_flags are
    extra compiler options."""
    cc = shlex.split(os.environ.get("CC", "cc"))
    objs, cmds = [], []
    for i, src in enumerate(sources):
        obj = os.path.join(tmp, "%d-%s.o" % (i, os.path.basename(src)[:-2]))
        objs.append(obj)
        cmds.append(cc + CFLAGS + flags + ["-c", os.path.join(ROOT, src), "-o", obj])
    _run_all(cmds)
    _run_all([cc + link_flags + objs + ["-o", out] + (LIBS if libs is None else libs)])


def _sources(*dirs):
    return sorted(os.path.relpath(p, ROOT) for d in dirs
                  for p in glob.glob(os.path.join(ROOT, d, "*.c")))


def build_ext(outdir):
    """Build the extensions pp._core and pp._wcore into outdir; returns
    their paths."""
    san = os.environ.get("PP_SANITIZE")
    flags = ["-O2", "-g", sysconfig.get_config_var("CCSHARED") or "-fPIC",
             "-I" + os.path.join(ROOT, "src", "core"),
             "-I" + sysconfig.get_paths()["include"]]
    link = ["-shared"]
    if san:
        flags += ["-fsanitize=" + san, "-fno-omit-frame-pointer", "-O1"]
        link += ["-fsanitize=" + san]
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    core = [s for s in _sources("src/core", "src/ext") if s != WCORE_SOURCES[0]]
    outs = []
    for name, sources, libs in (("_core", core, LIBS),
                                ("_wcore", WCORE_SOURCES, WCORE_LIBS)):
        out = os.path.join(outdir, name + suffix)
        with tempfile.TemporaryDirectory(prefix="pp-build-") as tmp:
            _compile_link(sources, out + ".tmp", flags, link, tmp, libs)
        os.replace(out + ".tmp", out)
        outs.append(out)
    return outs


def build_ppserver(out):
    """Build the ppserver program at out (as the Makefile's bin/ppserver)."""
    flags = ["-O2", "-I" + os.path.join(ROOT, "src", "core"),
             '-DPP_VERSION="%s"' % version()]
    with tempfile.TemporaryDirectory(prefix="pp-build-") as tmp:
        _compile_link(_sources("src/core", "src/ppserver"), out, flags, [], tmp)
    return out


# ---- archives -----------------------------------------------------------------

def _record_line(arcname, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "%s,sha256=%s,%d" % (arcname, digest.decode(), len(data))


def _dist_info_files():
    """{name: bytes} of the dist-info directory, RECORD excepted."""
    p = project()
    scripts = "".join("%s = %s\n" % kv for kv in p.get("scripts", {}).items())
    with open(os.path.join(ROOT, "LICENSE"), "rb") as f:
        lic = f.read()
    return {
        "METADATA": metadata().encode(),
        "WHEEL": ("Wheel-Version: 1.0\nGenerator: pp_build %s\nRoot-Is-Purelib: false\n"
                  "Tag: %s\n" % (version(), wheel_tag())).encode(),
        "entry_points.txt": ("[console_scripts]\n" + scripts).encode(),
        "top_level.txt": b"pp\n",
        "LICENSE": lic,
    }


def _zip_add(zf, arcname, data, mode=0o644):
    info = zipfile.ZipInfo(arcname, date_time=time.gmtime(
        int(os.environ.get("SOURCE_DATE_EPOCH", "315532800")))[:6])
    info.external_attr = (0o100000 | mode) << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    zf.writestr(info, data)


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    """PEP 517: build the wheel into wheel_directory; returns its file name."""
    ver = version()
    dist_info = "%s-%s.dist-info" % (NAME, ver)
    data_dir = "%s-%s.data" % (NAME, ver)
    name = "%s-%s-%s.whl" % (NAME, ver, wheel_tag())
    os.makedirs(wheel_directory, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pp-wheel-") as tmp:
        files = []  # (arcname, path or bytes, mode)
        for py in sorted(glob.glob(os.path.join(ROOT, "python", "pp", "*.py"))):
            files.append(("pp/" + os.path.basename(py), py, 0o644))
        # PEP 561 marker: pp ships type hints
        files.append(("pp/py.typed", os.path.join(ROOT, "python", "pp", "py.typed"), 0o644))
        # ppft: the drop-in for ppft programs and pathos
        for py in sorted(glob.glob(os.path.join(ROOT, "python", "ppft", "*.py"))):
            files.append(("ppft/" + os.path.basename(py), py, 0o644))
        for ext in build_ext(tmp):
            files.append(("pp/" + os.path.basename(ext), ext, 0o755))
        server = build_ppserver(os.path.join(tmp, "ppserver"))
        files.append(("pp/bin/ppserver", server, 0o755))
        files.append((data_dir + "/data/share/man/man1/ppserver.1",
                      os.path.join(ROOT, "docs", "ppserver.1"), 0o644))
        for fn, data in _dist_info_files().items():
            files.append((dist_info + "/" + fn, data, 0o644))
        record = []
        path = os.path.join(wheel_directory, name)
        with zipfile.ZipFile(path + ".tmp", "w") as zf:
            for arc, src, mode in files:
                if isinstance(src, str):
                    with open(src, "rb") as f:
                        src = f.read()
                _zip_add(zf, arc, src, mode)
                record.append(_record_line(arc, src))
            record.append(dist_info + "/RECORD,,")
            _zip_add(zf, dist_info + "/RECORD", ("\n".join(record) + "\n").encode())
        os.replace(path + ".tmp", path)
    return name


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    """PEP 517: write the dist-info directory (no compiling); returns its name."""
    dist_info = "%s-%s.dist-info" % (NAME, version())
    d = os.path.join(metadata_directory, dist_info)
    os.makedirs(d, exist_ok=True)
    for fn, data in _dist_info_files().items():
        with open(os.path.join(d, fn), "wb") as f:
            f.write(data)
    return dist_info


def sdist_files():
    """The files (relative to ROOT) the sdist holds, sorted."""
    out = set()
    for pattern in SDIST_GLOBS:
        for p in glob.glob(os.path.join(ROOT, pattern)):
            if os.path.isfile(p):
                out.add(os.path.relpath(p, ROOT))
    return sorted(out)


def build_sdist(sdist_directory, config_settings=None):
    """PEP 517: write NAME-VERSION.tar.gz into sdist_directory; returns its name."""
    base = "%s-%s" % (NAME, version())
    name = base + ".tar.gz"
    os.makedirs(sdist_directory, exist_ok=True)
    path = os.path.join(sdist_directory, name)
    mtime = int(os.environ.get("SOURCE_DATE_EPOCH", time.time()))

    def add(tf, arc, data, mode):
        info = tarfile.TarInfo(base + "/" + arc)
        info.size, info.mode, info.mtime = len(data), mode, mtime
        tf.addfile(info, io.BytesIO(data))
    with tarfile.open(path + ".tmp", "w:gz", format=tarfile.PAX_FORMAT) as tf:
        add(tf, "PKG-INFO", metadata().encode(), 0o644)
        for rel in sdist_files():
            full = os.path.join(ROOT, rel)
            with open(full, "rb") as f:
                data = f.read()
            add(tf, rel, data, 0o755 if os.access(full, os.X_OK) else 0o644)
    os.replace(path + ".tmp", path)
    return name


def get_requires_for_build_wheel(config_settings=None):
    """PEP 517: nothing beyond the standard library (and a C compiler)."""
    return []


def get_requires_for_build_sdist(config_settings=None):
    return []


def main(argv):
    """The command line (see the module's docstring). Returns an exit status."""
    if argv[:1] == ["ext"]:
        print("\n".join(build_ext(os.path.join(ROOT, "python", "pp"))))
    elif len(argv) == 2 and argv[0] == "sdist":
        print(os.path.join(argv[1], build_sdist(argv[1])))
    elif len(argv) == 2 and argv[0] == "wheel":
        print(os.path.join(argv[1], build_wheel(argv[1])))
    elif argv[:1] == ["version"]:
        print(version())
    else:
        sys.stderr.write("usage: pp_build.py ext | sdist DIR | wheel DIR | version\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
