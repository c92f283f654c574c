# The two set-up commands of the README: `make demo` and `make test`.
# Both create .venv with Python 3.11 and install the package with its pinned stack.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO   ?= demo_out
DEMO_TRACKS ?= 300

.PHONY: demo test test-fast golden install clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip wheel "setuptools<81"

$(VENV)/.installed: $(BIN)/activate setup.py
	$(BIN)/pip install -e ".[test]"
	$(BIN)/pip check
	touch $@

install: $(VENV)/.installed

demo: install
	bash scripts/demo.sh $(BIN) $(DEMO) $(DEMO_TRACKS)

test: install
	$(BIN)/python -m pytest -q tests

# the inner loop: every test but those marked slow (processes, kill-and-resume, model conversions)
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow" tests

# regenerate tests/data/golden (scripts/make_golden.py): only when the embeddings are meant to change
golden: install
	$(BIN)/python scripts/make_golden.py

clean:
	rm -rf $(VENV) $(DEMO) *.egg-info
