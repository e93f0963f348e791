# The two commands of the README: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# pinned: an unpinned torch may pull a multi-GB CUDA build
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# the main job: the doctor on a bundled broken script (exit status 1 = it found the error, as it should)
demo: $(STAMP)
	$(BIN)/gradwise doctor examples/doctor/broken_graph_break_vq_argmin.py --steps 3 || [ $$? -eq 1 ]

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check gradwise tests examples benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/ops.py

clean:
	rm -rf $(VENV) build dist .pytest_cache
