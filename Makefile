# reelhouse: `make serve` runs the server, `make test` runs the whole suite.
# Both set everything up on a fresh machine (a .venv, and Debian's ffmpeg for the tests).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
PYTEST_ARGS ?=

.PHONY: serve test lint typecheck bench clean system-deps

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(STAMP)

serve: $(STAMP)
	$(BIN)/reelhouse serve $(SERVE_ARGS)

# ffmpeg/ffprobe check what we write; installed with apt-get when root on Debian and missing
system-deps:
	@if ! command -v ffprobe >/dev/null 2>&1 || ! command -v ffmpeg >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's ffmpeg"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null; \
	  else \
	    echo "ffprobe is missing: install ffmpeg (e.g. apt-get install ffmpeg)" >&2; exit 1; \
	  fi; \
	fi

lint: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(TEST_STAMP)
	$(BIN)/mypy

test: $(TEST_STAMP) system-deps lint typecheck
	$(BIN)/pytest $(PYTEST_ARGS)

bench: $(TEST_STAMP) system-deps  # upload.py starts SeaweedFS, a test extra
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/upload.py
	$(BIN)/python bench/mix.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
