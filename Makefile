# reelhouse: `make serve` runs the server, `make test` runs the whole suite.
# Both set everything up on a fresh machine (a .venv; Debian's ffmpeg and chromium for the tests).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
PYTEST_ARGS ?=

.PHONY: serve test lint typecheck bench clean system-deps

# a target whose recipe fails is deleted: a half-made .venv is made again next time
.DELETE_ON_ERROR:

# Python 3.11+ with venv's ensurepip (Debian ships it apart: python3-venv, installed with
# apt-get when root on Debian and missing)
$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
	  echo "reelhouse needs Python 3.11 or newer; $(PYTHON) is $$($(PYTHON) -V 2>&1)" \
	       "(name another: make $(MAKECMDGOALS) PYTHON=python3.11)" >&2; exit 1; }
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's python3-venv"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null; \
	  else \
	    echo "$(PYTHON) -m venv needs ensurepip: apt-get install python3-venv" >&2; exit 1; \
	  fi; }
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); exit 1; }
	$(BIN)/pip install --quiet --upgrade pip || { rm -rf $(VENV); exit 1; }

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(STAMP)

serve: $(STAMP)
	$(BIN)/reelhouse serve $(SERVE_ARGS)

# ffmpeg/ffprobe check what we write and Chromium publishes from a real page in the tests;
# installed with apt-get when root on Debian and missing
system-deps:
	@missing=""; \
	command -v ffprobe >/dev/null 2>&1 && command -v ffmpeg >/dev/null 2>&1 || missing="ffmpeg"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "missing:$$missing (install with apt-get install$$missing)" >&2; \
	    case "$$missing" in *ffmpeg*) exit 1;; esac; \
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
	$(BIN)/python bench/writer.py
	$(BIN)/python bench/upload.py
	$(BIN)/python bench/recordings.py
	$(BIN)/python bench/mix.py
	$(BIN)/python bench/whip.py
	$(BIN)/python bench/member.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
