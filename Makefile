# The two commands of the README: `make demo` and `make test` (the whole suite); `make test-fast` is the suite
# without the tests marked slow, real_data, browser or postgres (pyproject.toml), for use while working.
# All set up .venv first if needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PHANTOM := data/phantom
SEG := runs/segmentation
DEMO_MODELS := demo_unet demo_fpn demo_unet3plus
DEMO_ENSEMBLES := seg_soft seg_weighted

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
	@for m in $(DEMO_MODELS); do \
		echo "== $$m: train (skipped when finished), predict val and test with TTA, score"; \
		test -f $(SEG)/$$m-f0/summary.json || $(PY) train.py -c configs/segmentation/$$m.yaml || exit 1; \
		$(PY) inference.py --ckpt $(SEG)/$$m-f0/best.pt --split val --tta --save-probs || exit 1; \
		$(PY) inference.py --ckpt $(SEG)/$$m-f0/best.pt --tta --save-probs -o submissions/$$m.csv || exit 1; \
		$(PY) tools/score.py submissions/$$m.csv --gt $(PHANTOM)/handbones/test_gt --run $(SEG)/$$m-f0 --quiet || exit 1; \
	done
	@for e in $(DEMO_ENSEMBLES); do \
		echo "== $$e: fit on the validation predictions, fuse the cached test predictions, score"; \
		$(PY) tools/fit_ensemble.py configs/ensembles/$$e.yaml || exit 1; \
		$(PY) inference.py --ensemble configs/ensembles/$$e.yaml --from-cache -o submissions/$$e.csv || exit 1; \
		$(PY) tools/score.py submissions/$$e.csv --gt $(PHANTOM)/handbones/test_gt --run $(SEG)/$$e --quiet || exit 1; \
	done
	$(PY) tools/validate_submission.py $(foreach m,$(DEMO_MODELS) $(DEMO_ENSEMBLES),submissions/$(m).csv) --images $(PHANTOM)/handbones/test
	$(PY) tools/leaderboard.py runs/ --task segmentation --html reports/leaderboard.html

clean-demo:
	rm -rf $(PHANTOM) $(SEG)/demo_* $(SEG)/seg_soft $(SEG)/seg_weighted submissions/demo_* submissions/seg_* reports/leaderboard.html
