# The two commands: `make demo` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# torch first and pinned: a CPU wheel of 2.13.0 lies on our machines' disk; elsewhere pip fetches it.
TORCH  := torch==2.13.0
STUDY  ?= configs/studies/default.yaml
OUT    ?= runs/default

.PHONY: demo test test-slow lint install install-test bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

install: $(VENV)/bin/python
	$(PIP) install --quiet $(TORCH)
	$(PIP) install --quiet -e .

install-test: $(VENV)/bin/python
	$(PIP) install --quiet $(TORCH)
	$(PIP) install --quiet -e ".[test]"

demo: install
	$(VENV)/bin/synthscale study $(STUDY) --out $(OUT)

# ruff's format and lint settings live in pyproject.toml
lint: install-test
	$(VENV)/bin/ruff format --check synthscale tests benchmarks
	$(VENV)/bin/ruff check synthscale tests benchmarks

test: lint
	$(PY) -m pytest -q

test-slow: install-test
	$(PY) -m pytest -q -m slow

bench: install
	$(PY) benchmarks/render.py
	$(PY) benchmarks/latent_cache.py

clean:
	rm -rf $(VENV) runs build *.egg-info
