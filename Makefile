# The two commands a new user types: `make quickstart` and `make test`.
# Each creates .venv/ at the repository root on a machine that has only Python (with the ray extra, so the
# --engine ray tests run).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: quickstart test test-slow bench clean-venv browser

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[dev,ray,sam3]'
	touch $(STAMP)

quickstart: $(STAMP)
	$(BIN)/farslip quickstart

test: $(STAMP) browser
	$(BIN)/python -m pytest -q

# Headless Chromium renders the HTML maps in the tests (tests/infer/test_maps.py). Installed from Debian's packages
# when this runs as root on a machine with apt-get; elsewhere the test says it is skipped and why.
browser:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium) \
		|| echo "note: installing chromium failed; the HTML map test will be skipped"; \
	else echo "note: no Chromium here; the HTML map test will be skipped (Debian: apt-get install chromium)"; fi

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

clean-venv:
	rm -rf $(VENV)
