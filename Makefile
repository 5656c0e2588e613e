# Two commands on a fresh clone: `make run` and `make test`. See README.md.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000
FAKE_LLM_PORT ?= 8001

.PHONY: run test test-services test-reliability test-security lint install migrate worker fake-llm clean bench browser-deps \
	bench-dashboard bench-ab bench-floor

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "$(PYTHON) not found; set PYTHON=python3"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

migrate: install
	$(BIN)/python manage.py migrate --noinput

# The embedded default: SQLite, in-process channel layer and agent runs, the bundled LLM
# stand-in unless OPENAI_API_KEY is set. Ctrl-C stops everything.
run: migrate
	@bash scripts/run.sh "$(HOST)" "$(PORT)" "$(FAKE_LLM_PORT)"

# Two pytest-xdist workers (this machine's cores; TEST_WORKERS=0 runs in one process). Tests that
# share a started stack run on one worker (tests/conftest.py). Lists the 15 slowest tests at the end.
TEST_WORKERS ?= 2
test: install browser-deps
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup --durations=15 $(PYTEST_ARGS)

# Faults on purpose (worker SIGKILL, Redis down, PostgreSQL restart, provider faults, fuzzing,
# security). Needs DATABASE_URL + REDIS_URL like CI; the tests start their own private
# PostgreSQL and Redis to break, never the shared ones.
test-reliability: install
	$(BIN)/python -m pytest tests/reliability -p no:cacheprovider $(PYTEST_ARGS)

# Attacks from the outside against a running stack (its own private PostgreSQL and Redis): prints
# attack, tries, admitted (must be 0), audited.
test-security: install
	$(BIN)/python -m pytest tests/security -p no:cacheprovider $(PYTEST_ARGS)

# Benchmarks (services mode on its own database + Redis db; LiteLLM side by side). Results in
# bench/results/. Knobs: BENCH_REQUESTS, BENCH_ROUNDS, BENCH_WS_CONNECTIONS, BENCH_LLM_DELAY_MS, ...
bench: install
	ulimit -n $$(ulimit -Hn) && $(BIN)/python bench/run.py

# The browser tests drive Debian's chromium package through Playwright (pip, dev deps); Playwright's
# own browser download is never used. Installed here when missing (root, or passwordless sudo).
browser-deps:
	@[ -x /usr/bin/chromium ] || { \
	  echo "installing chromium (apt-get) for the browser tests"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo "sudo -n"); \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
	  || echo "could not install chromium: browser tests are skipped (CI, with GATEWAY_REQUIRE_SERVICES=1, fails)"; }

# ruff, then the import contracts in pyproject.toml ([tool.importlinter]: layers, devtools apart).
lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports

worker: install
	$(BIN)/celery -A gateway_project worker -P $${CELERY_POOL:-gevent} -c $${CELERY_CONCURRENCY:-1000} -Q gateway -l INFO

fake-llm: install
	$(BIN)/python manage.py fake_llm --port $(FAKE_LLM_PORT)

clean:
	rm -rf $(VENV) db.sqlite3 test-db.sqlite3 .pytest_cache test-artifacts

# Each override of a library's internals against the library's own path (GATEWAY_PLAIN), same run,
# interleaved rounds (bench/overrides_ab.py; ≈10 minutes). Knobs: BENCH_AB_ROUNDS, BENCH_AB_REQUESTS, ...
bench-ab: install
	ulimit -n $$(ulimit -Hn) && $(BIN)/python bench/overrides_ab.py

# The fixed stack's own parts (the HTTP request, a Celery task, an openai call, the writes), each
# several ways, per message beside the face and LiteLLM, same run (bench/floor.py; ≈3 minutes).
bench-floor: install
	ulimit -n $$(ulimit -Hn) && $(BIN)/python bench/floor.py

# Scale check (PostgreSQL): 1M model-call rows, then each dashboard page's render time.
bench-dashboard: install
	$(BIN)/python bench/dashboard_bench.py $(BENCH_ARGS)
