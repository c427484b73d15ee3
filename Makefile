VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint format bench clean

$(STAMP): requirements.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

## run: web server on 127.0.0.1:8000 (WEB_PORT), a Celery worker and the scheduler, in the foreground (Ctrl-C stops all)
run: $(STAMP)
	$(PY) manage.py migrate --noinput
	$(PY) manage.py collectstatic --noinput -v0
	rm -rf $(or $(HOOKRELAY_DATA_DIR),.data)/metrics  # samples of processes that are gone: every process restarts here
	PATH="$(abspath $(VENV))/bin:$$PATH" exec $(PY) -m config.supervise

test: export SECRET_KEY ?= insecure-key-for-tests-only
## test: the whole suite (PostgreSQL and Redis when DATABASE_URL / REDIS_URL are set)
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) manage.py spectacular --validate --fail-on-warn --file $(VENV)/openapi.yml
	$(VENV)/bin/pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

## bench: the benchmarks on a real local stack: PostgreSQL and Redis on 127.0.0.1; BENCH_ARGS="--quick" etc.
bench: $(STAMP)
	$(PY) -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .data db.sqlite3
