# The two commands of the README: `make demo` and `make test` (the whole suite); `make test-fast` is the suite
# without the tests marked slow, real_data, browser or postgres (pyproject.toml), for use while working.
# All set up .venv first if needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PHANTOM := data/phantom

.PHONY: demo test test-fast lint venv phantom clean-demo

venv: $(STAMP)

# The project itself goes in editable (pyproject.toml): scripts and tests import its packages without sys.path edits.
$(STAMP): requirements.txt pyproject.toml
	@echo "setting up $(VENV): pip install -r requirements.txt (a few minutes the first time; quiet until done)"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

test: venv
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

# One intra-op thread unless OMP_NUM_THREADS says otherwise: the tests' models are tiny, and on a machine shared
# with other work torch's waiting threads spin and multiply the CPU time the selection takes.
test-fast: venv
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -q -m "not slow and not real_data and not browser and not postgres"

lint: venv
	$(VENV)/bin/ruff check .

phantom: venv
	test -f $(PHANTOM)/handbones/meta_data.csv || \
		$(PY) tools/phantom.py --out $(PHANTOM) --n-train 80 --n-test 20 --size 256 --seed 0

demo: phantom
	$(PY) tools/cycle.py configs/cycles/demo.yaml
	$(PY) tools/leaderboard.py runs/cycles/demo/segmentation --html reports/leaderboard.html

clean-demo:
	rm -rf $(PHANTOM) runs/cycles/demo runs/cycles/.demo.lock submissions/demo.csv reports/leaderboard.html
