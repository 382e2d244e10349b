# The two commands of the README: `make demo` and `make test`. Both set up .venv/ first.
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(BIN):$(PATH)
export HF_HUB_OFFLINE := 1

.PHONY: setup demo test test-fast lint ui clean

setup: $(STAMP)

# Re-installs only when pyproject.toml changes: a second `make setup` costs nothing.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

demo: setup
	dvc pull --quiet
	dvc repro
	@echo "metrics:" && cat reports/eval/metrics.json
	@echo "figures: reports/figures/  runs: make ui"
	retino compare --out reports/compare

lint: setup
	ruff check .
	ruff format --check .

test: lint
	pytest -q

# the inner loop: everything but the tests marked slow (pipeline, browser, server, DDP, queue)
test-fast: setup
	pytest -q -m 'not slow'

# the MLflow UI on this project's runs, on 127.0.0.1 only; `make ui PORT=5001` for another port
ui: setup
	retino ui --port $(or $(PORT),5000)

clean:
	rm -rf prepared models reports checkpoints mlflow.db mlruns dvc_plots
