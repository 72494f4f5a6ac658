# Two commands do all the set-up on a fresh machine (only Python 3.10+ needed):
#   make run    # the embedded default: digits + tiny pre-trained ViT, no download
#   make test   # the test suite
# Both create .venv and install the package into it the first time.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-all lint install mutants

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/python run.py $(ARGS)

# one worker per core (at most 4), tests that share a reference run on the same worker
PYTEST_PARALLEL := -n auto --maxprocesses=4 --dist loadgroup

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_PARALLEL)

test-all: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_PARALLEL) --runslow

lint: $(STAMP)
	$(BIN)/ruff check .

# The mutation check (tests/mutants.yaml): every listed breakage must make its tests fail. Slow (minutes).
mutants: $(STAMP)
	$(BIN)/python scripts/mutants.py
