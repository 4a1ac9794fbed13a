# Two commands on a fresh machine with Python 3.11: `make demo` and `make test`.
# Both create .venv and install requirements.txt on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench clean

$(BIN)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

# Train the 96-class line model (generated data, no download) and print where it went.
demo: $(BIN)/.installed
	$(BIN)/python train.py --dataset line

# Lint and format check, then the test suite (a few minutes on 2 CPU cores).
test: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Every benchmark; the data tasks read the copies in ../shared/data (see bench/run.py).
bench: $(BIN)/.installed
	$(BIN)/python bench/run.py line
	$(BIN)/python bench/run.py line-multihead
	$(BIN)/python bench/run.py fruits
	$(BIN)/python bench/run.py mnist
	$(BIN)/python bench/run.py cifar10
	$(BIN)/python bench/run.py occlusion
	$(BIN)/python bench/run.py study

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
