"""Run the Parallel Python example programs (examples/*.py) as subprocesses.

Each example is the pp 1.5.7 example ported to Python 3; its printed numbers are
checked against the same computation done serially in this (test) process.
"""

import functools
import hashlib
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
PYDIR = REPO / "python"

# A single example never needs more than a few seconds on 2 cores; the timeout only
# keeps a hung engine from hanging the test run.
TIMEOUT = 120


def run_example(name, *args):
    env = dict(os.environ)
    old = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(PYDIR) + (os.pathsep + old if old else "")
    cmd = [sys.executable, str(EXAMPLES / name)] + [str(a) for a in args]
    proc = subprocess.run(cmd, cwd=str(REPO), env=env, capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, (
        "%s exited with %d\n--- stdout ---\n%s\n--- stderr ---\n%s"
        % (" ".join(cmd), proc.returncode, proc.stdout, proc.stderr))
    return proc.stdout


def autodetected_ncpus():
    counts = {os.cpu_count()}
    if hasattr(os, "sched_getaffinity"):
        counts.add(len(os.sched_getaffinity(0)))
    return counts


STATS_ROW = re.compile(
    r"^\s*(\d+)\s*\|\s*([\d.]+)\s*\|\s*([\d.eE+-]+)\s*\|\s*([\d.eE+-]+)\s*\|\s*local\s*$",
    re.M)


def check_stats(out, njobs=None, max_jobs=None, ncpus=None, idle=False):
    """Check pp's print_stats() table; returns the local row's job count."""
    assert "Job execution statistics:" in out, out
    assert re.search(r"job count \| % of all jobs \| job time sum \| time per job \| job server",
                     out), out
    rows = STATS_ROW.findall(out)
    assert len(rows) == 1, out
    count, percent, time_sum, per_job = rows[0]
    count = int(count)
    assert float(percent) == pytest.approx(100.0), out
    assert float(time_sum) >= 0 and float(per_job) >= 0, out
    if njobs is not None:
        assert count == njobs, out
    if max_jobs is not None:
        assert 1 <= count <= max_jobs, out
    assert re.search(r"^Time elapsed since server creation [\d.eE+-]+\s*$", out, re.M), out
    m = re.search(r"^(\d+) active tasks, (\d+) cores\s*$", out, re.M)
    assert m, out
    if ncpus is not None:
        assert int(m.group(2)) == ncpus, out
    if idle:
        assert int(m.group(1)) == 0, out
    return count


def check_workers(out, ncpus):
    m = re.search(r"^Starting pp with (\d+) workers$", out, re.M)
    assert m, out
    n = int(m.group(1))
    if ncpus is None:
        assert n in autodetected_ncpus(), out
    else:
        assert n == ncpus, out
    return n


# ---------------------------------------------------------------- serial references

@functools.lru_cache(maxsize=None)
def prime_flags(limit):
    flags = bytearray([1]) * limit
    flags[0:2] = b"\0\0"
    for i in range(2, int(limit ** 0.5) + 1):
        if flags[i]:
            flags[i * i::i] = bytearray(len(range(i * i, limit, i)))
    return flags


def sum_primes_below(n):
    flags = prime_flags(100700)
    return sum(i for i in range(2, n) if flags[i])


def part_sum(start, end):
    """Same loop (and so the same float rounding) as the examples' part_sum."""
    sum = 0
    for x in range(start, end):
        if x % 2 == 0:
            sum -= 1.0 / x
        else:
            sum += 1.0 / x
    return sum


@functools.lru_cache(maxsize=None)
def partial_sums(start, end, parts):
    """The list of the examples' job results, in submission order."""
    step = (end - start) // parts + 1
    return [part_sum(start + index * step, min(start + (index + 1) * step, end))
            for index in range(parts)]


def t_log_ad(x, n=20000):
    """auto_diff's PartialSum(n).t_log(AD(x, 1.0)), with AD's float operations
    spelled out in the same order, so the result is bit-identical."""
    y, dy = x - 1, 1.0                      # x - 1
    acc = None
    for i in range(1, n):
        s = float(i % 2 and 1 or -1)
        px, pdx = y ** i, i * y ** (i - 1) * dy   # x**i
        px, pdx = px * s, s * pdx                 # float * AD
        inv = 1 / float(i)
        px, pdx = px * inv, inv * pdx             # AD / i
        if acc is None:                           # sum(): 0 + AD
            acc = (px + 0, pdx)
        else:
            acc = (acc[0] + px, acc[1] + pdx)
    return acc


# ---------------------------------------------------------------- tests

@pytest.mark.parametrize("ncpus", [None, 1, 2])
def test_sum_primes(ncpus):
    out = run_example("sum_primes.py", *(() if ncpus is None else (ncpus,)))
    n = check_workers(out, ncpus)
    assert re.search(r"^Sum of primes below 100 is 1060$", out, re.M), out
    found = [(int(a), int(b)) for a, b in
             re.findall(r"^Sum of primes below (\d+) is (\d+)$", out, re.M)]
    inputs = (100000, 100100, 100200, 100300, 100400, 100500, 100600, 100700)
    assert found == [(100, 1060)] + [(i, sum_primes_below(i)) for i in inputs], out
    assert sum_primes_below(100000) == 454396537
    assert re.search(r"^Time elapsed:  [\d.eE+-]+ s$", out, re.M), out
    check_stats(out, njobs=9, ncpus=n)


def test_reverse_md5():
    out = run_example("reverse_md5.py", 2)
    check_workers(out, 2)
    h = hashlib.md5(b"1829182").hexdigest()
    assert re.search(r"^hash = %s$" % h, out, re.M), out
    m = re.search(r"^Reverse md5 for ([0-9a-f]{32}) is (\d+)$", out, re.M)
    assert m, out
    assert m.group(1) == h
    assert int(m.group(2)) == 1829182
    assert re.search(r"^Time elapsed:  [\d.eE+-]+ s$", out, re.M), out
    # the loop stops at the first hit, so not every job need have run yet
    check_stats(out, max_jobs=128, ncpus=2)


FLOAT = r"(-?[\d.]+(?:e[+-]?\d+)?|nan|inf|-inf)"


def test_dynamic_ncpus():
    out = run_example("dynamic_ncpus.py")
    workers = [int(n) for n in re.findall(r"^Starting  (\d+)  workers$", out, re.M)]
    assert workers == [1, 2, 4, 8, 16, 1], out
    sums = [(float(a), float(b)) for a, b in re.findall(
        r"^Partial sum is %s \| diff = %s$" % (FLOAT, FLOAT), out, re.M)]
    assert len(sums) == 6, out
    # sum([job() for job in jobs]) adds the results in submission order, so the
    # value is exactly the serial one.
    expected = sum(partial_sums(1, 20000000, 64))
    for value, diff in sums:
        assert value == expected, out
        assert diff == math.log(2) - value, out
        assert abs(diff) < 1e-7, out        # alternating series tail ~ 1/(2*end)
    assert len(re.findall(r"^Time elapsed:  [\d.eE+-]+ s$", out, re.M)) == 6, out
    check_stats(out, njobs=6 * 64, ncpus=1)


@pytest.mark.parametrize("ncpus", [None, 2])
def test_callback(ncpus):
    out = run_example("callback.py", *(() if ncpus is None else (ncpus,)))
    n = check_workers(out, ncpus)
    m = re.search(r"^Partial sum is %s \| diff = %s$" % (FLOAT, FLOAT), out, re.M)
    assert m, out
    value, diff = float(m.group(1)), float(m.group(2))
    # callbacks add the results in completion order: equal to the serial sum up
    # to float reassociation (~1e-16); a lost or repeated job is >= ~2e-10 off
    # (the smallest part, the last ones, contributes about step / (2 * start**2)).
    expected = sum(partial_sums(1, 20000000, 128))
    assert abs(value - expected) < 1e-12, (value, expected, out)
    assert diff == math.log(2) - value, out
    assert abs(diff) < 1e-7, out
    # wait() returns after every job and its callback is done
    check_stats(out, njobs=128, ncpus=n, idle=True)


def test_auto_diff():
    out = run_example("auto_diff.py", 2)
    check_workers(out, 2)
    rows = re.findall(r"^t_log\(([\d.]+)\) = (-?[\d.]+), t_log'\(([\d.]+)\) = (-?[\d.]+)$",
                      out, re.M)
    assert len(rows) == 32, out
    for i, (x1, val, x2, dval) in enumerate(rows):
        x = float(i) / 32 + 1
        assert x1 == x2 == "%f" % x, out
        exp_val, exp_dval = t_log_ad(x)
        assert (val, dval) == ("%f" % exp_val, "%f" % exp_dval), (i, out)
        # the series' tail is negligible for x - 1 <= 31/32 and 20000 terms
        assert abs(float(val) - math.log(x)) < 2e-6, (i, out)
        assert abs(float(dval) - 1 / x) < 2e-6, (i, out)
    check_stats(out, njobs=32, ncpus=2)
