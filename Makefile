# Two entry points for a fresh machine (see README): `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.cxrkit-installed

.PHONY: demo test install lock clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[all,test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/cxr demo --out cxr-demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Re-pin constraints.txt from the current venv (run after changing dependencies).
lock:
	{ echo "# Exact versions CI installs (make install uses -c constraints.txt). Regenerate with: make lock"; $(BIN)/python -m pip freeze --exclude-editable | grep -v "^cxrkit"; } > constraints.txt

clean:
	rm -rf $(VENV) cxr-demo .pytest_cache
