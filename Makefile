# callrec: `make demo` runs the policy's cases on the embedded default; `make test` runs
# lint, types and the tests. Both create .venv and install what they need on a fresh machine.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Debian packages the tests need: mosquitto (a real MQTT broker), libsndfile (prompt audio),
# openssl (TLS test certificates), postgresql (the ledger's second backend), systemd
# (systemd-analyze verify/security of deploy/systemd/), docker-compose (1.29: validates
# asterisk-conf/docker-compose.yml; no Docker engine is needed for that).
DEBS := mosquitto libsndfile1 openssl postgresql systemd docker-compose
# The PostgreSQL the tests use: CALLREC_TEST_PG_URL, or this role on the local cluster.
PG_TEST_ROLE := callrec_test
PG_TEST_PASSWORD := callrec_test

.PHONY: demo test lint types pytest prompts bench clean debs pg wheel

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# Installs missing Debian packages when running as root (CI, fresh machines); otherwise
# says what is missing and lets the tests that need them skip with a reason.
debs:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing$$missing"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing) >/dev/null; \
	  else echo "missing Debian packages:$$missing (tests that need them will skip)"; fi; \
	fi

# A PostgreSQL server for the conformance suite. With CALLREC_TEST_PG_URL set, or a server
# already answering on 127.0.0.1:5432, nothing is done here beyond making sure (as root) that
# the test role exists. As root it starts Debian's cluster (installed but stopped after a
# reboot or on a fresh container) and creates the role; otherwise the PostgreSQL half of the
# storage tests skips with a reason.
pg: debs
	@if [ -n "$$CALLREC_TEST_PG_URL" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then exit 0; fi; \
	if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then \
	  version=$$(ls /etc/postgresql 2>/dev/null | sort -n | tail -1); \
	  if [ -z "$$version" ]; then echo "no PostgreSQL cluster in /etc/postgresql"; exit 0; fi; \
	  pg_ctlcluster --skip-systemctl-redirect $$version main start || exit 0; \
	  for i in 1 2 3 4 5 6 7 8 9 10; do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.5; done; \
	fi; \
	runuser -u postgres -- psql -qtA -c "SELECT 1 FROM pg_roles WHERE rolname = '$(PG_TEST_ROLE)'" \
	  | grep -q 1 || runuser -u postgres -- psql -q -c \
	  "CREATE ROLE $(PG_TEST_ROLE) LOGIN CREATEDB PASSWORD '$(PG_TEST_PASSWORD)'"

demo: $(STAMP)
	$(BIN)/callrec demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

types: $(STAMP)
	$(BIN)/mypy --strict

pytest: $(STAMP) debs pg
	$(BIN)/pytest -q

test: lint types pytest

prompts: $(STAMP)
	@command -v espeak-ng >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null; }
	$(BIN)/python -m prompts.generate

# The wheel an operator installs (README.md, "Install the package"); built with the venv's
# setuptools, so no download is needed.
wheel: $(STAMP)
	$(BIN)/python -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir dist .

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis callrec-demo-* callrec-replay-* \
	  dist build
