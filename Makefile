# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test soak lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: pip takes the local CPU build (a looser pin pulls a CUDA build)
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/stfm demo --out demo-output

# 6 test processes on 2 cores: most tests wait on worker subprocesses and brokers, not the CPU
test: $(STAMP)
	sh .ci/ensure-chromium.sh
	$(BIN)/python -m pytest -m "not slow" -q -n 6 --dist worksteal

soak: $(STAMP)
	$(BIN)/python -m pytest -m slow -q -s

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python benchmarks/throughput.py

clean:
	rm -rf demo-output .pytest_cache
