"""Shared fixtures: small real-data configs and subsets (Fashion-MNIST from the Debian package)."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# One intra-op thread per process (also inherited by the bin/ subprocesses): `make test` runs two
# pytest workers on two cores, and the tests' tiny graphs gain nothing from a second thread per op
# while two workers' thread pools fight for the cores (measured: 261 s -> 229 s on the methods,
# Python-API, visualize and export tests). Set TF_NUM_INTRAOP_THREADS yourself to override.
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")

import ml_collections  # noqa: E402
import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Subprocess tests are guarded against hangs, not timed: on a busy shared machine a step can take
# many times longer than idle, and a slow machine must not fail a test (CI's own limit is 90 min).
SUBPROCESS_TIMEOUT = float(os.environ.get("TFKD_TEST_SUBPROCESS_TIMEOUT", 3600))


def tiny_config(method="self_distill", epochs=2, train_examples=2500, eval_examples=400, **train_overrides):
    """The default experiment shrunk to seconds: a narrow ResNet10 (ResNet18's stages and exits
    with one block per stage: half the backbone's blocks to trace and run) on a class-balanced subset."""
    from tfkd.config import base_config

    c = base_config()
    c.method = method
    c.data.name = "fashion_mnist"
    c.data.max_train_examples = train_examples
    c.data.max_eval_examples = eval_examples
    c.model.arch = "resnet10"
    c.model.width = 0.125
    c.train.epochs = epochs
    c.train.batch_size = 64
    c.train.learning_rate = 0.1
    c.train.lr_schedule = "constant"
    c.train.weight_decay = 5e-4
    c.train.verbose = 0
    for k, v in train_overrides.items():
        c.train[k] = v
    return c


@pytest.fixture
def tiny():
    return tiny_config


@pytest.fixture(scope="session")
def fmnist_small():
    """A 2500-example train / 400 val / 400 test Fashion-MNIST subset (loaded once)."""
    from tfkd import data

    return data.load_dataset(tiny_config().data)


# Files in order of measured cost, heaviest first (per-file sums of `pytest --durations=0`,
# 2026-12-06). `make test` hands whole files to its two workers (--dist loadfile) in collection
# order (--no-loadscope-reorder: xdist would otherwise order files by their number of tests), so
# starting the long files first keeps one worker from finishing a long file alone at the end.
# A file not listed runs after these, in pytest's order.
HEAVIEST_FIRST = (
    "tests/methods/test_distributed.py", "tests/methods/test_metadistiller.py", "tests/test_train.py",
    "tests/models/test_zoo.py", "tests/test_export.py", "tests/methods/test_teacher_student.py",
    "tests/methods/test_multi_exit.py", "tests/test_train_fewshot.py", "tests/models/test_byo.py",
    "tests/test_visualize.py", "tests/test_python_api.py", "tests/test_multi_worker.py", "tests/test_tuning.py",
    "tests/test_runs.py", "tests/test_precision.py", "tests/models/test_resnet.py", "tests/test_readme.py",
    "tests/test_benchmark_requests.py", "tests/test_cli.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {path: i for i, path in enumerate(HEAVIEST_FIRST)}
    items.sort(key=lambda item: rank.get(os.path.relpath(str(item.path), REPO), len(rank)))  # stable
