"""Shared fixtures: small real-data configs and subsets (Fashion-MNIST from the Debian package)."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

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
