# Two entry points (see README): `make demo` and `make test`. Each creates .venv on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint typecheck pytest protos bench clean

$(BIN)/skyinfer: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: $(BIN)/skyinfer
	$(BIN)/skyinfer replay scenarios/demo.yaml --out out/demo

lint: $(BIN)/skyinfer
	$(BIN)/ruff check .

typecheck: $(BIN)/skyinfer
	$(BIN)/mypy

pytest: $(BIN)/skyinfer
	$(BIN)/python -m pytest -q

test: lint typecheck pytest

protos: $(BIN)/skyinfer
	$(BIN)/python -m skyinfer.protos

bench: $(BIN)/skyinfer
	$(BIN)/python benchmarks/bench_contacts.py
	$(BIN)/python benchmarks/bench_isl.py
	$(BIN)/python benchmarks/bench_planner.py --case all
	$(BIN)/python benchmarks/bench_service.py
	$(BIN)/python benchmarks/bench_agent.py
	$(BIN)/python benchmarks/bench_replay.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
