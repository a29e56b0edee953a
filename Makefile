# Baton: two commands on a fresh machine.
#   make run   - the whole console with demo agents (embedded: SQLite, in-process worker)
#   make test  - lint and the whole suite against Postgres, Redis, a Celery worker, Chromium

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PORT   ?= 8000
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

# The suite's services (override to point elsewhere).
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/test
TEST_REDIS_URL    ?= redis://127.0.0.1:6379/15
CHROMIUM          ?= /usr/bin/chromium

.PHONY: run test lint typecheck install bench chromium nodejs clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

# Plain HTTP on this machine only; production runs behind TLS (see the README).
run: install
	BATON_HTTPS=false $(BIN)/python manage.py up --port $(PORT)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	BATON_HTTPS=false $(BIN)/mypy .
	$(BIN)/lint-imports

chromium:
	@test -x $(CHROMIUM) || { \
	  echo "Installing Chromium from Debian for the browser tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# The audit tests run the JavaScript verifier of exports (audit/verify.js) with Node.
nodejs:
	@command -v node >/dev/null || { \
	  echo "Installing Node.js from Debian for the audit verifier's tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs >/dev/null; }

# The suite's and the benchmarks' services, with a throwaway key (plain HTTP on this machine).
SERVICES = DATABASE_URL=$${DATABASE_URL:-$(TEST_DATABASE_URL)} \
	REDIS_URL=$${REDIS_URL:-$(TEST_REDIS_URL)} \
	BATON_HTTPS=false SECRET_KEY=$$(head -c 32 /dev/urandom | base64)

test: install lint chromium nodejs
	$(SERVICES) BATON_AGENT_MODULES=agents.demo,tests.support.agents BATON_CHROMIUM=$(CHROMIUM) \
	EMAIL_BACKEND=django.core.mail.backends.locmem.EmailBackend \
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install
	$(SERVICES) BATON_AGENT_MODULES=agents.demo,bench.support $(BIN)/python -m bench.gateway
	$(SERVICES) BATON_AGENT_MODULES=agents.demo,bench.support $(BIN)/python -m bench.approvals
	$(SERVICES) BATON_AGENT_MODULES=agents.demo,bench.support $(BIN)/python -m bench.live
	$(SERVICES) BATON_AGENT_MODULES=agents.demo,bench.support $(BIN)/python -m bench.killswitch
	$(SERVICES) BATON_AGENT_MODULES=agents.demo,bench.support $(BIN)/python -m bench.audit
	$(SERVICES) BATON_AGENT_MODULES=agents.demo,bench.support $(BIN)/python -m bench.remote_api
	$(SERVICES) BATON_AGENT_MODULES=agents.demo,bench.support $(BIN)/python -m bench.mcp
	$(SERVICES) BATON_AGENT_MODULES=agents.demo,bench.support $(BIN)/python -m bench.remote_longpoll
	$(SERVICES) BATON_AGENT_MODULES=agents.demo,bench.support $(BIN)/python -m bench.pages
	$(SERVICES) BATON_AGENT_MODULES=agents.demo,bench.support $(BIN)/python -m bench.kpis
	$(SERVICES) BATON_AGENT_MODULES=agents.demo,bench.support $(BIN)/python -m bench.alerts
	$(SERVICES) BATON_AGENT_MODULES=agents.demo,bench.support $(BIN)/python -m bench.metrics

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
