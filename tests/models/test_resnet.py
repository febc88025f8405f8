"""Multi-exit ResNets: shapes for every depth, parameter counts, config round trip, inference path."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tfkd.models import build_backbone  # noqa: E402
from tfkd.models.resnet import RESNET_SPECS, MultiExitResNet  # noqa: E402

SMALL = 0.0625  # stage widths 4, 8, 16, 32


def images(shape=(2, 32, 32, 3), seed=0):
    return np.random.default_rng(seed).uniform(0, 255, shape).astype(np.float32)


def count_without_exits(model):
    in_heads = {id(v) for head in model.exit_heads for v in head.trainable_weights}
    return sum(int(np.prod(v.shape)) for v in model.trainable_weights if id(v) not in in_heads)


@pytest.mark.parametrize("depth", sorted(RESNET_SPECS))
def test_every_depth_outputs_and_features(depth):
    model = MultiExitResNet(depth=depth, num_classes=5, width=SMALL, input_shape=(32, 32, 3))
    logits, feats = model(images(), training=False, return_features=True)
    assert sorted(logits) == ["exit_1", "exit_2", "exit_3", "final"]
    for k, v in logits.items():
        assert tuple(v.shape) == (2, 5), k
        assert keras.backend.standardize_dtype(v.dtype) == "float32"
        assert np.all(np.isfinite(np.asarray(v)))
    expansion = 1 if RESNET_SPECS[depth][0] == "basic" else 4
    for i, (size, width) in enumerate(zip((32, 16, 8, 4), (4, 8, 16, 32))):
        assert tuple(feats[f"stage_{i + 1}"].shape) == (2, size, size, width * expansion), (depth, i)
    for k in (1, 2, 3):  # exit features reach the final stage's shape
        assert tuple(feats[f"exit_{k}_features"].shape) == (2, 4, 4, 32 * expansion)
    assert model.stage_channels == tuple(w * expansion for w in (4, 8, 16, 32))
    # Number of residual blocks per stage follows the spec.
    assert [len(s) for s in model.stages] == list(RESNET_SPECS[depth][1])


def test_imagenet_stem_downsamples_by_four():
    model = MultiExitResNet(depth=18, num_classes=3, width=SMALL, input_shape=(64, 64, 3), stem="imagenet")
    logits, feats = model(images((2, 64, 64, 3)), training=False, return_features=True)
    assert [feats[f"stage_{i}"].shape[1] for i in range(1, 5)] == [16, 8, 4, 2]
    assert tuple(logits["final"].shape) == (2, 3)
    cifar = MultiExitResNet(depth=18, num_classes=3, width=SMALL, input_shape=(64, 64, 3))
    _, cfeats = cifar(images((2, 64, 64, 3)), training=False, return_features=True)
    assert cfeats["stage_1"].shape[1] == 64


@pytest.mark.parametrize("depth, expected", [(18, 11_220_132), (50, 23_705_252)])
def test_cifar_parameter_counts(depth, expected):
    # kuangliu/pytorch-cifar ResNet18 for 100 classes: 11,220,132 parameters (BN gamma/beta included).
    model = MultiExitResNet(depth=depth, num_classes=100, width=1.0, input_shape=(32, 32, 3)).ensure_built()
    assert count_without_exits(model) == expected
    head_params = sum(int(np.prod(v.shape)) for h in model.exit_heads for v in h.trainable_weights)
    assert head_params > 0
    assert count_without_exits(model) + head_params == sum(int(np.prod(v.shape)) for v in model.trainable_weights)


def test_get_config_round_trip():
    model = MultiExitResNet(depth=18, num_classes=7, width=SMALL, input_shape=(32, 32, 3),
                            mean=(10.0, 20.0, 30.0), std=(50.0, 60.0, 70.0), exits=(1, 3)).ensure_built()
    x = images(seed=1)
    model(x, training=True)  # moves the BatchNorm statistics away from their initial values
    config = model.get_config()
    assert config["depth"] == 18 and config["num_classes"] == 7 and tuple(config["exits"]) == (1, 3)
    clone = MultiExitResNet.from_config(config).ensure_built()
    assert isinstance(clone, MultiExitResNet)
    assert clone.mean == model.mean and clone.std == model.std and clone.width == model.width
    assert len(clone.weights) == len(model.weights)
    assert [tuple(v.shape) for v in clone.weights] == [tuple(v.shape) for v in model.weights]
    before = clone(x, training=False)["final"]
    ref = model(x, training=False)
    assert not np.allclose(before, ref["final"])  # fresh initialisation differs
    clone.set_weights(model.get_weights())
    out = clone(x, training=False)
    assert sorted(out) == sorted(ref) == ["exit_1", "exit_3", "final"]
    for k in ref:
        np.testing.assert_array_equal(np.asarray(out[k]), np.asarray(ref[k]))
    # Also through Keras' registered serialisation.
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
    assert isinstance(again, MultiExitResNet) and again.exits == (1, 3)


def test_predict_final_is_the_final_head_in_inference_mode():
    model = MultiExitResNet(depth=18, num_classes=4, width=SMALL, input_shape=(32, 32, 3)).ensure_built()
    x = images(seed=2)
    model(x, training=True)  # non-trivial moving statistics so training/inference differ
    inference = np.asarray(model(x, training=False)["final"])
    np.testing.assert_allclose(np.asarray(model.predict_final(x)), inference, rtol=1e-5, atol=1e-5)
    training = np.asarray(model(x, training=True)["final"])
    assert not np.allclose(training, inference, atol=1e-4)


def test_normalisation_is_inside_the_model():
    mean, std = (100.0, 110.0, 120.0), (50.0, 55.0, 60.0)
    model = MultiExitResNet(depth=18, num_classes=2, width=SMALL, mean=mean, std=std)
    x = images(seed=3)
    np.testing.assert_allclose(np.asarray(model.normalize(x)), (x - np.array(mean)) / np.array(std),
                               rtol=1e-5, atol=1e-5)


def test_exit_selection():
    model = MultiExitResNet(depth=18, num_classes=6, width=SMALL, exits=(2, 3))
    logits, feats = model(images(), training=False, return_features=True)
    assert sorted(logits) == ["exit_2", "exit_3", "final"]
    assert "exit_1_features" not in feats and "exit_2_features" in feats
    assert model.output_names_ordered == ["exit_2", "exit_3", "final"]
    assert len(model.exit_heads) == 2
    none = MultiExitResNet(depth=18, num_classes=6, width=SMALL, exits=())
    assert sorted(none(images(), training=False)) == ["final"]


@pytest.mark.parametrize("kwargs, match", [
    (dict(depth=20), "depth"),
    (dict(depth=0), "depth"),
    (dict(stem="vit"), "stem"),
    (dict(exits=(0, 4)), "exits"),
    (dict(exit_style="residual"), "exit_style"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MultiExitResNet(**kwargs)


def test_registry_builds_each_depth():
    for depth in RESNET_SPECS:
        model = build_backbone(f"resnet{depth}", num_classes=3, width=SMALL)
        assert isinstance(model, MultiExitResNet) and model.depth == depth


def test_conv_chain_exits_are_the_plain_reading_of_the_bottleneck_exit():
    """exit_style='conv_chain': 1x1 to the second stage's width, one 3x3 stride-2 conv per later
    stage, 1x1 to the last stage's width (no shortcut), features of the last stage's shape; the
    choice survives get_config, so a rebuilt network has the same exits."""
    from tfkd.models.layers import ConvChainExit

    model = MultiExitResNet(depth=18, num_classes=5, width=SMALL, input_shape=(28, 28, 1), exit_style="conv_chain")
    logits, feats = model(images((2, 28, 28, 1)), training=False, return_features=True)
    assert all(isinstance(head, ConvChainExit) for head in model.exit_heads)
    for k, head in zip((1, 2, 3), model.exit_heads):
        assert [c.kernel_size[0] for c in head.convs] == [1] + [3] * (4 - k) + [1]
        assert [c.strides[0] for c in head.convs] == [1] + [2] * (4 - k) + [1]
        assert [c.filters for c in head.convs] == [8] * (5 - k) + [32]
        assert tuple(feats[f"exit_{k}_features"].shape) == tuple(feats["stage_4"].shape)  # 28 -> 4 px, 32 wide
        assert tuple(logits[f"exit_{k}"].shape) == (2, 5)
    # Thinner than the residual bottleneck exits, with the same backbone.
    default = MultiExitResNet(depth=18, num_classes=5, width=SMALL, input_shape=(28, 28, 1)).ensure_built()
    assert count_without_exits(model) == count_without_exits(default)
    assert len(model.trainable_weights) != len(default.trainable_weights)
    clone = MultiExitResNet.from_config(model.get_config()).ensure_built()
    assert clone.exit_style == "conv_chain" and default.exit_style == "bottleneck"
    clone.set_weights(model.get_weights())
    x = images((2, 28, 28, 1), seed=4)
    np.testing.assert_array_equal(np.asarray(clone(x, training=False)["exit_1"]),
                                  np.asarray(model(x, training=False)["exit_1"]))


def test_config_exit_head_reaches_the_network():
    from tfkd import config as config_lib
    from tfkd import train

    config = config_lib.base_config()
    config.model.width = SMALL
    config.model.exit_head = "conv_chain"
    network, kwargs = train.build_network(config, _FakeData())
    assert kwargs["exit_style"] == "conv_chain" and network.exit_style == "conv_chain"
    config.model.exit_head = "auto"
    network, kwargs = train.build_network(config, _FakeData())
    assert "exit_style" not in kwargs and network.exit_style == "bottleneck"


class _FakeData:
    num_classes, image_shape, mean, std = 3, (28, 28, 1), (0.5,), (0.5,)
