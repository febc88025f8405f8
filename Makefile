# The two commands of the README. Both install what they need first (scripts/setup.sh).
PYTHON ?= python3
WORKDIR ?= runs/fashion_mnist_metadistiller

.PHONY: setup train test bench

setup:
	PYTHON=$(PYTHON) scripts/setup.sh

# Trains the default experiment (multi-exit ResNet18, MetaDistiller, Fashion-MNIST offline).
# Re-running resumes an interrupted run; a finished one is reported and left untouched.
train: setup
	$(PYTHON) bin/train --method=metadistiller --config=configs/fashion_mnist_resnet18.py --workdir=$(WORKDIR)

# --dist loadfile: a test file runs on one worker, so its module-scoped fixtures (trained runs,
# feature files) are built once, not once per worker.
test: setup
	$(PYTHON) -m pytest -n 2 --dist loadfile --durations=15 tests

bench: setup
	$(PYTHON) benchmarks/step_cost.py
