# `make demo` and `make test` each set up .venv on first use (about 2 minutes, README), then run.
PYTHON ?= python3
# Where pip takes torch and torchvision from first, when set; e.g. on a machine without a GPU:
#   make demo TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu   (CPU-only wheels, no CUDA libraries)
TORCH_INDEX_URL ?=
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(if $(TORCH_INDEX_URL),$(BIN)/pip install --quiet --index-url $(TORCH_INDEX_URL) torch torchvision)
	$(BIN)/pip install --quiet -e '.[test,demo]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/quorum demo

test: $(VENV)/.installed
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/pytest

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/run.py --all

clean:
	rm -rf $(VENV) models reports preds.csv
