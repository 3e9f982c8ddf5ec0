# sslkit: `make demo` to see it work, `make test` to check it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO   := demo-out

.PHONY: install test demo clean

install: $(STAMP)

# re-installs only when pyproject.toml changes
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q

# BYOL on scikit-learn's bundled handwritten digits with a k-NN against a random-init baseline, then MAE on
# crops of its two bundled photos: reconstructions and attention maps (about 4 minutes on 2 CPU cores, once
# installed; docs/examples/demo.py prints each sslkit command as it runs it)
demo: install
	$(BIN)/python docs/examples/demo.py $(DEMO)

clean:
	rm -rf $(VENV) $(DEMO) build *.egg-info .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
