# The two commands: `make demo` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# torch first and pinned: a CPU wheel of 2.13.0 lies on our machines' disk; elsewhere pip fetches it.
TORCH  := torch==2.13.0
STUDY  ?= configs/studies/default.yaml
OUT    ?= runs/default

.PHONY: demo test test-slow test-ci-slow lint install install-test bench clean

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

# The slow tests CI runs after `make test` (~5 CPU-minutes): resuming a killed study, requeue after preemption, the
# two-node rendezvous, two-process FSDP2. The rest (~35 CPU-minutes: the Slurm executor, compiled training and
# decoding, the GPU stage path, a folder study, the probe on held-out renders, the rules' calibration, bootstrap
# coverage, Chromium) run with `make test-slow`; docs/results/slow-tests.md times them.
CI_SLOW := tests/test_study.py::test_killed_study_resumes_to_the_same_results \
	tests/test_executors.py::test_a_preempted_job_is_requeued_and_finishes \
	tests/test_executors.py::test_a_two_node_run_meets_through_the_c10d_rendezvous \
	tests/test_distributed.py::test_two_process_fsdp2_gradient_and_exact_resume

test-ci-slow: install-test
	$(PY) -m pytest -q -m slow $(CI_SLOW)

bench: install
	$(PY) benchmarks/render.py
	$(PY) benchmarks/latent_cache.py

clean:
	rm -rf $(VENV) runs build *.egg-info
