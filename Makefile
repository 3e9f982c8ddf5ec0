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

# BYOL on scikit-learn's bundled handwritten digits, then k-NN against a random-init baseline (about 4 minutes on 2 CPU cores, once installed)
demo: install
	$(BIN)/python docs/examples/digits_folder.py $(DEMO)/digits
	rm -rf $(DEMO)/run
	$(BIN)/sslkit pretrain byol $(DEMO)/digits/train --out $(DEMO)/run --arch resnet18 --img-size 32 \
		--epochs 6 --batch-size 128 --projector-hidden-dim 1024 --predictor-hidden-dim 1024 --optimizer adamw
	$(BIN)/sslkit probe knn timm:resnet18 --train $(DEMO)/digits/train --val $(DEMO)/digits/val --img-size 32 \
		--json $(DEMO)/knn-random.json --quiet
	$(BIN)/sslkit probe knn $(DEMO)/run --train $(DEMO)/digits/train --val $(DEMO)/digits/val \
		--json $(DEMO)/knn-byol.json --quiet
	$(BIN)/python docs/examples/compare.py $(DEMO)/knn-random.json $(DEMO)/knn-byol.json

clean:
	rm -rf $(VENV) $(DEMO) build *.egg-info .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
