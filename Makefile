# FaceInsight: `make run` sets up and runs the whole pipeline; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Stages call `python`: make it the venv's.
export PATH := $(abspath $(BIN)):$(PATH)
export PYTHONHASHSEED := 0

.PHONY: setup run test test-cluster test-fast lint ui constraints clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

setup: $(STAMP)  ## create .venv and install the pinned environment

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=23.2"
	# torch first, pinned: an unpinned resolve can pull a multi-GB CUDA build
	$(BIN)/pip install --quiet -c constraints.txt "torch==2.13.0"
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	$(BIN)/pip check
	touch $(STAMP)

run: $(STAMP)  ## run the DVC pipeline on params.yaml (a no-op when nothing changed)
	# its Ray stages share one local instance, started by the first that needs it (pipelines/ray_session.py)
	$(BIN)/python -m pipelines.ray_session $(BIN)/dvc repro

test: $(STAMP)  ## lint, then the whole test suite on two workers, as CI runs it
	$(BIN)/ruff check model pipelines stages tests benchmarks
	# two workers, a test module at a time on one: the longest modules first, the whole-DAG tests (~8 min each) one on
	# each worker, the rest beside and after them (tests/conftest.py)
	$(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder

test-cluster: $(STAMP)  ## only the dvc repro of the Ray stages on a 2-node Ray cluster with everything on S3 (~5 min; also in make test)
	$(BIN)/python -m pytest tests/test_dvc_cluster.py

test-fast: $(STAMP)  ## the test suite without the slow end-to-end tests
	$(BIN)/python -m pytest -m "not slow"

lint: $(STAMP)  ## ruff
	$(BIN)/ruff check model pipelines stages tests benchmarks

ui: $(STAMP)  ## the MLflow UI over the default local store, on http://127.0.0.1:5000 (no job runner: the pipeline runs no MLflow jobs)
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

constraints:  ## re-resolve the newest versions the bounds in pyproject.toml allow into constraints.txt
	rm -rf /tmp/faceinsight-constraints && $(PYTHON) -m venv /tmp/faceinsight-constraints
	/tmp/faceinsight-constraints/bin/pip install --quiet "torch==2.13.0"
	/tmp/faceinsight-constraints/bin/pip install --quiet -e ".[dev]"
	/tmp/faceinsight-constraints/bin/pip check
	(echo "# Exact versions \`make\` installs with (pip install -c constraints.txt). Refresh: make constraints"; \
	 /tmp/faceinsight-constraints/bin/pip freeze --exclude-editable | sed 's/+cpu$$//' | sort -f) > constraints.txt

clean:  ## remove caches (keeps .venv and DVC outputs)
	rm -rf .pytest_cache .ruff_cache build *.egg-info
