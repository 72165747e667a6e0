# The two commands of the README: `make demo` and `make test`. Both build .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARCH := $(shell uname -m)
ifeq ($(ARCH),x86_64)
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
else
TORCH_PINS := torch==2.9.1 torchvision==0.24.1
endif
PYTEST_ARGS ?=

.PHONY: venv test test-apptainer demo lint clean

venv: $(STAMP)

# torch first, then sam2 built against it without build isolation (its setup.py imports torch;
# SAM2_BUILD_CUDA=0 skips the CUDA extension where there is no nvcc), then the package itself.
$(STAMP): setup.cfg pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q $(TORCH_PINS)
	SAM2_BUILD_CUDA=0 $(BIN)/pip install -q --no-build-isolation sam2==1.1.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# The `apptainer` tests build the real image in two layers, cached outside the checkout
# (tests/real_apptainer.py): the dependencies (CUDA torch wheels, 30+ minutes on 2 cores) only when
# they change, our package on top (minutes) when the code does. `test-apptainer` runs just those.
test: $(STAMP)
	$(BIN)/ruff check medsam2_hpc tests benchmarks train.py train_2d.py train_3d.py inference_3d.py baselines
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-apptainer: $(STAMP)
	$(BIN)/python -m pytest -q -m apptainer $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/medsam2-hpc demo

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info
