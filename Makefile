# Quick start: `make demo` and `make test` on a fresh clone (README).
PYTHON ?= python3
# torch on a busy 2-core box: spinning OpenMP threads cost ~3x CPU (measured with `cones bench fanout`)
export OMP_WAIT_POLICY ?= PASSIVE
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow bench clean-venv toy-model toy-model-first

# The Makefile too: the extras installed are listed here (ray: the fast Ray test, tests/flows/test_ray_runner.py).
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first: on the project's machines pip takes these two from local disk.
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev,dask,s3,ray]'  # dev brings the baselines extra (peft) and moto
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/cones demo

# One pytest worker per core, at most 4 (each starts its own Prefect test server); --dist loadfile keeps a
# file's tests on one worker, so its module fixtures (the crash tests' world, the small demo) are built once.
test: $(STAMP)
	$(PY) -m pytest -q -n auto --maxprocesses 4 --dist loadfile

SLOW_STAMP := $(VENV)/.installed-slow
$(SLOW_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[dev,dask,s3,ray,slow]'
	touch $(SLOW_STAMP)

# The report's browser test drives Debian's Chromium (tests/flows/headless_chromium.py).
test-slow: $(SLOW_STAMP)
	command -v chromium >/dev/null || (apt-get update -q && apt-get install -y -q chromium)
	$(PY) -m pytest -q -m slow

clean-venv:
	rm -rf $(VENV)

# Rebuild the shipped toy model from scratch (docs/research/toy-model.md): the eight segments of
# cones_tasks/toyworld/shipped/toy-model/training_log.json replayed (tests/cones_tasks/toyworld/test_toy_model.py
# checks these lines against the log). The first two ran on an H100 (batch 128, reading order;
# the second was cut by the clock, which --stop-at repeats), the rest on 2 CPU cores (batch 64,
# left-to-right): 62 min to 7,230, then 32 min with half the scenes pairs to 8,750 (the two-object
# model, kept in checkpoints/toy-model-8750), then four segments (22, 50, 36 and 54 min) with half the
# scenes crowds of three and four objects at 3.0–3.5 px, on a cosine run to its end at 16,750
# ("Three and four objects"). Same data, noise and schedule on any
# device; bit-equal weights only on the device that trained them (docs/research/gpu-h100.md).
TOY_OUT ?= toy-model-rebuilt
TOY_DEVICE ?= cuda
toy-model: $(STAMP)
	$(VENV)/bin/cones toy train-model --out $(TOY_OUT) --steps 1773 --batch-size 128 --object-order reading --device $(TOY_DEVICE) --workers 5 --crowd-radius 2.6,3.2
	$(VENV)/bin/cones toy train-model --out $(TOY_OUT) --steps 4600 --stop-at 4522 --batch-size 128 --object-order reading --device $(TOY_DEVICE) --workers 5 --resume --crowd-radius 2.6,3.2
	$(VENV)/bin/cones toy train-model --out $(TOY_OUT) --steps 7400 --stop-at 7230 --batch-size 64 --object-order left-to-right --resume --crowd-radius 2.6,3.2
	$(VENV)/bin/cones toy train-model --out $(TOY_OUT) --steps 13500 --stop-at 8750 --batch-size 64 --object-order left-to-right --object-counts '{"1": 0.4, "2": 0.5, "3": 0.07, "4": 0.03}' --resume --crowd-radius 2.6,3.2
	$(VENV)/bin/cones toy train-model --out $(TOY_OUT) --steps 16750 --stop-at 9988 --batch-size 64 --object-order left-to-right --object-counts 1:0.2,2:0.3,3:0.25,4:0.25 --crowd-radius 3.0,3.5 --resume
	$(VENV)/bin/cones toy train-model --out $(TOY_OUT) --steps 16750 --stop-at 12750 --batch-size 64 --object-order left-to-right --object-counts 1:0.2,2:0.3,3:0.25,4:0.25 --crowd-radius 3.0,3.5 --resume
	$(VENV)/bin/cones toy train-model --out $(TOY_OUT) --steps 16750 --stop-at 14500 --batch-size 64 --object-order left-to-right --object-counts 1:0.2,2:0.3,3:0.25,4:0.25 --crowd-radius 3.0,3.5 --resume
	$(VENV)/bin/cones toy train-model --out $(TOY_OUT) --steps 16750 --batch-size 64 --object-order left-to-right --object-counts 1:0.2,2:0.3,3:0.25,4:0.25 --crowd-radius 3.0,3.5 --resume

# The first shipped model (5,000 steps on CPU, random order; git history before 2026-11-26's
# second lease): four segments on the sequential stream, ~2.5 h on 2 idle cores.
toy-model-first: $(STAMP)
	$(VENV)/bin/cones toy train-model --data-stream sequential --out $(TOY_OUT) --steps 2000 --stop-at 1036 --crowd-radius 2.6,3.2
	$(VENV)/bin/cones toy train-model --data-stream sequential --out $(TOY_OUT) --steps 2000 --stop-at 1721 --resume --crowd-radius 2.6,3.2
	$(VENV)/bin/cones toy train-model --data-stream sequential --out $(TOY_OUT) --steps 2000 --resume --crowd-radius 2.6,3.2
	$(VENV)/bin/cones toy train-model --data-stream sequential --out $(TOY_OUT) --steps 5000 --resume --crowd-radius 2.6,3.2
