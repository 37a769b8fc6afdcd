# Two commands: `make run` (the app with an embedded default and a demo amoCRM) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 5000
SANDBOX_PORT ?= 8100

.PHONY: run test typecheck bench lint fmt migrate clean image-check

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $(STAMP)

## run: set up and start web + worker/beat + the amoCRM sandbox (SQLite, no Redis needed)
run: $(STAMP)
	PORT=$(PORT) SANDBOX_PORT=$(SANDBOX_PORT) $(BIN)/python scripts/run_demo.py

## test: set up, lint, type-check and run the whole suite against local PostgreSQL and Redis
test: $(STAMP)
	$(BIN)/python scripts/check_services.py
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## typecheck: mypy over the code and the tests (strict for crm_app/amocrm and crm_app/services)
typecheck: $(STAMP)
	$(BIN)/mypy

## bench: performance figures as a table (see README "Benchmarks")
bench: $(STAMP)
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

## image-check: build the image on stand-in bases and run the whole compose stack (root, Docker)
image-check:
	$(PY) scripts/image_check.py $(IMAGE_CHECK_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

fmt: $(STAMP)
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

migrate: $(STAMP)
	$(BIN)/flask --app wsgi db upgrade

clean:
	rm -rf $(VENV) instance .pytest_cache .ruff_cache .mypy_cache
