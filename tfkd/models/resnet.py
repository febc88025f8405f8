"""Multi-exit ResNets (CIFAR-style 3x3 stem by default; ImageNet 7x7 stem + max-pool optional).

The network is divided into 4 stages. After each of stages 1..3 sits a BYOT-style exit head
(Zhang et al. 2019, "Be Your Own Teacher"): bottleneck blocks with stride 2 bring the stage's
feature map to the final stage's resolution and width, then global pooling and a dense layer.
``call`` returns a dict of logits ``exit_1 .. exit_3, final``; with ``return_features=True`` it
also returns the stage feature maps (consumed by the MetaDistiller label generator) and the
exits' pre-pooling features (BYOT's feature hint). ``predict_final`` runs only the inference path
(backbone + final head), which is all that is exported.
"""
import contextlib

import keras
from keras import layers, ops

from tfkd.models.heads import classifier_head
from tfkd.registry import BACKBONES

# depth -> (block type, blocks per stage)
RESNET_SPECS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
STAGE_WIDTHS = (64, 128, 256, 512)
# Keras' default BatchNorm momentum (0.99) lags badly in short runs; 0.9 equals PyTorch's 0.1.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def logits_dtype():
    """float32 logits under mixed precision (softmax/KL are fragile in fp16); else the global dtype."""
    return "float32" if keras.mixed_precision.global_policy().name.startswith("mixed") else None


_SYNC_BN = [False]


@contextlib.contextmanager
def synchronized_batchnorm(enabled):
    """BatchNorm layers created inside use cross-replica statistics when ``enabled``: under
    tf.distribute a step then equals one device's step on the global batch (needed by the
    MetaDistiller lookahead). Without distribution they behave as ordinary BatchNorm."""
    previous = _SYNC_BN[0]
    _SYNC_BN[0] = bool(enabled)
    try:
        yield
    finally:
        _SYNC_BN[0] = previous


def _bn(name, momentum):
    return layers.BatchNormalization(momentum=momentum, epsilon=BN_EPSILON, synchronized=_SYNC_BN[0], name=name)


def _conv(filters, kernel, stride, name):
    return layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                         kernel_initializer="he_normal", name=name)


class _ResidualBlock(layers.Layer):
    """Shared shortcut logic: identity, or a strided 1x1 projection when the shape changes."""

    expansion = 1

    def __init__(self, filters, stride=1, bn_momentum=BN_MOMENTUM, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.stride, self.bn_momentum = filters, stride, bn_momentum
        self.shortcut_conv = self.shortcut_bn = None
        self._sync_bn = _SYNC_BN[0]  # build() runs later, outside the constructor's context

    def build(self, input_shape):
        if self.stride != 1 or input_shape[-1] != self.filters * self.expansion:
            with synchronized_batchnorm(self._sync_bn):
                self.shortcut_conv = _conv(self.filters * self.expansion, 1, self.stride, "shortcut_conv")
                self.shortcut_bn = _bn("shortcut_bn", self.bn_momentum)

    def _shortcut(self, x, training):
        if self.shortcut_conv is None:
            return x
        return self.shortcut_bn(self.shortcut_conv(x), training=training)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "stride": self.stride,
                "bn_momentum": self.bn_momentum}


class BasicBlock(_ResidualBlock):
    expansion = 1

    def __init__(self, filters, stride=1, bn_momentum=BN_MOMENTUM, **kwargs):
        super().__init__(filters, stride, bn_momentum, **kwargs)
        self.conv1 = _conv(filters, 3, stride, "conv1")
        self.bn1 = _bn("bn1", bn_momentum)
        self.conv2 = _conv(filters, 3, 1, "conv2")
        self.bn2 = _bn("bn2", bn_momentum)

    def call(self, x, training=None):
        y = ops.relu(self.bn1(self.conv1(x), training=training))
        y = self.bn2(self.conv2(y), training=training)
        return ops.relu(y + self._shortcut(x, training))


