# `make serve` and `make test` do all the set-up a fresh machine needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20

.PHONY: serve test setup lint models clean redis

serve: $(VENV)/.serve-installed
	$(BIN)/modelfn serve breast-cancer

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest -q

setup: $(VENV)/.all-installed models node_modules/.installed redis

# redis-server for the prediction cache's tests (the Debian package; a no-op when it is there)
redis:
	scripts/install-redis.sh

node_modules/.installed: package.json
	npm install --no-audit --no-fund --loglevel=error
	touch $@

$(VENV)/.created:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip
	touch $@

# The README's first steps after `make serve` run `modelfn invoke --event` for every provider:
# their adapters cost about 7 s and 120 MB more than the server alone.
$(VENV)/.serve-installed: $(VENV)/.created pyproject.toml
	$(BIN)/python -m pip install -q -e '.[server,image,aws,gcp,azure]'
	touch $@

$(VENV)/.all-installed: $(VENV)/.created pyproject.toml
	$(BIN)/python -m pip install -q -e '.[all,dev,models]'
	touch $@ $(VENV)/.serve-installed

models: $(VENV)/.all-installed
	$(BIN)/python functions/sentence-embed/build.py

lint: $(VENV)/.all-installed
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy

clean:
	rm -rf $(VENV) build cdk.out node_modules
