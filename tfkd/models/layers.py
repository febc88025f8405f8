"""Building blocks shared by the backbones and the label generator: BatchNorm / conv helpers
(cross-replica BatchNorm on request), residual blocks, and the two exit heads."""
import contextlib
import threading

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops
# Recording an op's gradient on the tapes; what tf.custom_gradient does underneath, without its
# extra graph ops (fused_batch_norm_training).
from tensorflow.python.eager import record

# Keras' default BatchNorm momentum (0.99) lags badly in short runs; 0.9 equals PyTorch's 0.1.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def logits_dtype():
    """float32 logits under mixed precision (softmax/KL are fragile in fp16); else the global dtype."""
    return "float32" if keras.mixed_precision.global_policy().name.startswith("mixed") else None


_SYNC_BN = [False]
_FUSED_BN = [True]
# Per thread: MirroredStrategy traces each replica's step in its own thread, and one replica's
# lookahead must not freeze the statistics of another replica's main forward.
_FROZEN_STATISTICS = threading.local()


@contextlib.contextmanager
def _setting(cell, enabled):
    previous = cell[0]
    cell[0] = bool(enabled)
    try:
        yield
    finally:
        cell[0] = previous


def synchronized_batchnorm(enabled):
    """BatchNorm layers created inside use cross-replica statistics when ``enabled``: under
    tf.distribute a step then equals one device's step on the global batch (needed by the
    MetaDistiller lookahead). Without distribution they behave as ordinary BatchNorm."""
    return _setting(_SYNC_BN, enabled)


def fused_batchnorm(enabled):
    """While inside, tfkd's BatchNorm layers run the fused kernel (default) or Keras' own ops
    (``enabled=False``: to compare the two, benchmarks/batchnorm_ab.py). Read when a step is
    traced, so a model traced inside keeps that choice."""
    return _setting(_FUSED_BN, enabled)


@contextlib.contextmanager
def frozen_batchnorm_statistics(enabled=True):
    """While inside, tfkd's BatchNorm layers in training mode normalise with the batch's statistics
    but leave their moving averages as they are. For forward passes whose updated statistics are
    thrown away (the MetaDistiller lookahead's, inside ``stateless_call``): the fused path then
    builds no update ops at all, ~15 graph ops per layer and call. Read when a step is traced."""
    previous = _statistics_frozen()
    _FROZEN_STATISTICS.value = bool(enabled)
    try:
        yield
    finally:
        _FROZEN_STATISTICS.value = previous


def _statistics_frozen():
    return getattr(_FROZEN_STATISTICS, "value", False)


def _biased_variance(x, unbiased):
    """(N, the biased variance) of NHWC ``x`` from the fused kernel's Bessel-corrected batch variance.
    With a static batch (training pipelines drop the remainder) N is a Python number: ~10 fewer graph
    ops per BatchNorm call, which add up in the MetaDistiller meta step's forward passes."""
    if x.shape[:-1].is_fully_defined():
        n = float(np.prod(x.shape[:-1]))
        return n, unbiased * ((n - 1.0) / max(n, 1.0))
    n = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), tf.float32)
    return n, unbiased * (n - 1.0) / tf.maximum(n, 1.0)


def fused_batch_norm_training(x, gamma, beta, epsilon):
    """TensorFlow's fused training-mode BatchNorm on float32 NHWC ``x``: (y, batch mean, unbiased
    batch variance), as ``tf.compat.v1.nn.fused_batch_norm(..., is_training=True)``.

    Its gradient is the fused gradient kernel, as TensorFlow's own; what differs is that kernel's
    gradient (the second derivative, which MetaDistiller's meta step takes through every BatchNorm
    of the network's backward pass). TensorFlow builds it from a composite BatchNorm and its
    gradient (~110 graph ops a layer, a third of the meta step's graph); here it is written out
    (~30 ops, one of them the fused gradient kernel again). The batch statistics get no gradient,
    as with TensorFlow's fused gradient: they feed only the moving averages.

    The ops are recorded on the gradient tapes directly (``tf.custom_gradient`` would add an
    IdentityN, an Identity per output and zero-filled gradients for every input of every call).
    """
    empty = tf.constant([], tf.float32)
    with record.stop_recording():
        y, mean, variance, reserve_1, reserve_2, reserve_3 = tf.raw_ops.FusedBatchNormV3(
            x=x, scale=gamma, offset=beta, mean=empty, variance=empty, epsilon=epsilon,
            exponential_avg_factor=1.0, data_format="NHWC", is_training=True)
    reserves = (reserve_1, reserve_2, reserve_3)

    def gradient(dy):
        return _fused_batch_norm_backward(dy, x, gamma, mean, variance, reserves, epsilon)

    record.record_operation("TfkdFusedBatchNorm", [y], [x, gamma, beta], gradient)
    return y, mean, variance


