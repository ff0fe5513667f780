# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
export RAY_AUTH_MODE ?= disabled
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1

.PHONY: venv demo test test-all lint bench clean chromium

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

RV := $(VENV)/bin/reelvec
DEMO := REELVEC__DATA_DIR=./data/demo REELVEC__INDEX__PATH=./data/demo/index

# The main job end to end on the embedded default (local models, Qdrant Edge on ./data/demo/index).
demo: venv
	$(RV) models list
	$(DEMO) $(RV) ingest samples/clips
	$(DEMO) $(RV) stats
	$(DEMO) $(RV) search "cooking pasta with tomato sauce" -k 5
	$(DEMO) $(RV) search "rocket launch to the moon" -k 5 --since 2026-11-01
	$(DEMO) $(RV) search --like soccer_01 -k 5
	$(DEMO) $(RV) search --video samples/clips/ocean_02.mp4 -k 3
	$(DEMO) $(RV) recommend --positive space_01,space_02 --negative cooking_01 -k 5
	@echo "--- a silent, captionless clip found by its on-screen text (see the modalities column):"
	$(DEMO) $(RV) search "baking a loaf of sourdough bread at home" -k 3 --moments
	$(DEMO) $(RV) dups
	@echo "--- the browser UI (search, item pages, duplicates, eval report): start the server, then open the URL:"
	@echo "    $(DEMO) $(RV) serve   # then open http://127.0.0.1:8000/ui"

# tests/test_ui.py drives Debian's chromium headless (Playwright, no browser download); installed when missing.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; }

test: venv chromium
	$(PY) -m pytest -q

test-all: venv chromium
	$(PY) -m pytest -q -m "slow or not slow"

lint: venv
	$(VENV)/bin/ruff check .

bench: venv
	$(PY) bench/pipeline.py

clean:
	rm -rf data .pytest_cache
