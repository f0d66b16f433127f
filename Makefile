# Quick start: `make demo` and `make test` on a fresh clone (README).
PYTHON ?= python3
# torch on a busy 2-core box: spinning OpenMP threads cost ~3x CPU (measured in issue #6 bench)
export OMP_WAIT_POLICY ?= PASSIVE
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow bench clean-venv toy-model

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first: on the project's machines pip takes these two from local disk.
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev,dask,s3]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/cones demo

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

clean-venv:
	rm -rf $(VENV)

# Rebuild the shipped toy model from scratch (issue #3; ~2.5 h on 2 idle cores): the
# segments of assets/toy-model/training_log.json replayed step for step. The first three
# were cut by --max-minutes on a busy machine; --stop-at repeats the cut without the clock.
TOY_OUT ?= toy-model-rebuilt
toy-model: $(STAMP)
	$(VENV)/bin/cones toy train-model --data-stream sequential --out $(TOY_OUT) --steps 2000 --stop-at 1036
	$(VENV)/bin/cones toy train-model --data-stream sequential --out $(TOY_OUT) --steps 2000 --stop-at 1721 --resume
	$(VENV)/bin/cones toy train-model --data-stream sequential --out $(TOY_OUT) --steps 2000 --resume
	$(VENV)/bin/cones toy train-model --data-stream sequential --out $(TOY_OUT) --steps 5000 --resume
