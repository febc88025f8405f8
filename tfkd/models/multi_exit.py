"""The multi-exit network contract every backbone implements, and the shared parts.

A backbone is split into K stages (MetaDistiller paper, Sec. 4.2). ``call`` returns a dict of
logits ``exit_k`` (for the stages in ``exits``) and ``final``; with ``return_features=True`` also
``stage_1 .. stage_K`` (the stage feature maps the label generator fuses) and the exits'
features. ``predict_final`` / ``embed`` run only the inference path (stem, stages, final head),
which is all an export keeps.

Subclasses implement ``_create_backbone`` (setting ``stage_channels``) and ``backbone(images,
training) -> [F_1 .. F_K]``, and may override ``head_features`` (what happens between the last
stage and the classifier: e.g. MobileNetV2's 1x1 conv to 1280, VGG's pooling / FC layers).
Exits are BYOT bottleneck heads (``exit_style = "bottleneck"``), average pooling + one dense
layer (``"pool"``, VGG's default) or a plain conv chain (``"conv_chain"``: ``ConvChainExit``); a
backbone's class sets its default and the ``exit_style`` argument (``config.model.exit_head``)
replaces it.
"""
import keras
from keras import layers, ops

from tfkd.models.heads import classifier_head
from tfkd.models.layers import BN_MOMENTUM, PoolExit, bottleneck_exit, logits_dtype, synchronized_batchnorm

EXIT_STYLES = ("bottleneck", "pool", "conv_chain")


class MultiExitNetwork(keras.Model):
    num_stages = 4
    default_exits = (1, 2, 3)
    exit_style = "bottleneck"
    supports_feature_hint = True  # exit features reach the last stage's shape (BYOT hint)

    def __init__(self, num_classes=10, input_shape=(32, 32, 3), mean=None, std=None, exits=None,
                 bn_momentum=BN_MOMENTUM, sync_bn=False, head="linear", exit_style=None, **kwargs):
        super().__init__(**kwargs)
        if exit_style is not None:
            if exit_style not in EXIT_STYLES:
                raise ValueError(f"exit_style must be one of {EXIT_STYLES}, got {exit_style!r}")
            self.exit_style = exit_style
            # The feature hint needs exit features of the last stage's shape; a pool exit has none.
            self.supports_feature_hint = type(self).supports_feature_hint and exit_style != "pool"
        self.num_classes = int(num_classes)
        self.image_shape = tuple(int(s) for s in input_shape)
        channels = self.image_shape[-1]
        self.mean = tuple(float(m) for m in (mean if mean is not None else [127.5] * channels))
        self.std = tuple(float(s) for s in (std if std is not None else [127.5] * channels))
        self.exits = tuple(int(e) for e in (exits if exits is not None else self.default_exits))
        if any(not 1 <= e < self.num_stages for e in self.exits):
            raise ValueError(f"exits must be stages in 1..{self.num_stages - 1}, got {self.exits}")
        self.bn_momentum, self.sync_bn, self.head = bn_momentum, bool(sync_bn), head
        with synchronized_batchnorm(self.sync_bn):
            self._create_backbone()
            self.pool = layers.GlobalAveragePooling2D(name="pool")
            self.classifier = classifier_head(self.head, self.num_classes, dtype=logits_dtype())
            self.exit_heads = [self._create_exit(k) for k in self.exits]

    # ------------------------------------------------------------------ subclass API

    def _create_backbone(self):
        raise NotImplementedError

    def backbone(self, images, training=None):
        """Stage feature maps [F_1, .., F_K]."""
        raise NotImplementedError

    def head_features(self, last_stage, training=None):
        """Last stage map -> the vector the final classifier sees (default: global average pool)."""
        return self.pool(last_stage)

    def arch_config(self):
        """Constructor arguments beyond the common ones (for get_config)."""
        return {}

    def _create_exit(self, k):
        if self.exit_style == "pool":
            return PoolExit(self.num_classes, name=f"exit_{k}")
        # A conv chain's middle width is the second stage's (the reference's choice).
        return bottleneck_exit(self.exit_style, self.stage_channels[k:], self.num_classes, self.stage_channels[1],
                               self.bn_momentum, f"exit_{k}")

    # ------------------------------------------------------------------ shared

    @property
    def output_names_ordered(self):
        return [f"exit_{k}" for k in self.exits] + ["final"]

    def normalize(self, images):
        x = ops.cast(images, self.compute_dtype)
        mean = ops.convert_to_tensor(self.mean, dtype=self.compute_dtype)
        std = ops.convert_to_tensor(self.std, dtype=self.compute_dtype)
        return (x - mean) / std

    def call(self, images, training=None, return_features=False):
        stage_maps = self.backbone(images, training=training)
        logits, features = {}, {f"stage_{i + 1}": f for i, f in enumerate(stage_maps)}
        for k, head in zip(self.exits, self.exit_heads):
            logits[f"exit_{k}"], features[f"exit_{k}_features"] = head(
                stage_maps[k - 1], training=training, return_features=True)
        logits["final"] = self.classifier(self.head_features(stage_maps[-1], training=training))
        return (logits, features) if return_features else logits

    def final_logits(self, images, training=None):
        """The final head only, skipping the exits' compute (baseline training, inference)."""
        return self.classifier(self.head_features(self.backbone(images, training=training)[-1], training=training))

    def embed(self, images):
        """The vector the final classifier sees (inference mode): the few-shot feature space."""
        return self.head_features(self.backbone(images, training=False)[-1], training=False)

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
        return {**super().get_config(), "num_classes": self.num_classes, "input_shape": self.image_shape,
                "mean": self.mean, "std": self.std, "exits": self.exits, "bn_momentum": self.bn_momentum,
                "sync_bn": self.sync_bn, "head": self.head, "exit_style": self.exit_style, **self.arch_config()}
