"""Multi-exit ResNets (CIFAR-style 3x3 stem by default; ImageNet 7x7 stem + max-pool optional).

The network is divided into 4 stages. After each of stages 1..3 sits a BYOT-style exit head
(Zhang et al. 2019, "Be Your Own Teacher"): bottleneck blocks with stride 2 bring the stage's
feature map to the final stage's resolution and width, then global pooling and a dense layer.
``call`` returns a dict of logits ``exit_1 .. exit_3, final``; with ``return_features=True`` it
also returns the stage feature maps (consumed by the MetaDistiller label generator) and the
exits' pre-pooling features (BYOT's feature hint). ``predict_final`` runs only the inference path
(backbone + final head), which is all that is exported.
"""
import keras
from keras import layers, ops

from tfkd.models.layers import (BN_MOMENTUM, BasicBlock, Bottleneck, _bn, _conv)
from tfkd.models.multi_exit import MultiExitNetwork
from tfkd.registry import BACKBONES

# depth -> (block type, blocks per stage)
RESNET_SPECS = {
    10: ("basic", (1, 1, 1, 1)),  # Chen et al.'s few-shot backbone; half ResNet18's blocks (fast tests)
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
STAGE_WIDTHS = (64, 128, 256, 512)


@keras.saving.register_keras_serializable("tfkd")
class MultiExitResNet(MultiExitNetwork):
    """ResNet-{10,18,34,50,101,152} with exits after stages 1..3.

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
        if depth not in RESNET_SPECS:
            raise ValueError(f"ResNet depth must be one of {sorted(RESNET_SPECS)}, got {depth}")
        if stem not in ("cifar", "imagenet"):
            raise ValueError(f"stem must be 'cifar' or 'imagenet', got {stem!r}")
        self.depth, self.width, self.stem_type = depth, float(width), stem
        super().__init__(num_classes=num_classes, input_shape=input_shape, mean=mean, std=std, exits=exits,
                         bn_momentum=bn_momentum, sync_bn=sync_bn, head=head, **kwargs)

    def _create_backbone(self):
        block_type, counts = RESNET_SPECS[self.depth]
        block_cls = BasicBlock if block_type == "basic" else Bottleneck
        widths = [max(4, int(round(w * self.width))) for w in STAGE_WIDTHS]
        self.stage_channels = tuple(w * block_cls.expansion for w in widths)
        bn_momentum = self.bn_momentum
        if self.stem_type == "cifar":
            self.stem_conv = _conv(widths[0], 3, 1, "stem_conv")
        else:
            self.stem_conv = _conv(widths[0], 7, 2, "stem_conv")
        self.stem_bn = _bn("stem_bn", bn_momentum)
        self.stem_pool = (layers.MaxPooling2D(3, 2, padding="same", name="stem_pool")
                          if self.stem_type == "imagenet" else None)
        self.stages = []
        for s, (w, n) in enumerate(zip(widths, counts)):
            blocks = [block_cls(w, stride=(1 if s == 0 else 2) if b == 0 else 1, bn_momentum=bn_momentum,
                                name=f"stage{s + 1}_block{b}") for b in range(n)]
            self.stages.append(blocks)

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

    def arch_config(self):
        return {"depth": self.depth, "width": self.width, "stem": self.stem_type}


for _depth in RESNET_SPECS:
    BACKBONES.register(f"resnet{_depth}")(
        lambda _d=_depth, **kw: MultiExitResNet(depth=_d, **kw))
