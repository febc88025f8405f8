"""The paper's other backbones: stages and exits by Sec. 4.2, parameter counts against published
references, the label generator on each, and exports without exits."""
import numpy as np
import pytest

from tfkd.models import build_backbone
from tfkd.models.label_generator import LabelGenerator

# arch -> (stages, exits, narrow width for fast tests)
ZOO = {
    "vgg19": (5, (2, 3, 4), 0.0625),
    "wrn16_1": (3, (1, 2), 0.5),
    "resnext29_2x64d": (3, (1, 2), 0.0625),
    "mobilenetv2": (4, (1, 2, 3), 0.25),
    "shufflenetv2": (3, (1, 2), 0.25),
    "resnet18": (4, (1, 2, 3), 0.0625),
}


def count_without_exits(model):
    in_heads = {id(v) for head in model.exit_heads for v in head.trainable_weights}
    return sum(int(np.prod(v.shape)) for v in model.trainable_weights if id(v) not in in_heads)


def _check_forward(model, x, stages, exits):
    """Exits and final logits of the right shape, one feature map per stage with shrinking
    resolution, and the inference path equal to the full forward's final head; the stage maps."""
    logits, feats = model(x, training=False, return_features=True)
    assert sorted(logits) == sorted([f"exit_{k}" for k in exits] + ["final"])
    assert all(tuple(v.shape) == (len(x), model.num_classes) and np.isfinite(np.asarray(v)).all()
               for v in logits.values())
    maps = [feats[f"stage_{k + 1}"] for k in range(stages)]
    assert [m.shape[-1] for m in maps] == list(model.stage_channels)
    sizes = [m.shape[1] for m in maps]
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] < sizes[0]  # resolution drops stage by stage
    np.testing.assert_allclose(np.asarray(model.predict_final(x)), np.asarray(logits["final"]), rtol=1e-5, atol=1e-5)
    return maps


@pytest.fixture(scope="module")
def cifar_models():
    """One narrow model per backbone (CIFAR stem, 28x28x3: odd sizes 28 -> 14 -> 7 -> 4 below), built
    once for the forward, label-generator and export checks (building MobileNetV2 or ShuffleNetV2
    takes seconds: their many small layers)."""
    return {arch: build_backbone(arch, num_classes=4, width=width, input_shape=(28, 28, 3), stem="cifar")
            for arch, (_, _, width) in ZOO.items()}


@pytest.mark.parametrize("arch", sorted(ZOO))
def test_forward_stages_exits_and_label_generator_at_the_cifar_stem(arch, cifar_models):
    stages, exits, _ = ZOO[arch]
    model = cifar_models[arch]
    x = np.random.default_rng(0).uniform(0, 255, (2, 28, 28, 3)).astype(np.float32)
    maps = _check_forward(model, x, stages, exits)
    # The label generator fuses every backbone's stage maps top-down, odd sizes included.
    generator = LabelGenerator(model.stage_channels, 4, fusion_channels=8, exits=model.exits)
    targets = generator(maps, training=False)
    assert sorted(targets) == sorted(f"exit_{k}" for k in exits)
    assert all(tuple(t.shape) == (2, 4) for t in targets.values())


@pytest.mark.parametrize("arch", sorted(ZOO))
def test_forward_shapes_stages_and_exits_at_the_imagenet_stem(arch):
    stages, exits, width = ZOO[arch]
    model = build_backbone(arch, num_classes=7, width=width, input_shape=(224, 224, 3), stem="imagenet")
    x = np.random.default_rng(0).uniform(0, 255, (1, 224, 224, 3)).astype(np.float32)
    _check_forward(model, x, stages, exits)


# Published counts (trainable parameters, final head included, exits excluded):
#   torchvision docs "num_params": mobilenet_v2 3,504,872; shufflenet_v2_x1_0 2,278,604 (ImageNet, 1000 classes)
#   Zagoruyko & Komodakis 2016, Table: WRN-28-10 36.5M (CIFAR-10); exact 36,479,194 in their reference code
#   Xie et al. 2017, Table 7: ResNeXt-29 8x64d 34.4M (CIFAR)
#   kuangliu/pytorch-cifar VGG19 (BN, one dense layer) with 100 classes: 20,086,692
#   ResNet18 / CIFAR-100 (kuangliu): 11,220,132 (also in tests/models/test_resnet.py)
@pytest.mark.parametrize("arch,kwargs,expected,tolerance", [
    ("mobilenetv2", {"num_classes": 1000, "stem": "imagenet", "input_shape": (224, 224, 3)}, 3_504_872, 0),
    ("shufflenetv2", {"num_classes": 1000, "stem": "imagenet", "input_shape": (224, 224, 3)}, 2_278_604, 0),
    ("wrn28_10", {"num_classes": 10}, 36_479_194, 0),
    ("resnext29_8x64d", {"num_classes": 10}, 34_400_000, 50_000),
    ("vgg19", {"num_classes": 100}, 20_086_692, 0),
    ("resnet18", {"num_classes": 100}, 11_220_132, 0),
])
def test_parameter_counts_match_references(arch, kwargs, expected, tolerance):
    model = build_backbone(arch, **kwargs).ensure_built()
    assert abs(count_without_exits(model) - expected) <= tolerance, count_without_exits(model)


@pytest.mark.parametrize("arch", ["vgg19", "mobilenetv2", "shufflenetv2", "wrn16_1", "resnext29_2x64d"])
def test_every_backbone_exports_without_exits(arch, cifar_models, tmp_path):
    import tensorflow as tf

    from tfkd import export

    model = cifar_models[arch].ensure_built()
    path = export.export_saved_model(model, str(tmp_path / "export"), {"method": "baseline"})
    loaded = tf.saved_model.load(path)
    x = np.random.default_rng(2).integers(0, 256, (3, 28, 28, 3)).astype(np.uint8)
    probs = loaded.signatures["serving_default"](images=tf.constant(x))["probabilities"].numpy()
    np.testing.assert_allclose(probs, tf.nn.softmax(model.predict_final(x.astype(np.float32))).numpy(), atol=1e-5)
    saved = sum(int(np.prod(v.shape)) for v in loaded.inference_variables)
    assert saved == sum(int(np.prod(v.shape)) for v in model.inference_variables())
    exit_params = sum(int(np.prod(v.shape)) for h in model.exit_heads for v in h.variables)
    assert exit_params > 0 and saved + exit_params == sum(int(np.prod(v.shape)) for v in model.variables)
