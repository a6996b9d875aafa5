# The two set-up-and-run commands of README.md: `make demo` and `make test`. Each creates the
# virtual environment .venv on first use and builds the C extension in place. The demo installs
# only requirements.txt; the tests (and fuzz, bench) add requirements-dev.txt to the same .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --disable-pip-version-check
SOURCES := $(wildcard csrc/*.c csrc/*.h greedyprune/*.c) setup.py pyproject.toml
# What the tests and tools need: the built package and the development requirements.
DEV := $(VENV)/.built $(VENV)/.requirements-dev

VLLM_VENV ?= .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python

.PHONY: demo test ctest soak test-vllm fuzz bench readme clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.requirements: requirements.txt | $(PY)
	$(PIP) -r requirements.txt
	touch $@

# The torchvision line removes a torchvision that cannot load next to this torch
# (requirements-dev.txt says why).
$(VENV)/.requirements-dev: requirements-dev.txt $(VENV)/.requirements
	$(PIP) -r requirements-dev.txt
	$(PY) -c "import torchvision" 2>/dev/null || $(PY) -m pip uninstall -q -y torchvision
	touch $@

$(VENV)/.built: $(VENV)/.requirements $(SOURCES)
	$(PIP) --no-build-isolation --no-deps -e .
	touch $@

demo: $(VENV)/.built
	$(PY) -m greedyprune demo

# Two pytest workers, one per core (pytest-xdist; tests/conftest.py says how the tests are
# shared out). OpenMP threads that wait by spinning (the default) would take the core the other
# worker needs: many small multi-threaded calls then ran 20 times slower. Soak tests (minutes
# each) are left to their own run.
test: $(DEV) ctest
	OMP_WAIT_POLICY=passive $(PY) -m pytest -q -n 2 --dist loadgroup -m "not soak"

ctest:
	bash tests/c/run.sh

# The tests marked soak, left out of `make test`: tests/test_soak.py (minutes of use change nothing
# in memory, objects, hooks, threads or answers; SOAK_SECONDS sets each one's length, 30) and the
# torch.compile test with inductor, in a process of its own (its compile workers would count as
# growth in the soak tests' baselines).
soak: $(DEV)
	$(PY) -m pytest -q -m soak tests/test_soak.py
	$(PY) -m pytest -q -m soak --ignore=tests/test_soak.py

# The vLLM plugin on a real engine (vLLM's CPU backend), in its own environment .venv-vllm
# (requirements-vllm.txt; tests_vllm/setup.sh says what it mends). Comparisons with
# greedyprune.hf run in .venv.
$(VLLM_VENV)/.requirements: requirements-vllm.txt tests_vllm/setup.sh tests_vllm/torchvision_schemas.cpp
	bash tests_vllm/setup.sh $(PYTHON) $(VLLM_VENV)
	touch $@

$(VLLM_VENV)/.built: $(VLLM_VENV)/.requirements $(SOURCES)
	$(VLLM_PY) -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
	touch $@

test-vllm: $(DEV) $(VLLM_VENV)/.built
	GREEDYPRUNE_HF_PYTHON=$(PY) $(VLLM_PY) -m pytest -q -o addopts= tests_vllm

# fuzz/run.sh: the C and Python APIs under fuzzing, about 2 minutes (FUZZ_SECONDS=3600 for an hour);
# as root with apt-get it installs clang, libomp-dev and clang's runtime (libFuzzer, sanitizers).
fuzz: $(DEV)
	PYTHON=$(PY) bash fuzz/run.sh

# bench_select exits 1 when a performance target is missed (its JSON says which); the other
# benchmarks and the README update run regardless.
bench: $(DEV)
	-env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(PY) benchmarks/bench_select.py
	$(PY) benchmarks/bench_hf.py
	$(PY) benchmarks/bench_fidelity.py --task scenes
	-$(PY) benchmarks/bench_fidelity.py --task crowds
	$(PY) benchmarks/bench_fidelity.py --summary
	$(PY) benchmarks/update_readme.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) build *.egg-info greedyprune/*.so tests/c/bin
