# Two commands for a fresh clone: `make demo` and `make test`. Both go through `make install`.
PYTHON ?= python3
VENV   ?= .venv
# The tested torch. Override to bring your own, e.g. `make install TORCH=torch==2.5.1`.
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test clean

install: $(STAMP)

# Re-run only when the package's requirements change. torch is named with its pin in the same
# pip call, so the resolver can never swap in a newer (CUDA) build.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "$(TORCH)" -e ".[test]"
	@echo "$(TORCH)" > $(STAMP)

demo: install
	$(BIN)/mobilenet tables

test: install
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs
