# Set-up and everyday commands. `make demo` and `make test` each create the environment
# when it is missing (torch pinned first: a looser spec would pull CUDA wheels), then fetch
# Fashion-MNIST. Both are idempotent and quick once done.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH := torch==2.13.0

.PHONY: demo test lint format data env clean-cache

env: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

data: $(STAMP)
	bash scripts/get-data.sh $(PY)

demo: data
	$(VENV)/bin/sslpoison run configs/cpu-badencoder-fmnist.yaml --out runs/demo-badencoder

test: data
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .
