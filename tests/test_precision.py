"""Mixed precision and XLA as config fields: shapes and dtypes on the CPU path; tf.distribute
strategy names and the TPU error."""
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfkd import train
from tfkd.distribute import get_strategy
from tfkd.errors import ConfigError


def test_mixed_precision_run_keeps_float32_logits_and_exports(tmp_path):
    from tests.conftest import tiny_config

    config = tiny_config(method="self_distill", epochs=1, train_examples=600, eval_examples=200)
    config.train.mixed_precision = True
    workdir = str(tmp_path / "mixed")
    metrics = train.run(config, workdir)
    assert keras.mixed_precision.global_policy().name == "float32"  # restored after the run
    # No GPU here: bfloat16, not float16 (emulated on CPUs, 2.8x slower), and the run records it.
    with open(os.path.join(workdir, "run_info.json")) as f:
        assert json.load(f)[-1]["dtype_policy"] == "mixed_bfloat16"
    assert all(np.isfinite(v) for v in metrics["test"].values())
    from tfkd.export import restore_network

    network, _, _, _ = restore_network(workdir)
    loaded = tf.saved_model.load(os.path.join(workdir, "export"))
    out = loaded.signatures["logits"](images=tf.zeros((2, 28, 28, 1), tf.uint8))["logits"]
    assert out.dtype == tf.float32 and out.shape == (2, 10)
    # Under either mixed policy (float16 on GPUs), layers compute in 16 bits while the logits stay float32.
    from tfkd.models import build_backbone

    for policy, compute in (("mixed_float16", "float16"), ("mixed_bfloat16", "bfloat16")):
        keras.mixed_precision.set_global_policy(policy)
        try:
            net = build_backbone("resnet18", num_classes=3, width=0.0625, input_shape=(28, 28, 1))
            logits, feats = net(np.zeros((2, 28, 28, 1), np.float32), training=False, return_features=True)
            assert feats["stage_1"].dtype == compute
            assert all(v.dtype == "float32" for v in logits.values())
        finally:
            keras.mixed_precision.set_global_policy("float32")


def test_xla_jit_compile_run_trains(tmp_path):
    from tests.conftest import tiny_config

    config = tiny_config(method="dsn", epochs=1, train_examples=600, eval_examples=200)
    config.train.jit_compile = True
    metrics = train.run(config, str(tmp_path / "xla"))
    assert np.isfinite(metrics["val"]["loss"]) and 0.0 <= metrics["test"]["final_accuracy"] <= 1.0


def test_strategy_names_and_tpu_error():
    assert get_strategy("default").num_replicas_in_sync == 1
    assert get_strategy("one_device").num_replicas_in_sync == 1
    with pytest.raises(ConfigError, match="--strategy=tpu: no TPU reachable"):
        get_strategy("tpu")
    with pytest.raises(ConfigError, match="expected one of"):
        get_strategy("nope")
    os.environ.pop("TF_CONFIG", None)
    with pytest.raises(ConfigError, match="TF_CONFIG"):
        get_strategy("multi_worker")
