# The README's commands. Each target builds its own virtual environment from
# nothing, so a newcomer (and CI) needs only Python 3.10+, make and, for the
# tests that need them, root for Debian's prometheus and docker-compose.
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch. GPU users: make setup TORCH="torch==2.13.0 --index-url <your CUDA wheel index>"
TORCH ?= torch==2.13.0
EXTRAS ?= train,broker,bench,dev
PYTEST_ARGS ?=

.PHONY: setup system-deps demo test test-fast lint format bench protos clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

# Debian packages the tests use: the real Prometheus (and promtool) and
# docker-compose (to validate docker-compose.yml). Installed only if missing.
system-deps:
	@missing=""; \
	command -v prometheus >/dev/null || missing="$$missing prometheus"; \
	command -v docker-compose >/dev/null || missing="$$missing docker-compose"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "missing Debian packages:$$missing (the tests that need them are skipped)"; fi; \
	fi

demo: setup
	$(VENV)/bin/streamcell demo

test: setup system-deps
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not slow and not kafka and not ray and not prometheus" $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache streamcell-demo
