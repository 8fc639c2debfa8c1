# Two entry points for a fresh machine (see README): `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.cxrkit-installed

.PHONY: demo test install browser lock clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[all,test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/cxr demo --out cxr-demo

test: $(STAMP) browser
	$(BIN)/python -m pytest -q

# The web-page test drives a real headless Chromium (Debian's chromium + chromium-driver, as .ci/run installs).
# Installed here when apt-get can run as root; otherwise it says how and the browser tests are skipped, saying so.
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null || echo "warning: chromium install failed"; \
	else echo "note: no chromium/chromedriver: the browser tests will be skipped; install them with" \
	  "'sudo apt-get install chromium chromium-driver' (Debian/Ubuntu)"; fi

# Re-pin constraints.txt from the current venv (run after changing dependencies).
lock:
	{ echo "# Exact versions CI installs (make install uses -c constraints.txt). Regenerate with: make lock"; $(BIN)/python -m pip freeze --exclude-editable | grep -v "^cxrkit"; } > constraints.txt

clean:
	rm -rf $(VENV) cxr-demo .pytest_cache
