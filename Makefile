# Two commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
# The test/CI path pins the CPU wheel; users may override, e.g. `make demo TORCH_SPEC='torch>=2.2'`.
TORCH_SPEC ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
DEMO_OUT ?= demo_output

.PHONY: demo test install model clean help

help:
	@echo "make demo  - install into .venv and run the demo (phantom -> segmentation -> report)"
	@echo "make test  - install test extras into .venv and run the whole test suite"
	@echo "make model - reproduce the bundled model (phantoms + training, resumable; hours on a CPU)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e .
	touch $@

# dev = phantoms, training, reports (the demo and the tests need them; `nudf segment` does not)
$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)" -e ".[dev]"
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed-dev
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)" -e ".[dev,test]"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed-dev
	$(BIN)/nudf demo --out $(DEMO_OUT)

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest Testing -q

model: $(VENV)/.installed-dev
	bash benchmarks/train_bundled_model.sh runs

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
