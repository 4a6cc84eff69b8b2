"""Regression: a worker imported the whole pp package (pp/__init__ and
everything the client side needs: _server, _executor, _ship, ...) before
its first job, doubling the start of every worker and of the fork server
(W5 about 50 ms instead of about 25 on a quiet 2-core VM).

The worker bootstrap registers a bare `pp` package whose __getattr__ runs
the real __init__ on first use (_worker.lazy_package); `from . import
_core` inside the worker asked that package for `_core` and so ran it.
Before the fix every job saw pp._server in sys.modules."""
import pytest

import pp

CLIENT_SIDE = ("pp._server", "pp._executor", "pp._ship", "pp._slurm",
               "pp._progress")


def loaded_pp_modules():
    import sys
    return sorted(m for m in sys.modules if m == "pp" or m.startswith("pp."))


def uses_the_package():
    import pp
    return pp.Template.__name__, pp.__version__ == pp._version.__version__


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_worker_starts_without_the_client_side_of_pp(start_method):
    with pp.Server(1, start_method=start_method) as s:
        mods = s.submit(loaded_pp_modules)()
        assert "pp._worker" in mods and "pp._core" in mods
        assert not set(CLIENT_SIDE) & set(mods), mods
        # the package is still whole for a job that uses it
        assert s.submit(uses_the_package)() == ("Template", True)
