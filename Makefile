# callrec: `make demo` runs the policy's cases on the embedded default; `make test` runs
# lint, types and the tests. Both create .venv and install what they need on a fresh machine.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Debian packages the tests need: mosquitto (a real MQTT broker), libsndfile (prompt audio),
# openssl (TLS test certificates).
DEBS := mosquitto libsndfile1 openssl

.PHONY: demo test lint types pytest prompts bench clean debs

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

demo: $(STAMP)
	$(BIN)/callrec demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

types: $(STAMP)
	$(BIN)/mypy --strict

pytest: $(STAMP) debs
	$(BIN)/pytest -q

test: lint types pytest

prompts: $(STAMP)
	@command -v espeak-ng >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null; }
	$(BIN)/python -m prompts.generate

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis callrec-demo-* callrec-replay-*
