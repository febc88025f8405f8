"""Bring your own backbone: a keras.applications model split at named layers trains with every
method family and exports without its exits."""
import os

import numpy as np
import pytest
import tensorflow as tf

from tfkd import train
from tfkd.errors import ConfigError
from tfkd.models import build_backbone

STAGES = ("block_2_add", "block_5_add", "block_12_add", "out_relu")
# End to end, the network is cut at its last stage layer: three stages up to block 9 are a third of
# MobileNetV2's layers fewer to trace (the MetaDistiller meta step differentiates through them twice).
SHORT_STAGES = ("block_2_add", "block_5_add", "block_9_add")


def mobilenet(**kw):
    return build_backbone("keras_application", application="MobileNetV2", stage_layers=STAGES, width=0.35,
                          num_classes=10, input_shape=(28, 28, 1), **kw)


def test_stages_exits_and_label_generator_on_a_keras_application():
    from tfkd.models.label_generator import LabelGenerator

    model = mobilenet()
    x = np.random.default_rng(0).uniform(0, 255, (2, 28, 28, 1)).astype(np.float32)
    logits, feats = model(x, training=False, return_features=True)
    assert sorted(logits) == ["exit_1", "exit_2", "exit_3", "final"]  # exits after every stage but the last
    assert [feats[f"stage_{k}"].shape[-1] for k in (1, 2, 3, 4)] == list(model.stage_channels) == [8, 16, 32, 1280]
    targets = LabelGenerator(model.stage_channels, 10, 8, exits=model.exits)(
        [feats[f"stage_{k}"] for k in (1, 2, 3, 4)])
    assert sorted(targets) == ["exit_1", "exit_2", "exit_3"]


def test_bad_stage_layers_and_application_are_named():
    with pytest.raises(ConfigError, match=r"\['nope'\] are not layers of"):
        build_backbone("keras_application", application="MobileNetV2", stage_layers=("block_2_add", "nope"),
                       num_classes=3, input_shape=(32, 32, 3))
    with pytest.raises(ConfigError, match="config.model.application='NotANet'"):
        build_backbone("keras_application", application="NotANet", stage_layers=("a", "b"), num_classes=3)
    with pytest.raises(ConfigError, match="name at least two layers"):
        build_backbone("keras_application", application="MobileNetV2", stage_layers=("out_relu",), num_classes=3)


@pytest.mark.parametrize("method", ["self_distill", "metadistiller"])
def test_methods_train_a_keras_application_end_to_end(method, tmp_path):
    from tests.conftest import tiny_config

    # Two steps of 64 and a small evaluation: tracing the (meta) step of a MobileNetV2 is the cost.
    config = tiny_config(method=method, epochs=1, train_examples=160, eval_examples=64)
    config.model.arch = "keras_application"
    config.model.application = "MobileNetV2"
    config.model.stage_layers = SHORT_STAGES
    config.model.width = 0.35
    config.metadistiller.meta_every_epochs = 1  # the first epoch is a meta epoch: lookahead runs
    workdir = str(tmp_path / method)
    metrics = train.run(config, workdir)
    assert set(metrics["test"]) >= {"final_accuracy", "exit_1_accuracy", "ensemble_accuracy"}
    loaded = tf.saved_model.load(os.path.join(workdir, "export"))
    images = np.zeros((2, 28, 28, 1), np.uint8)
    assert loaded.signatures["serving_default"](images=tf.constant(images))["probabilities"].shape == (2, 10)
