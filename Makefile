# The two commands: `make demo` and `make test`. Both set everything up themselves (idempotently:
# heavy outputs are cached under ~/.cache/grok-serve, so only a machine's first run pays for them).
SHELL := /bin/bash
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: all setup python protos tools test lint demo clean

all: test

python:
	@bash hack/setup-python.sh

protos: python
	@bash hack/gen-protos.sh

tools:
	@bash hack/devcluster/src/grok_devcluster/build_tools.sh >/dev/null

setup: python protos tools

lint: python
	$(PY) -m ruff check .

test: setup lint
	$(PY) -m pytest $(PYTEST_ARGS)

demo: setup
	$(PY) hack/demo.py $(if $(KEEP),--keep,)

clean:
	rm -rf .venv .pytest_cache .ruff_cache .hypothesis
	@echo "cached builds stay in ~/.cache/grok-serve (remove that folder to rebuild from scratch)"
