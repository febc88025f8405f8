"""MetaDistiller's top-down label generator (Liu et al. 2020, Eq. 5).

    F^_K = conv1x1(F_K)
    F^_k = conv3x3(Upsample(F^_{k+1}) + conv1x1(F_k)),   k = K-1 .. 1

Upsampling is bilinear to the exact spatial size of F_k (not a blind x2), so odd sizes (7 -> 4
at 28 px input, VGG's 5 pooling levels, ...) work. Each early stage k then gets a bottleneck head
(the same BYOT-style module as the main model's exits) producing logits; the method turns them
into soft targets T_k = softmax(logits_k / tau).

``fusion_norm``: BatchNorm + ReLU after each 3x3 fusion conv (True, tfkd's addition) or Eq. 5 as
written, linear convolutions with biases (False; the PyTorch reference's generator too).

The generator works on any backbone that exposes its stage feature maps; it is used only during
training and never exported.
"""
import keras
from keras import layers, ops

from tfkd.models.layers import BN_MOMENTUM, _bn, _conv, bottleneck_exit, synchronized_batchnorm


@keras.saving.register_keras_serializable("tfkd")
class LabelGenerator(keras.Model):
    """Args:
      stage_channels: channels of the main model's stage outputs F_1..F_K.
      num_classes: classes of the soft targets.
      fusion_channels: width of the fused maps F^_k (the 1x1 convs match channels to it).
      bn_momentum: BatchNorm momentum of the fusion and head layers.
      fusion_norm: BatchNorm + ReLU after each 3x3 fusion conv; False: Eq. 5's linear fusion.
      exit_style: the main model's exit design. The paper's T_k head is the same "bottleneck module"
        as the exits', so ``"conv_chain"`` exits get conv-chain heads here too; otherwise BYOT's
        residual bottleneck blocks (also under VGG's pooling exits: a pool alone on F^_k is no head).
    """

    def __init__(self, stage_channels, num_classes, fusion_channels=64, bn_momentum=BN_MOMENTUM, sync_bn=False,
                 exits=None, fusion_norm=True, exit_style="bottleneck", **kwargs):
        super().__init__(**kwargs)
        self.sync_bn = bool(sync_bn)
        self.fusion_norm, self.exit_style = bool(fusion_norm), exit_style
        with synchronized_batchnorm(self.sync_bn):
            self._create_layers(stage_channels, num_classes, fusion_channels, bn_momentum, exits)

    def _fusion_conv(self, kernel, name):
        if self.fusion_norm:
            return _conv(self.fusion_channels, kernel, 1, name)
        # No BatchNorm follows, so the conv carries its own bias, as a plain conv layer of Eq. 5 would.
        return layers.Conv2D(self.fusion_channels, kernel, padding="same", use_bias=True,
                             kernel_initializer="he_normal", name=name)

    def _create_layers(self, stage_channels, num_classes, fusion_channels, bn_momentum, exits):
        self.stage_channels = tuple(int(c) for c in stage_channels)
        if len(self.stage_channels) < 2:
            raise ValueError("the label generator needs at least two stages")
        k_stages = len(self.stage_channels)
        # The stages (1-based) whose exits get a target; by default every early stage.
        self.exits = tuple(int(e) for e in (exits if exits is not None else range(1, k_stages)))
        if any(not 1 <= e < k_stages for e in self.exits):
            raise ValueError(f"exits must be stages in 1..{k_stages - 1}, got {self.exits}")
        self.num_classes, self.fusion_channels, self.bn_momentum = num_classes, int(fusion_channels), bn_momentum
        k_stages = len(self.stage_channels)
        self.lateral = [self._fusion_conv(1, f"lateral_{k + 1}") for k in range(k_stages)]
        self.smooth = [self._fusion_conv(3, f"smooth_{k + 1}") for k in range(k_stages - 1)]
        self.smooth_bn = ([_bn(f"smooth_bn_{k + 1}", bn_momentum) for k in range(k_stages - 1)]
                          if self.fusion_norm else [])
        # Head for stage k: (K - k) stride-2 downsamplings (the exits' module), pooling, dense -> logits.
        self.heads = [bottleneck_exit(self.exit_style, (self.fusion_channels,) * (k_stages - k), num_classes,
                                      self.fusion_channels, bn_momentum, f"target_{k}") for k in self.exits]

    @property
    def target_names(self):
        return [f"exit_{k}" for k in self.exits]

    def fuse(self, features, training=None):
        """[F_1..F_K] -> [F^_1..F^_{K-1}] (top-down)."""
        k_stages = len(self.stage_channels)
        fused = self.lateral[-1](features[-1])
        out = [None] * (k_stages - 1)
        for k in range(k_stages - 2, -1, -1):
            h, w = features[k].shape[1], features[k].shape[2]
            up = ops.image.resize(fused, (h, w), interpolation="bilinear")
            fused = self.smooth[k](up + self.lateral[k](features[k]))
            if self.fusion_norm:
                fused = ops.relu(self.smooth_bn[k](fused, training=training))
            out[k] = fused
        return out

    def call(self, features, training=None):
        """``features``: list [F_1..F_K]. Returns {exit_k: logits of T_k} for k = 1..K-1."""
        fused = self.fuse(list(features), training=training)
        return {name: head(fused[k - 1], training=training)
                for name, head, k in zip(self.target_names, self.heads, self.exits)}

    def get_config(self):
        return {**super().get_config(), "stage_channels": self.stage_channels, "num_classes": self.num_classes,
                "fusion_channels": self.fusion_channels, "bn_momentum": self.bn_momentum, "sync_bn": self.sync_bn,
                "exits": self.exits, "fusion_norm": self.fusion_norm, "exit_style": self.exit_style}
