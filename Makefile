# fashionrec: `make run` (install, run the pipeline, serve) and `make test` (install, run every test).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export PYTHONUNBUFFERED := 1

.PHONY: install browser container-tools images run deployer repro test test-fast lint mlflow-ui clean-outputs

install: $(STAMP)

# Torch first, from this machine's pip cache/disk (pip only: uv and poetry don't see it), then the package
# with the `pipeline` extra (training, registry, DVC, Kubeflow; the base set alone is what serving needs).
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e '.[pipeline,dev,milvus]'
	@touch $(STAMP)

# Debian's chromium for the real-browser tests (Playwright never downloads a browser here).
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; }

# Container images with buildah (no Docker engine, no registry here): a base from Debian's packages made by
# debootstrap and cached in .cache/images/, then the Dockerfiles (deploy/build_images.py; params.yaml `images`).
# `make images` builds the serving image; `make images IMAGES=all` also the pipeline (components') image.
container-tools:
	@command -v buildah >/dev/null && command -v podman >/dev/null && command -v debootstrap >/dev/null || \
	  { apt-get update -qq && apt-get install -y -qq buildah podman debootstrap >/dev/null; }

images: install container-tools
	$(BIN)/python deploy/build_images.py $(if $(IMAGES),--images $(IMAGES))

repro: install
	@test -d .dvc || $(BIN)/dvc init -q
	@# data/additions (new photos, DVC-tracked) starts as two CSV headers; a fresh clone has no DVC cache
	@test -d data/additions || $(BIN)/python -c "from fashionrec.data.versions import new_additions as n; n('data/additions')"
	@# the candidates of this machine's recipe (params.yaml train.recipe/recipes: cuda where a GPU is present)
	$(BIN)/fashionrec recipe >/dev/null
	$(BIN)/dvc repro
	@echo "Outputs: data/ (manifest, subset, validated), reports/ (validation Data Docs, plots), models/, metrics/"

run: repro
	$(BIN)/fashionrec serve    # http://127.0.0.1:8000 (the bundle `dvc repro` just built and activated)

# The deploy controller: keeps bundles/current on the champion (MLflow webhooks + a poll; see README).
deployer: install
	$(BIN)/fashionrec deployer

test: install browser images
	$(BIN)/lint-imports
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m "not slow and not image" -x -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# Benchmarks (not tests): each writes bench/results/<name>.json and prints a table; see docs/BENCHMARKS.md.
# BENCH_ARGS_<NAME> passes flags to one script, e.g. BENCH_ARGS_INDEX="--sizes 5000 100000".
.PHONY: bench
bench: install
	nice -n 10 $(BIN)/python bench/embed.py $(BENCH_ARGS_EMBED)
	nice -n 10 $(BIN)/python bench/index.py $(BENCH_ARGS_INDEX)
	nice -n 10 $(BIN)/python bench/serve.py $(BENCH_ARGS_SERVE)
	nice -n 10 $(BIN)/python bench/pipeline.py $(BENCH_ARGS_PIPELINE)
	nice -n 10 $(BIN)/python bench/promote.py $(BENCH_ARGS_PROMOTE)

# The UI over the project's embedded tracking store (what `fashionrec train` logs to without MLFLOW_TRACKING_URI).
MLFLOW_PORT ?= 5000
mlflow-ui: install
	@mkdir -p mlflow/artifacts
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow server --workers 1 \
	  --backend-store-uri sqlite:///mlflow/mlflow.db --default-artifact-root mlflow/artifacts \
	  --host 127.0.0.1 --port $(MLFLOW_PORT)

# Kubeflow: compile the spec (pipelines/training_pipeline.yaml); run it here with kfp.local (no cluster).
# `make pipeline-local` uses the generated tiny dataset; SOURCE=path/to/clothing-dataset runs the real one.
.PHONY: pipeline-compile pipeline-local
pipeline-compile: install
	$(BIN)/fashionrec kfp compile

pipeline-local: install
	$(BIN)/fashionrec kfp local $(if $(SOURCE),--source $(SOURCE))
