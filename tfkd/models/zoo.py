"""The other backbones of the MetaDistiller paper (Sec. 4.2), each split into stages with exits:

* ``vgg{11,13,16,19}`` (with BatchNorm): 5 stages = the conv blocks between max-pools; exits are
  average pooling + one dense layer on the maps before the 2nd, 3rd and 4th max-pool.
* ``mobilenetv2``: 4 stages by resolution, exits after the first three.
* ``wrn`` (WideResNet-d-k, ``depth``/``widen``; paper: WRN16-1), ``resnext29`` (``cardinality``
  x ``base_width``d; paper: 2x64d), ``shufflenetv2``: 3 stages, exits after the first two.

Every backbone takes ``stem='cifar'`` (small images: no early downsampling, as the CIFAR versions
of kuangliu/pytorch-cifar) or ``'imagenet'`` (the torchvision layouts), and a ``width``
multiplier on the channel counts (1.0 = the reference architecture) so tests and CPU benchmarks
can run narrow versions. Reference parameter counts are checked in tests/models/test_zoo.py.
"""
import keras
from keras import layers, ops

from tfkd.models.layers import _SYNC_BN, _bn, _conv, synchronized_batchnorm
from tfkd.models.multi_exit import MultiExitNetwork
from tfkd.registry import BACKBONES


def _scaled(channels, width, divisor=1, minimum=4):
    return max(minimum, int(round(channels * width / divisor)) * divisor)


