# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
# The CPU build lies on local disk here; on a GPU box override, e.g. TORCH_SPEC="torch==2.13.0".
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-fast demo protos bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e '.[test]'
	# The reference's whisper log-mel for the speech tokenizer; its pinned triton is not needed.
	$(BIN)/python -m pip install -q --no-deps openai-whisper==20250625
	# Reference implementation for parity tests only: it pins ancient deps, so no deps.
	$(BIN)/python -m pip install -q --no-deps cosyvoice2-eu==0.2.8
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -ra -m "not slow"

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

protos: $(STAMP)
	$(BIN)/python scripts/generate_protos.py

clean:
	rm -rf $(VENV) out .pytest_cache
