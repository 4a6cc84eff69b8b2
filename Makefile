# pp — build, test, run, benchmark.
#   make            build the extension in place (python/pp/_core*.so) and C tests
#   make test       install missing Debian packages, build, run C unit tests and pytest
#   make run        run examples/sum_primes.py on all cores
#   make bench      benchmarks against multiprocessing.Pool and ProcessPoolExecutor
#   make install    install pp (with ppserver and its man page) for the current python3
#   make sdist      dist/pp-VERSION.tar.gz, everything needed to build
#   make SANITIZER=address test   the same under AddressSanitizer + UBSan
#   make valgrind   C unit tests under valgrind (leaks are errors)
#   make fuzz       run every fuzz target (tests/fuzz) for FUZZ_TIME s each
#   make test-fuzz  replay every committed fuzz corpus under ASan/UBSan
PYTHON   ?= python3
CC       ?= cc
SANITIZER ?=
# pp's version: one definition, python/pp/_version.py (ppserver --version)
PP_VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"$$/\1/p' python/pp/_version.py)
CFLAGS_C  = -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -g -O1 -Isrc/core
LIBS      = -luv -lssl -lcrypto -lpthread
CORE_SRC  = $(wildcard src/core/*.c)
CORE_HDR  = $(wildcard src/core/*.h)
EXT_SRC   = $(wildcard src/ext/*.c) $(wildcard src/ext/*.h)
CTESTS    = $(patsubst tests/c/%.c,tests/c/bin/%,$(wildcard tests/c/test_*.c))
CHELPERS  = $(patsubst tests/c/%.c,tests/c/bin/%,$(filter-out tests/c/test_%.c,$(wildcard tests/c/*.c)))
# binaries are rebuilt when SANITIZER changes
MODE_STAMP = bin/.mode-$(STAMP)
# systemd (systemd-analyze verify of deploy/ppserver.service), slurm-wlm and
# munge (the single-node Slurm the sbatch recipe is tested on) are for tests
DEBS      = libuv1-dev libssl-dev python3-dev python3-pytest pkg-config iproute2 \
            systemd slurm-wlm munge python3-numpy

ifeq ($(SANITIZER),address)
  SANFLAGS   = -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
  PP_SANITIZE = address,undefined
  ASAN_LIB  := $(shell $(CC) -print-file-name=libasan.so)
  UBSAN_LIB := $(shell $(CC) -print-file-name=libubsan.so)
  # handle_segv=0: tests crash workers on purpose and check the signal;
  # ASan's quarantine holds freed memory, so RSS checks get more slack.
  PYENV      = LD_PRELOAD="$(ASAN_LIB) $(UBSAN_LIB)" \
               ASAN_OPTIONS=detect_leaks=0:abort_on_error=0:handle_segv=0 \
               UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 PPSERVER_RSS_SLACK_KB=65536
  STAMP      = asan
else
  SANFLAGS   =
  PP_SANITIZE =
  PYENV      =
  STAMP      = plain
endif

# pytest: the interpreter's own, or Debian's python3-pytest on its path
PYTEST = PYTHONPATH=$(CURDIR)/python:/usr/lib/python3/dist-packages $(PYENV) $(PYTHON) -m pytest

.PHONY: all ext ctests deps test test-c test-py test-fuzz fuzz fuzz-build run bench chaos install sdist valgrind clean

PPSERVER_SRC = $(wildcard src/ppserver/*.c)
PPSERVER     = $(if $(PPSERVER_SRC),bin/ppserver)

all: ext ctests $(PPSERVER)

$(MODE_STAMP):
	@mkdir -p bin
	rm -f bin/.mode-*
	touch $@

bin/ppserver: $(PPSERVER_SRC) $(wildcard src/ppserver/*.h) $(CORE_SRC) $(CORE_HDR) $(MODE_STAMP) python/pp/_version.py
	@mkdir -p bin
	$(CC) $(CFLAGS_C) -O2 $(SANFLAGS) -DPP_VERSION='"$(PP_VERSION)"' -o $@ $(PPSERVER_SRC) $(CORE_SRC) $(LIBS)

deps:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi; \
	fi

# the extension is built by the package's build backend (one definition)
python/pp/.built-$(STAMP): $(CORE_SRC) $(CORE_HDR) $(EXT_SRC) tools/pp_build.py
	rm -f python/pp/.built-*
	PP_SANITIZE=$(PP_SANITIZE) $(PYTHON) tools/pp_build.py ext
	touch $@

# pp's own modules compiled ahead (workers are often started with
# PYTHONDONTWRITEBYTECODE=1 in their environment and would otherwise compile
# every pp module they import on each start: about 6 ms of W5). Python checks
# each .pyc against its source, so a stale one is never used.
PY_SRC = $(wildcard python/pp/*.py)
python/pp/__pycache__/.compiled: $(PY_SRC)
	$(PYTHON) -m compileall -q python/pp
	touch $@

ext: python/pp/.built-$(STAMP) python/pp/__pycache__/.compiled

tests/c/bin/%: tests/c/%.c $(CORE_SRC) $(CORE_HDR) $(wildcard tests/c/*.h) $(MODE_STAMP)
	@mkdir -p tests/c/bin
	$(CC) $(CFLAGS_C) $(SANFLAGS) -o $@ $< $(CORE_SRC) $(LIBS)

ctests: $(CTESTS) $(CHELPERS)

test-c: ctests
	$(PYTHON) tools/layers.py
	@set -e; for t in $(CTESTS); do echo "== $$t"; $$t; done

test-py: ext $(PPSERVER)
	$(PYTEST) -q -p no:cacheprovider tests/py

test: deps
	$(MAKE) all
	$(MAKE) test-c
	$(MAKE) test-fuzz
	$(MAKE) test-py

# ---- fuzzing (tests/fuzz, docs in tests/fuzz/README.md) ---------------
# Each target tests/fuzz/fuzz_NAME.c is built twice: with libFuzzer (clang,
# `make fuzz`) and with a plain driver main (any cc, `make test-fuzz`), both
# under ASan and UBSan. The ppserver's sources except main.c are linked in.
FUZZ_TARGETS = $(patsubst tests/fuzz/fuzz_%.c,%,$(wildcard tests/fuzz/fuzz_*.c))
FUZZ_TIME   ?= 60
FUZZ_CC     ?= clang-14
FUZZ_SAN     = -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
FUZZ_CFLAGS  = -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -g -O1 -Isrc/core -Isrc/ppserver -Itests/fuzz \
               $(if $(PP_VERSION),-DPP_VERSION='"$(PP_VERSION)"')
FUZZ_SRC     = $(CORE_SRC) $(filter-out src/ppserver/main.c,$(PPSERVER_SRC))
FUZZ_DEPS    = $(FUZZ_SRC) $(CORE_HDR) $(wildcard src/ppserver/*.h) tests/fuzz/fuzz.h
REPLAY_BINS  = $(patsubst %,tests/fuzz/bin/replay_%,$(FUZZ_TARGETS))
FUZZ_BINS    = $(patsubst %,tests/fuzz/bin/fuzz_%,$(FUZZ_TARGETS))

tests/fuzz/bin/replay_%: tests/fuzz/fuzz_%.c tests/fuzz/driver.c $(FUZZ_DEPS)
	@mkdir -p tests/fuzz/bin
	$(CC) $(FUZZ_CFLAGS) $(FUZZ_SAN) -o $@ $< tests/fuzz/driver.c $(FUZZ_SRC) $(LIBS)

tests/fuzz/bin/fuzz_%: tests/fuzz/fuzz_%.c $(FUZZ_DEPS)
	@mkdir -p tests/fuzz/bin
	$(FUZZ_CC) $(FUZZ_CFLAGS) $(FUZZ_SAN) -fsanitize=fuzzer -o $@ $< $(FUZZ_SRC) $(LIBS)

# every committed corpus file (and every regression input) through its target
test-fuzz: $(REPLAY_BINS)
	@set -e; for t in $(FUZZ_TARGETS); do \
	  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	    tests/fuzz/bin/replay_$$t tests/fuzz/corpus/$$t; done

fuzz-build: $(FUZZ_BINS)

# FUZZ_TIME seconds per target; new inputs go to tests/fuzz/work/NAME (not
# committed), crashes to tests/fuzz/artifacts/. FUZZ_ARGS adds options.
fuzz: $(FUZZ_BINS)
	@set -e; for t in $(FUZZ_TARGETS); do \
	  mkdir -p tests/fuzz/work/$$t tests/fuzz/artifacts; echo "== fuzz $$t ($(FUZZ_TIME) s)"; \
	  tests/fuzz/bin/fuzz_$$t -max_total_time=$(FUZZ_TIME) -print_final_stats=1 \
	    -artifact_prefix=tests/fuzz/artifacts/$$t- $(FUZZ_ARGS) \
	    tests/fuzz/work/$$t tests/fuzz/corpus/$$t; done

# runs the unchanged example, then shows how many jobs each worker process ran
run: deps
	$(MAKE) ext
	PYTHONPATH=$(CURDIR)/python $(PYTHON) -c "import runpy, pp._server as s; \
	runpy.run_path('examples/sum_primes.py', run_name='__main__'); \
	[print('Jobs run by each local worker process (pid: jobs):', x.get_worker_stats()) for x in list(s._servers)]"

bench: ext $(PPSERVER)
	PYTHONPATH=$(CURDIR)/python $(PYTHON) bench/bench.py
	PYTHONPATH=$(CURDIR)/python $(PYTHON) bench/jobcontrol.py
	PYTHONPATH=$(CURDIR)/python:/usr/lib/python3/dist-packages $(PYTHON) bench/data.py
	$(PYTHON) bench/scale.py
	$(PYTHON) bench/guess.py

# a long fault-injection run (bench/chaos.py), outside make test
chaos: ext $(PPSERVER)
	PYTHONPATH=$(CURDIR)/python $(PYTHON) bench/chaos.py

# Offline: no build isolation; the build backend is in the tree
# (tools/pp_build.py) and needs only the standard library and cc.
# PIPFLAGS passes extra pip options (e.g. --target DIR).
install: deps
	unset PYTHONPATH; $(PYTHON) -m pip install --no-build-isolation --no-deps $(PIPFLAGS) .

sdist:
	$(PYTHON) tools/pp_build.py sdist dist

valgrind: ctests
	@set -e; for t in $(CTESTS); do echo "== valgrind $$t"; \
	  valgrind -q --leak-check=full --show-leak-kinds=definite,indirect,possible \
	    --errors-for-leak-kinds=definite,indirect,possible --error-exitcode=99 \
	    --trace-children=no $$t; done

clean:
	rm -rf build dist bin tests/c/bin tests/fuzz/bin python/pp/*.so python/pp/.built-*