def _fused_batch_norm_backward(dy, x, gamma, mean, variance, reserves, epsilon):
    """(dx, dgamma, dbeta) of fused_batch_norm_training, with its own gradient written out.

    Per channel, with N values, <.> their mean, x^ = (x - mean) r, r = (biased variance + eps)^-1/2:
        dx = gamma r (dy - a - x^ b),  dgamma = N b,  dbeta = N a,  a = <dy>,  b = <dy x^>.
    For upstream gradients (G, g_gamma, g_beta) of (dx, dgamma, dbeta):
        d/d dy    = gamma r (G - <G> - x^ <G x^>) + g_gamma x^ + g_beta   (the first term is the
                    fused gradient kernel applied to G: dx is linear and self-adjoint in dy)
        d/d gamma = r N (<G dy> - a <G> - b <G x^>)
        d/d x     = -gamma r^2 [x^ (<G dy> - a <G> - 3 b <G x^>) + (dy - a) <G x^> + b (G - <G>)]
                    + g_gamma r (dy - a - x^ b)
    (tests/models/test_layers.py checks all three against TensorFlow's own second derivative)."""
    def kernel(upstream):
        return tf.raw_ops.FusedBatchNormGradV3(
            y_backprop=upstream, x=x, scale=gamma, reserve_space_1=reserves[0], reserve_space_2=reserves[1],
            reserve_space_3=reserves[2], epsilon=epsilon, data_format="NHWC", is_training=True)[:3]

    with record.stop_recording():
        dx, dgamma, dbeta = kernel(dy)

    def gradient(g_dx, g_dgamma, g_dbeta):
        # In terms of x^, as written above: expanding x^ = r (x - mean) into per-channel
        # coefficients of x saves a few passes over the activations but cancels digits when the mean
        # is large (graph and eager meta steps drifted apart 10x more in a test).
        n, biased = _biased_variance(x, variance)
        r = tf.math.rsqrt(biased + epsilon)
        x_hat = (x - mean) * r
        a, b = dbeta / n, dgamma / n
        # The fused kernel on G gives gamma r (G - <G> - x^ <G x^>), N <G x^> and N <G>.
        d_dy, sum_g_xhat, sum_g = kernel(g_dx)
        mean_g, mean_g_xhat = sum_g / n, sum_g_xhat / n
        s = tf.reduce_mean(g_dx * dy, axis=[0, 1, 2]) - a * mean_g
        b_mean_g_xhat = b * mean_g_xhat
        d_dy = d_dy + g_dgamma * x_hat + g_dbeta
        d_gamma = (r * n) * (s - b_mean_g_xhat)
        dy_centred = dy - a
        d_x = ((-gamma * r * r) * (x_hat * (s - 3.0 * b_mean_g_xhat) + dy_centred * mean_g_xhat + b * (g_dx - mean_g))
               + (g_dgamma * r) * (dy_centred - x_hat * b))
        return d_dy, d_x, d_gamma

    record.record_operation("TfkdFusedBatchNormGrad", [dx, dgamma, dbeta], [dy, x, gamma], gradient)
    return dx, dgamma, dbeta