class Bottleneck(_ResidualBlock):
    expansion = 4

    def __init__(self, filters, stride=1, bn_momentum=BN_MOMENTUM, **kwargs):
        super().__init__(filters, stride, bn_momentum, **kwargs)
        # Torchvision's ResNet v1.5: the stride sits on the 3x3 convolution.
        self.conv1 = _conv(filters, 1, 1, "conv1")
        self.bn1 = _bn("bn1", bn_momentum)
        self.conv2 = _conv(filters, 3, stride, "conv2")
        self.bn2 = _bn("bn2", bn_momentum)
        self.conv3 = _conv(filters * self.expansion, 1, 1, "conv3")
        self.bn3 = _bn("bn3", bn_momentum)

    def call(self, x, training=None):
        y = ops.relu(self.bn1(self.conv1(x), training=training))
        y = ops.relu(self.bn2(self.conv2(y), training=training))
        y = self.bn3(self.conv3(y), training=training)
        return ops.relu(y + self._shortcut(x, training))


class ExitHead(layers.Layer):
    """BYOT-style exit: stride-2 bottleneck blocks up to the final stage's shape, pool, dense."""

    def __init__(self, out_channels, num_classes, bn_momentum=BN_MOMENTUM, **kwargs):
        super().__init__(**kwargs)
        self.out_channels = tuple(int(c) for c in out_channels)
        self.num_classes = num_classes
        self.bn_momentum = bn_momentum
        # A bottleneck block whose output width is c: inner width c // 4.
        self.blocks = [Bottleneck(max(1, c // 4), stride=2, bn_momentum=bn_momentum, name=f"block{i}")
                       for i, c in enumerate(self.out_channels)]
        self.pool = layers.GlobalAveragePooling2D(name="pool")
        self.classifier = layers.Dense(num_classes, dtype=logits_dtype(), name="classifier")

    def call(self, x, training=None, return_features=False):
        for block in self.blocks:
            x = block(x, training=training)
        logits = self.classifier(self.pool(x))
        return (logits, x) if return_features else logits

    def get_config(self):
        return {**super().get_config(), "out_channels": self.out_channels, "num_classes": self.num_classes,
                "bn_momentum": self.bn_momentum}


@keras.saving.register_keras_serializable("tfkd")
class MultiExitResNet(keras.Model):
    """ResNet-{18,34,50,101,152} with exits after stages 1..3.

    Args:
      depth: ResNet depth (keys of ``RESNET_SPECS``).
      num_classes: number of output classes.
      width: multiplier on the stage widths (64, 128, 256, 512); 0.25 makes CPU runs practical.
      input_shape: (H, W, C) of the images.
      mean, std: per-channel normalisation on the 0..255 scale, applied inside the model.
      stem: 'cifar' (3x3 conv, no pooling) or 'imagenet' (7x7/2 conv + 3x3/2 max-pool).
      exits: the stages (1..3) that get an exit head.
      sync_bn: cross-replica BatchNorm statistics under tf.distribute (see synchronized_batchnorm).
      head: final classifier, 'linear' or 'cosine' (few-shot "cosine" pre-trained features).
    """

    num_stages = 4

    def __init__(self, depth=18, num_classes=10, width=1.0, input_shape=(32, 32, 3), mean=None, std=None,
                 stem="cifar", exits=(1, 2, 3), bn_momentum=BN_MOMENTUM, sync_bn=False, head="linear", **kwargs):
        super().__init__(**kwargs)
        self.sync_bn = bool(sync_bn)
        self.head = head
        with synchronized_batchnorm(self.sync_bn):
            self._create_layers(depth, num_classes, width, input_shape, mean, std, stem, exits, bn_momentum)

    def _create_layers(self, depth, num_classes, width, input_shape, mean, std, stem, exits, bn_momentum):
        if depth not in RESNET_SPECS:
            raise ValueError(f"ResNet depth must be one of {sorted(RESNET_SPECS)}, got {depth}")
        if stem not in ("cifar", "imagenet"):
            raise ValueError(f"stem must be 'cifar' or 'imagenet', got {stem!r}")
        self.depth, self.num_classes, self.width = depth, num_classes, float(width)
        self.image_shape = tuple(int(s) for s in input_shape)
        channels = self.image_shape[-1]
        self.mean = tuple(float(m) for m in (mean if mean is not None else [127.5] * channels))
        self.std = tuple(float(s) for s in (std if std is not None else [127.5] * channels))
        self.stem_type, self.exits, self.bn_momentum = stem, tuple(int(e) for e in exits), bn_momentum
        if any(e not in (1, 2, 3) for e in self.exits):
            raise ValueError(f"exits must be stages in 1..3, got {self.exits}")

        block_type, counts = RESNET_SPECS[depth]
        block_cls = BasicBlock if block_type == "basic" else Bottleneck
        widths = [max(4, int(round(w * self.width))) for w in STAGE_WIDTHS]
        self.stage_channels = tuple(w * block_cls.expansion for w in widths)

        if stem == "cifar":
            self.stem_conv = _conv(widths[0], 3, 1, "stem_conv")
        else:
            self.stem_conv = _conv(widths[0], 7, 2, "stem_conv")
        self.stem_bn = _bn("stem_bn", bn_momentum)
        self.stem_pool = layers.MaxPooling2D(3, 2, padding="same", name="stem_pool") if stem == "imagenet" else None
        self.stages = []
        for s, (w, n) in enumerate(zip(widths, counts)):
            blocks = [block_cls(w, stride=(1 if s == 0 else 2) if b == 0 else 1, bn_momentum=bn_momentum,
                                name=f"stage{s + 1}_block{b}") for b in range(n)]
            self.stages.append(blocks)
        self.pool = layers.GlobalAveragePooling2D(name="pool")
        self.classifier = classifier_head(self.head, num_classes, dtype=logits_dtype())
        self.exit_heads = [ExitHead(self.stage_channels[k:], num_classes, bn_momentum, name=f"exit_{k}")
                           for k in self.exits]

    @property
    def output_names_ordered(self):
        return [f"exit_{k}" for k in self.exits] + ["final"]

    def normalize(self, images):
        x = ops.cast(images, self.compute_dtype)
        mean = ops.convert_to_tensor(self.mean, dtype=self.compute_dtype)
        std = ops.convert_to_tensor(self.std, dtype=self.compute_dtype)
        return (x - mean) / std

    def backbone(self, images, training=None):
        """Stage feature maps [F_1, .., F_4]."""
        x = ops.relu(self.stem_bn(self.stem_conv(self.normalize(images)), training=training))
        if self.stem_pool is not None:
            x = self.stem_pool(x)
        features = []
        for blocks in self.stages:
            for block in blocks:
                x = block(x, training=training)
            features.append(x)
        return features

    def call(self, images, training=None, return_features=False):
        stage_maps = self.backbone(images, training=training)
        logits, features = {}, {f"stage_{i + 1}": f for i, f in enumerate(stage_maps)}
        for k, head in zip(self.exits, self.exit_heads):
            logits[f"exit_{k}"], features[f"exit_{k}_features"] = head(
                stage_maps[k - 1], training=training, return_features=True)
        logits["final"] = self.classifier(self.pool(stage_maps[-1]))
        return (logits, features) if return_features else logits

    def final_logits(self, images, training=None):
        """The final head only, skipping the exits' compute (baseline training, inference)."""
        return self.classifier(self.pool(self.backbone(images, training=training)[-1]))

    def embed(self, images):
        """Globally pooled final-stage features (inference mode): the few-shot feature space."""
        return self.pool(self.backbone(images, training=False)[-1])

    def predict_final(self, images):
        """Inference path only (no exits): logits of the final head."""
        return self.final_logits(images, training=False)

    def inference_variables(self):
        """Variables of the inference path (stem, stages, final head): what an export keeps."""
        exit_ids = {id(v) for head in self.exit_heads for v in head.variables}
        return [v for v in self.variables if id(v) not in exit_ids]

    def ensure_built(self):
        """Creates the variables (a subclassed model builds on its first call)."""
        if not self.built:
            self(ops.zeros((1,) + self.image_shape), training=False)
        return self

    def get_config(self):
        return {**super().get_config(), "depth": self.depth, "num_classes": self.num_classes,
                "width": self.width, "input_shape": self.image_shape, "mean": self.mean, "std": self.std,
                "stem": self.stem_type, "exits": self.exits, "bn_momentum": self.bn_momentum,
                "sync_bn": self.sync_bn, "head": self.head}


for _depth in RESNET_SPECS:
    BACKBONES.register(f"resnet{_depth}")(
        lambda _d=_depth, **kw: MultiExitResNet(depth=_d, **kw))
