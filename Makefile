# Two commands matter (README, quick start): `make demo` and `make test`. Both set up .venv first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
DATA   ?= $(or $(EVFBENCH_DATA),$(HOME)/.cache/evfbench/data)
RUNS   ?= runs/demo
STAMP  := $(VENV)/.evfbench-installed

.PHONY: setup demo test test-fast bench clean

setup: $(STAMP)

# torch first (pinned), then sam2 built against it without an isolated build (which would
# download a multi-GB torch), then evfbench with its extras; all through constraints.txt.
# A fresh venv holds about 6 GiB (torch's CUDA build alone is 5.5 GB): check the disk first,
# so a full disk is a clear message instead of pip's OSError halfway through.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -c 'import shutil, sys; free = shutil.disk_usage("$(abspath $(VENV)/..)").free / 2**30; \
	sys.exit(f"make setup: {free:.1f} GiB free on the disk of $(abspath $(VENV)/..); the venv needs about 7 GiB. " \
	         "Free some space, or point VENV= at a larger disk.") if free < 7 else None'
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt torch torchvision setuptools wheel
	SAM2_BUILD_CUDA=0 $(PIP) install -q -c constraints.txt --no-build-isolation 'sam2>=1.0'
	$(PIP) install -q -c constraints.txt -e '.[all,dev]'
	touch $@

demo: setup
	$(PY) -m evfbench.demo --data-root $(DATA) --runs $(RUNS)

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

bench: setup
	$(PY) benchmarks/bench_embedding_cache.py
	$(PY) benchmarks/bench_train_step.py
	$(PY) benchmarks/bench_processes.py
	$(PY) benchmarks/bench_feature_store.py

clean:
	rm -rf $(VENV) runs build *.egg-info
