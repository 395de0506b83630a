# The two set-up commands of the README. Both create .venv on first use and install the pinned
# dependencies (torch==2.13.0 is the CPU build available offline; keep this pin).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.facemark-installed
TORCH_PIN := torch==2.13.0

.PHONY: demo test install clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PIN)
	$(BIN)/python -m pip install -q -e ".[test,onnx,tensorboard]" $(TORCH_PIN)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/facemark demo

# pytest reads -q from pyproject.toml; a second -q here would hide the "N passed" summary line.
test: $(STAMP)
	$(BIN)/python -m pytest tests

clean:
	rm -rf $(VENV) runs .pytest_cache