def _make_divisible(value, divisor=8):
    """MobileNet's channel rounding (torchvision _make_divisible)."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * value else new


class _ZooNetwork(MultiExitNetwork):
    def __init__(self, num_classes=10, width=1.0, input_shape=(32, 32, 3), stem="cifar", **kwargs):
        if stem not in ("cifar", "imagenet"):
            raise ValueError(f"stem must be 'cifar' or 'imagenet', got {stem!r}")
        if not width > 0:
            raise ValueError(f"width must be positive, got {width}")
        self.width, self.stem_type = float(width), stem
        super().__init__(num_classes=num_classes, input_shape=input_shape, **kwargs)

    def backbone(self, images, training=None):
        """stem, then each stage in turn; subclasses set ``self.stem`` and ``self.stages``."""
        x = self.stem(self.normalize(images), training=training)
        features = []
        for stage in self.stages:
            x = stage(x, training=training)
            features.append(x)
        return features

    def arch_config(self):
        return {"width": self.width, "stem": self.stem_type}


class _Sequence(layers.Layer):
    """Applies layers in order, passing ``training`` to those that take it."""

    def __init__(self, sublayers, **kwargs):
        super().__init__(**kwargs)
        self.sublayers = list(sublayers)

    def call(self, x, training=None):
        for layer in self.sublayers:
            x = layer(x, training=training)
        return x


class ReLUMax(layers.Layer):
    """ReLU, or ReLU6 with max_value=6 (a layer so it sits in a layer list)."""

    def __init__(self, max_value=None, **kwargs):
        super().__init__(**kwargs)
        self.max_value = max_value

    def call(self, x):
        return ops.relu(x) if self.max_value is None else ops.clip(x, 0.0, self.max_value)


# ---------------------------------------------------------------------- VGG

VGG_CONFIGS = {
    11: (1, 1, 2, 2, 2),
    13: (2, 2, 2, 2, 2),
    16: (2, 2, 3, 3, 3),
    19: (2, 2, 4, 4, 4),
}
VGG_WIDTHS = (64, 128, 256, 512, 512)


@keras.saving.register_keras_serializable("tfkd")
class MultiExitVGG(_ZooNetwork):
    """VGG with BatchNorm (conv3x3 with bias, BN, ReLU). CIFAR: global pooling + one dense layer
    (kuangliu); ImageNet: the 4096-4096 classifier with dropout (torchvision ``vgg*_bn``)."""

    num_stages = 5
    default_exits = (2, 3, 4)
    exit_style = "pool"
    supports_feature_hint = False

    def __init__(self, depth=19, **kwargs):
        if depth not in VGG_CONFIGS:
            raise ValueError(f"VGG depth must be one of {sorted(VGG_CONFIGS)}, got {depth}")
        self.depth = depth
        super().__init__(**kwargs)

    def _create_backbone(self):
        widths = [_scaled(w, self.width) for w in VGG_WIDTHS]
        self.stage_channels = tuple(widths)
        self.blocks = []
        for s, (n, w) in enumerate(zip(VGG_CONFIGS[self.depth], widths)):
            convs = []
            for i in range(n):
                convs += [layers.Conv2D(w, 3, padding="same", kernel_initializer="he_normal", name=f"conv{s + 1}_{i}"),
                          _bn(f"bn{s + 1}_{i}", self.bn_momentum), ReLUMax()]
            self.blocks.append(_Sequence(convs, name=f"block{s + 1}"))
        # "same": identical to the reference on even sizes, and odd ones (28 px: 7 -> 4 -> 2 -> 1) still work.
        self.max_pool = layers.MaxPooling2D(2, 2, padding="same", name="max_pool")
        if self.stem_type == "imagenet":
            hidden = _scaled(4096, self.width)
            self.fc = [layers.Flatten(name="flatten"), layers.Dense(hidden, activation="relu", name="fc1"),
                       layers.Dropout(0.5, name="drop1"), layers.Dense(hidden, activation="relu", name="fc2"),
                       layers.Dropout(0.5, name="drop2")]
        else:
            self.fc = [self.pool_layer()]

    def pool_layer(self):
        return layers.GlobalAveragePooling2D(name="final_pool")

    def backbone(self, images, training=None):
        x = self.normalize(images)
        features = []
        for s, block in enumerate(self.blocks):
            if s:
                x = self.max_pool(x)  # the pool after block s, before block s + 1
            x = block(x, training=training)
            features.append(x)
        return features

    def head_features(self, last_stage, training=None):
        x = self.max_pool(last_stage)
        for layer in self.fc:
            x = layer(x, training=training)
        return x

    def arch_config(self):
        return {**super().arch_config(), "depth": self.depth}


# ---------------------------------------------------------------------- WideResNet


class _PreActBlock(layers.Layer):
    """WRN basic block: BN-ReLU-conv3x3-BN-ReLU-conv3x3, 1x1 projection when the shape changes."""

    def __init__(self, filters, stride, bn_momentum, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.stride, self.bn_momentum, self.dropout_rate = filters, stride, bn_momentum, dropout
        self.bn1, self.bn2 = _bn("bn1", bn_momentum), _bn("bn2", bn_momentum)
        self.conv1, self.conv2 = _conv(filters, 3, stride, "conv1"), _conv(filters, 3, 1, "conv2")
        self.dropout = layers.Dropout(dropout, name="dropout") if dropout else None
        self.shortcut = None
        self._sync_bn = _SYNC_BN[0]

    def build(self, input_shape):
        if self.stride != 1 or input_shape[-1] != self.filters:
            self.shortcut = _conv(self.filters, 1, self.stride, "shortcut")

    def call(self, x, training=None):
        o = ops.relu(self.bn1(x, training=training))
        shortcut = x if self.shortcut is None else self.shortcut(o)
        y = self.conv1(o)
        y = ops.relu(self.bn2(y, training=training))
        if self.dropout is not None:
            y = self.dropout(y, training=training)
        return self.conv2(y) + shortcut


@keras.saving.register_keras_serializable("tfkd")
class MultiExitWideResNet(_ZooNetwork):
    """WRN-d-k (Zagoruyko & Komodakis 2016): (d - 4) / 6 pre-activation blocks in each of 3
    groups of 16k, 32k, 64k channels; final BN-ReLU before pooling."""

    num_stages = 3
    default_exits = (1, 2)

    def __init__(self, depth=16, widen=1, dropout=0.0, **kwargs):
        if (depth - 4) % 6 or depth < 10:
            raise ValueError(f"WideResNet depth must be 6n + 4 (10, 16, 22, 28, 40, ...), got {depth}")
        self.depth, self.widen, self.dropout = int(depth), int(widen), float(dropout)
        super().__init__(**kwargs)

    def _create_backbone(self):
        n = (self.depth - 4) // 6
        widths = [_scaled(c * self.widen, self.width) for c in (16, 32, 64)]
        self.stage_channels = tuple(widths)
        stride = 1 if self.stem_type == "cifar" else 2
        self.stem = _Sequence([_conv(_scaled(16, self.width), 3, stride, "stem_conv")], name="stem")
        self.stages = [_Sequence([_PreActBlock(w, (1 if g == 0 else 2) if b == 0 else 1, self.bn_momentum,
                                               self.dropout, name=f"group{g + 1}_block{b}") for b in range(n)],
                                 name=f"group{g + 1}") for g, w in enumerate(widths)]
        self.final_bn = _bn("final_bn", self.bn_momentum)

    def head_features(self, last_stage, training=None):
        return self.pool(ops.relu(self.final_bn(last_stage, training=training)))

    def arch_config(self):
        return {**super().arch_config(), "depth": self.depth, "widen": self.widen, "dropout": self.dropout}


# ---------------------------------------------------------------------- ResNeXt


class _ResNeXtBlock(layers.Layer):
    """1x1 conv to cardinality * group width, grouped 3x3 conv (stride), 1x1 conv to ``out``."""

    def __init__(self, inner, out, cardinality, stride, bn_momentum, **kwargs):
        super().__init__(**kwargs)
        self.inner, self.out, self.cardinality, self.stride = inner, out, cardinality, stride
        self.conv1, self.bn1 = _conv(inner, 1, 1, "conv1"), _bn("bn1", bn_momentum)
        self.conv2 = layers.Conv2D(inner, 3, strides=stride, padding="same", groups=cardinality, use_bias=False,
                                   kernel_initializer="he_normal", name="conv2")
        self.bn2 = _bn("bn2", bn_momentum)
        self.conv3, self.bn3 = _conv(out, 1, 1, "conv3"), _bn("bn3", bn_momentum)
        self.bn_momentum = bn_momentum
        self.shortcut_conv = self.shortcut_bn = None
        self._sync_bn = _SYNC_BN[0]

    def build(self, input_shape):
        if self.stride != 1 or input_shape[-1] != self.out:
            with synchronized_batchnorm(self._sync_bn):
                self.shortcut_conv = _conv(self.out, 1, self.stride, "shortcut_conv")
                self.shortcut_bn = _bn("shortcut_bn", self.bn_momentum)

    def call(self, x, training=None):
        y = ops.relu(self.bn1(self.conv1(x), training=training))
        y = ops.relu(self.bn2(self.conv2(y), training=training))
        y = self.bn3(self.conv3(y), training=training)
        shortcut = x if self.shortcut_conv is None else self.shortcut_bn(self.shortcut_conv(x), training=training)
        return ops.relu(y + shortcut)


@keras.saving.register_keras_serializable("tfkd")
class MultiExitResNeXt29(_ZooNetwork):
    """ResNeXt-29 for CIFAR (Xie et al. 2017, Sec. 5.3): a 3x3 conv of 64, then 3 stages of 3
    blocks with outputs 256, 512, 1024 and inner width cardinality x base_width x 2^stage
    (8x64d: 34.4M parameters, 16x64d: 68.1M)."""

    num_stages = 3
    default_exits = (1, 2)

    def __init__(self, cardinality=2, base_width=64, **kwargs):
        self.cardinality, self.base_width = int(cardinality), int(base_width)
        super().__init__(**kwargs)

    def _create_backbone(self):
        outs = [_scaled(c, self.width, 1) for c in (256, 512, 1024)]
        inners = [_scaled(self.cardinality * self.base_width * 2 ** s, self.width, self.cardinality,
                          self.cardinality) for s in range(3)]
        self.stage_channels = tuple(outs)
        stride = 1 if self.stem_type == "cifar" else 2
        self.stem = _Sequence([_conv(_scaled(64, self.width), 3, stride, "stem_conv"), _bn("stem_bn", self.bn_momentum),
                               ReLUMax()], name="stem")
        self.stages = [_Sequence([_ResNeXtBlock(inner, out, self.cardinality, (1 if s == 0 else 2) if b == 0 else 1,
                                                self.bn_momentum, name=f"stage{s + 1}_block{b}") for b in range(3)],
                                 name=f"stage{s + 1}") for s, (inner, out) in enumerate(zip(inners, outs))]

    def arch_config(self):
        return {**super().arch_config(), "cardinality": self.cardinality, "base_width": self.base_width}


# ---------------------------------------------------------------------- MobileNetV2


class _InvertedResidual(layers.Layer):
    def __init__(self, in_channels, out_channels, stride, expand, bn_momentum, **kwargs):
        super().__init__(**kwargs)
        hidden = int(round(in_channels * expand))
        self.use_residual = stride == 1 and in_channels == out_channels
        self.parts = []
        if expand != 1:
            self.parts += [_conv(hidden, 1, 1, "expand"), _bn("expand_bn", bn_momentum), ReLUMax(6.0)]
        self.parts += [layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name="depthwise"),
                       _bn("depthwise_bn", bn_momentum), ReLUMax(6.0),
                       _conv(out_channels, 1, 1, "project"), _bn("project_bn", bn_momentum)]

    def call(self, x, training=None):
        y = x
        for layer in self.parts:
            y = layer(y, training=training)
        return x + y if self.use_residual else y


# (expansion t, channels c, repeats n, stride s) of Sandler et al. 2018, Table 2.
MOBILENETV2_SPEC = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                    (6, 320, 1, 1))
MOBILENETV2_STAGES = ((0, 1), (2,), (3, 4), (5, 6))  # bottleneck groups per stage (by resolution)


@keras.saving.register_keras_serializable("tfkd")
class MultiExitMobileNetV2(_ZooNetwork):
    """MobileNetV2 (torchvision layout for ImageNet; CIFAR: stride-1 stem and first stride-2
    group at stride 1, as kuangliu). Stages by resolution; the 1x1 conv to 1280 comes after the
    last stage, before pooling."""

    def _create_backbone(self):
        stride = 1 if self.stem_type == "cifar" else 2
        first = _make_divisible(32 * self.width)
        self.stem = _Sequence([_conv(first, 3, stride, "stem_conv"), _bn("stem_bn", self.bn_momentum), ReLUMax(6.0)],
                              name="stem")
        channels, groups = first, []
        for g, (t, c, n, s) in enumerate(MOBILENETV2_SPEC):
            out = _make_divisible(c * self.width)
            if self.stem_type == "cifar" and g == 1:
                s = 1
            blocks = []
            for i in range(n):
                blocks.append(_InvertedResidual(channels, out, s if i == 0 else 1, t, self.bn_momentum,
                                                name=f"group{g}_block{i}"))
                channels = out
            groups.append((blocks, out))
        self.stages, stage_channels = [], []
        for k, members in enumerate(MOBILENETV2_STAGES):
            self.stages.append(_Sequence([b for g in members for b in groups[g][0]], name=f"stage{k + 1}"))
            stage_channels.append(groups[members[-1]][1])
        self.stage_channels = tuple(stage_channels)
        self.last_channels = _make_divisible(1280 * max(1.0, self.width))
        self.final_conv = _Sequence([_conv(self.last_channels, 1, 1, "final_conv"), _bn("final_bn", self.bn_momentum),
                                     ReLUMax(6.0)], name="final")
        self.dropout = layers.Dropout(0.2, name="dropout")

    def head_features(self, last_stage, training=None):
        return self.dropout(self.pool(self.final_conv(last_stage, training=training)), training=training)


# ---------------------------------------------------------------------- ShuffleNetV2


def _channel_shuffle(x, groups=2):
    h, w, c = x.shape[1], x.shape[2], x.shape[3]
    x = ops.reshape(x, (-1, h, w, groups, c // groups))
    x = ops.transpose(x, (0, 1, 2, 4, 3))
    return ops.reshape(x, (-1, h, w, c))


class _ShuffleUnit(layers.Layer):
    """ShuffleNetV2 unit (torchvision InvertedResidual): stride 1 splits channels in half; stride 2
    runs both branches on the whole input; outputs are concatenated and shuffled."""

    def __init__(self, in_channels, out_channels, stride, bn_momentum, **kwargs):
        super().__init__(**kwargs)
        self.stride = stride
        branch = out_channels // 2
        if stride > 1:
            self.branch1 = [layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name="b1_dw"),
                            _bn("b1_dw_bn", bn_momentum), _conv(branch, 1, 1, "b1_pw"), _bn("b1_pw_bn", bn_momentum),
                            ReLUMax()]
        else:
            self.branch1 = []
        self.branch2 = [_conv(branch, 1, 1, "b2_pw1"), _bn("b2_pw1_bn", bn_momentum), ReLUMax(),
                        layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name="b2_dw"),
                        _bn("b2_dw_bn", bn_momentum), _conv(branch, 1, 1, "b2_pw2"), _bn("b2_pw2_bn", bn_momentum),
                        ReLUMax()]

    def call(self, x, training=None):
        def run(parts, y):
            for layer in parts:
                y = layer(y, training=training)
            return y

        if self.stride == 1:
            half = x.shape[-1] // 2
            out = ops.concatenate([x[..., :half], run(self.branch2, x[..., half:])], axis=-1)
        else:
            out = ops.concatenate([run(self.branch1, x), run(self.branch2, x)], axis=-1)
        return _channel_shuffle(out, 2)


SHUFFLENETV2_CHANNELS = {0.5: (48, 96, 192, 1024), 1.0: (116, 232, 464, 1024), 1.5: (176, 352, 704, 1024),
                         2.0: (244, 488, 976, 2048)}


@keras.saving.register_keras_serializable("tfkd")
class MultiExitShuffleNetV2(_ZooNetwork):
    """ShuffleNetV2 (torchvision layout; CIFAR: stride-1 stem conv, no max-pool). ``width`` picks
    the published sizes 0.5 / 1.0 / 1.5 / 2.0x (other values scale the 1.0x channels)."""

    num_stages = 3
    default_exits = (1, 2)

    def _create_backbone(self):
        if self.width in SHUFFLENETV2_CHANNELS:
            *stages, last = SHUFFLENETV2_CHANNELS[self.width]
        else:
            *stages, last = [_scaled(c, self.width, 2) for c in SHUFFLENETV2_CHANNELS[1.0]]
        stem_channels = 24 if self.width >= 0.5 else _scaled(24, self.width * 2)
        stride = 1 if self.stem_type == "cifar" else 2
        parts = [_conv(stem_channels, 3, stride, "stem_conv"), _bn("stem_bn", self.bn_momentum), ReLUMax()]
        if self.stem_type == "imagenet":
            parts.append(layers.MaxPooling2D(3, 2, padding="same", name="stem_pool"))
        self.stem = _Sequence(parts, name="stem")
        channels, self.stages = stem_channels, []
        for s, (out, repeats) in enumerate(zip(stages, (4, 8, 4))):
            units = [_ShuffleUnit(channels if i == 0 else out, out, 2 if i == 0 else 1, self.bn_momentum,
                                  name=f"stage{s + 2}_unit{i}") for i in range(repeats)]
            self.stages.append(_Sequence(units, name=f"stage{s + 2}"))
            channels = out
        self.stage_channels = tuple(stages)
        self.final_conv = _Sequence([_conv(last, 1, 1, "conv5"), _bn("conv5_bn", self.bn_momentum), ReLUMax()],
                                    name="conv5")

    def head_features(self, last_stage, training=None):
        return self.pool(self.final_conv(last_stage, training=training))


# ---------------------------------------------------------------------- registry

for _depth in VGG_CONFIGS:
    BACKBONES.register(f"vgg{_depth}")(lambda _d=_depth, **kw: MultiExitVGG(depth=_d, **kw))
for _d in (10, 16, 22, 28, 40):  # WRN-d-k as wrn<d>_<k>; the paper's is wrn16_1
    for _k in (1, 2, 4, 8, 10):
        BACKBONES.register(f"wrn{_d}_{_k}")(lambda _d=_d, _k=_k, **kw: MultiExitWideResNet(depth=_d, widen=_k, **kw))
for _c in (1, 2, 4, 8, 16, 32):  # ResNeXt-29 as resnext29_<c>x<d>d; the paper's is resnext29_2x64d
    for _bw in (4, 32, 64):
        BACKBONES.register(f"resnext29_{_c}x{_bw}d")(
            lambda _c=_c, _bw=_bw, **kw: MultiExitResNeXt29(cardinality=_c, base_width=_bw, **kw))
BACKBONES.register("mobilenetv2")(lambda **kw: MultiExitMobileNetV2(**kw))
BACKBONES.register("shufflenetv2")(lambda **kw: MultiExitShuffleNetV2(**kw))
