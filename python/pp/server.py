"""`ppserver` and `python -m pp.server`: run the ppserver daemon shipped with
this package (pp/bin/ppserver, a compiled C program; in a source checkout,
the Makefile's bin/ppserver). The process is replaced by the daemon (exec),
so its pid, signals and exit status are ppserver's own. Unless PP_PYTHON is
already set, the workers run this interpreter (it can import this pp)."""
import os
import sys

__all__ = ["main", "ppserver_path"]


def ppserver_path():
    """The ppserver program to run: the one installed in the package, else a
    source checkout's bin/ppserver. Raises FileNotFoundError if neither."""
    here = os.path.dirname(os.path.abspath(__file__))
    for p in (os.path.join(here, "bin", "ppserver"),
              os.path.join(os.path.dirname(os.path.dirname(here)), "bin", "ppserver")):
        if os.access(p, os.X_OK):
            return p
    raise FileNotFoundError(
        "the ppserver program is not built: install pp with pip, or run `make` "
        "in the source tree")


def main(argv=None):
    """Exec ppserver with argv (default: this process's arguments). Returns
    only on failure, with status 2 and a message on stderr."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        prog = ppserver_path()
    except FileNotFoundError as e:
        sys.stderr.write("ppserver: error: %s\n" % e)
        return 2
    os.environ.setdefault("PP_PYTHON", sys.executable)
    os.execv(prog, ["ppserver"] + args)


if __name__ == "__main__":
    sys.exit(main())
