# Two commands do everything on a fresh machine:
#   make demo   - install (CPU), prepare SmolLM2-135M + MovieLens-100K offline, run SFT -> DPO -> evaluation
#   make test   - install (CPU) and run the test suite
# Other targets: make install | models | data-tiny | smoke | test-all | verify | clean
PY     ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PYTHON := $(BIN)/python
STAMP  := $(VENV)/.installed-cpu
export HF_HUB_OFFLINE=1
export TOKENIZERS_PARALLELISM=false

.PHONY: install models data-tiny smoke demo test test-all verify clean

$(STAMP): requirements-core.txt requirements-cpu.txt requirements-assets.txt pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
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

# seed 42 and 5 ranking candidates = configs/cpu_demo.yaml's seed and data.ranking_candidates: the same
# dataset run_experiment.py builds from data.source
data/generated/ml100k/ranking_test.jsonl: | $(STAMP)
	$(PYTHON) data/prepare_movielens.py --source recbole:ml-100k --out data/generated/ml100k --seed 42 \
		--ranking-candidates 5 --force

models: models/tiny-llama/config.json
data-tiny: data/generated/tiny/train.jsonl

# The whole pipeline on the tiny random model: proves the plumbing in about a minute.
smoke: models/tiny-llama/config.json data/generated/tiny/train.jsonl
	$(PYTHON) run_experiment.py --config configs/tiny.yaml output_dir=runs/smoke --overwrite

demo: models/smollm2-135m-instruct/config.json data/generated/ml100k/ranking_test.jsonl
	$(PYTHON) verify_setup.py --config configs/cpu_demo.yaml
	$(PYTHON) run_experiment.py --config configs/cpu_demo.yaml

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