@keras.saving.register_keras_serializable("tfkd")
class BatchNormalization(layers.BatchNormalization):
    """keras.layers.BatchNormalization whose training-mode forward on 4-D float32 NHWC feature maps
    is TensorFlow's fused kernel: one op (and one gradient op) instead of Keras' ~20 (moments,
    rsqrt, ...). MetaDistiller's meta step differentiates the network's backward pass, so its graph
    shrinks most (benchmarks/batchnorm_ab.py: its first step 28.6 s instead of 44.0 s, and
    1.2-1.4x the images/s for every method, on a loaded 2-core CPU).
    Same weights, same moving averages (TensorFlow's Bessel-corrected batch variance is turned
    back into Keras' biased one); everything else (inference, masks, float64, cross-replica
    statistics, other backends) is Keras' own path.

    Named like Keras' class on purpose: Keras names the weights of layers it tracks in lists after
    their class (``layers/batch_normalization_1/vars``), so checkpoints and teachers saved before
    this class existed load into it."""

    def _fused_applies(self, inputs, training, mask):
        if not (_FUSED_BN[0] and training and self.trainable) or mask is not None or self.renorm:
            return False
        if keras.backend.backend() != "tensorflow":
            return False
        if len(inputs.shape) != 4 or self.axis not in (-1, 3) or not (self.scale and self.center):
            return False
        if keras.backend.result_type(inputs.dtype, "float32") != "float32":
            return False
        replicas = tf.distribute.get_strategy().num_replicas_in_sync if tf.distribute.has_strategy() else 1
        return not (self.synchronized and replicas > 1)

    def call(self, inputs, training=None, mask=None):
        if not self._fused_applies(inputs, training, mask):
            if not (_statistics_frozen() and training):
                return super().call(inputs, training=training, mask=mask)
            # Keras' own path always updates the averages: put them back.
            kept = [tf.identity(v.value) for v in (self.moving_mean, self.moving_variance)]
            outputs = super().call(inputs, training=training, mask=mask)
            self.moving_mean.assign(kept[0])
            self.moving_variance.assign(kept[1])
            return outputs
        x = tf.cast(inputs, "float32")
        y, mean, variance = fused_batch_norm_training(
            x, tf.cast(self.gamma, "float32"), tf.cast(self.beta, "float32"), self.epsilon)
        if _statistics_frozen():
            return tf.cast(y, self.compute_dtype)
        # The kernel returns the unbiased variance; Keras keeps the biased one.
        _, variance = _biased_variance(x, variance)
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        return tf.cast(y, self.compute_dtype)


def _bn(name, momentum):
    return BatchNormalization(momentum=momentum, epsilon=BN_EPSILON, synchronized=_SYNC_BN[0], name=name)


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
class ConvChainExit(layers.Layer):
    """A plain (non-residual) exit: 1x1 conv to ``mid_channels``, one 3x3 stride-2 conv per later
    stage, 1x1 conv to the final stage's width (each conv + BatchNorm + ReLU), pool, dense. The
    other reading of the papers' "bottleneck" exit (the PyTorch reference's); thinner than
    ``ExitHead``'s residual bottleneck blocks."""

    def __init__(self, out_channels, num_classes, mid_channels, bn_momentum=BN_MOMENTUM, **kwargs):
        super().__init__(**kwargs)
        self.out_channels = tuple(int(c) for c in out_channels)
        self.num_classes, self.mid_channels, self.bn_momentum = num_classes, int(mid_channels), bn_momentum
        widths = [self.mid_channels] * (1 + len(self.out_channels)) + [self.out_channels[-1]]
        kernels = [1] + [3] * len(self.out_channels) + [1]
        strides = [1] + [2] * len(self.out_channels) + [1]
        self.convs = [_conv(w, k, s, f"conv{i}") for i, (w, k, s) in enumerate(zip(widths, kernels, strides))]
        self.bns = [_bn(f"bn{i}", bn_momentum) for i in range(len(self.convs))]
        self.pool = layers.GlobalAveragePooling2D(name="pool")
        self.classifier = layers.Dense(num_classes, dtype=logits_dtype(), name="classifier")

    def call(self, x, training=None, return_features=False):
        for conv, bn in zip(self.convs, self.bns):
            x = ops.relu(bn(conv(x), training=training))
        logits = self.classifier(self.pool(x))
        return (logits, x) if return_features else logits

    def get_config(self):
        return {**super().get_config(), "out_channels": self.out_channels, "num_classes": self.num_classes,
                "mid_channels": self.mid_channels, "bn_momentum": self.bn_momentum}


def bottleneck_exit(style, out_channels, num_classes, mid_channels, bn_momentum, name):
    """The papers' "bottleneck" exit module, shared by the exits and the label generator's target
    heads: a plain conv chain for ``style == "conv_chain"``, BYOT's residual blocks otherwise."""
    if style == "conv_chain":
        return ConvChainExit(out_channels, num_classes, mid_channels, bn_momentum, name=name)
    return ExitHead(out_channels, num_classes, bn_momentum, name=name)


@keras.saving.register_keras_serializable("tfkd")
class PoolExit(layers.Layer):
    """VGG-style exit (MetaDistiller Sec. 4.2): global average pooling and one dense layer."""

    def __init__(self, num_classes, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.pool = layers.GlobalAveragePooling2D(name="pool")
        self.classifier = layers.Dense(num_classes, dtype=logits_dtype(), name="classifier")

    def call(self, x, training=None, return_features=False):
        pooled = self.pool(x)
        logits = self.classifier(pooled)
        return (logits, pooled) if return_features else logits

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}
