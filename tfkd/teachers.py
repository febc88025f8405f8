"""Frozen teachers for teacher-student methods: a finished ``bin/train`` run of this package (its
best checkpoint; stage feature maps available) or a SavedModel written by ``bin/export`` (logits
only). Checked against the student's data before any training starts.

Layer: beside export and extract (reads run folders through tfkd.runs); the drivers load a teacher
here and pass it to the method (``teacher_kwargs``), so methods never read run folders."""
import os

import tensorflow as tf

from tfkd import runs
from tfkd.errors import ConfigError
from tfkd.method_config import METHOD_CONFIGS


def teacher_kwargs(method_name, method_cfg):
    """``{"teacher": Teacher}`` for a method that distils a frozen teacher (``needs_teacher``),
    loaded from ``config.<method>.teacher``; ``{}`` for every other method."""
    if not METHOD_CONFIGS.get(method_name).needs_teacher:
        return {}
    return {"teacher": Teacher(method_cfg.teacher, f"config.{method_name}.teacher")}


class Teacher:
    """``logits(images)`` and, for checkpoint teachers, ``stages(images)``; always inference mode.
    Not a Keras layer on purpose: the method does not track it, so its weights never enter the
    student's checkpoints or gradients."""

    def __init__(self, path, field):
        self.path, self.field = path, field
        self.network = None
        self.saved = None
        if os.path.exists(os.path.join(path, runs.NETWORK)):
            if not os.path.exists(runs.best_checkpoint(path)):
                raise ConfigError(f"{field}={path!r}: the run has no best checkpoint yet (train it first)")
            # A teacher that was itself a student loads its own teacher only for old checkpoints.
            self.network, config, _, _ = runs.restore_network(path, "best", load_teacher=Teacher)
            self.network.trainable = False
            self.num_classes = self.network.num_classes
            self.image_shape = tuple(self.network.image_shape)
            self.description = f"{config.model.arch} ({config.method}) from {path}"
        elif os.path.exists(os.path.join(path, "saved_model.pb")):
            meta = runs.load_metadata(path)
            if meta.get("task") == "fewshot":
                raise ConfigError(f"{field}={path!r} is a few-shot predictor, not an image classifier")
            self.saved = tf.saved_model.load(path)
            self.num_classes = int(meta["num_classes"])
            self.image_shape = tuple(meta["input_shape"])
            self.description = f"SavedModel {path}"
        else:
            raise ConfigError(f"{field}={path!r}: expected a bin/train run folder (with network.json) or a "
                              f"SavedModel exported by bin/export")

    def check_compatible(self, num_classes, image_shape):
        if self.num_classes != num_classes:
            raise ConfigError(f"{self.field}: the teacher ({self.description}) predicts {self.num_classes} classes, "
                              f"the student's data has {num_classes}")
        if tuple(self.image_shape) != tuple(image_shape):
            raise ConfigError(f"{self.field}: the teacher takes images of shape {self.image_shape}, the student's "
                              f"data has {tuple(image_shape)}")

    def logits(self, images):
        if self.network is not None:
            return tf.stop_gradient(tf.cast(self.network.predict_final(images), tf.float32))
        pixels = tf.cast(tf.clip_by_value(tf.round(tf.cast(images, tf.float32)), 0.0, 255.0), tf.uint8)
        return tf.stop_gradient(self.saved.signatures["logits"](images=pixels)["logits"])

    def require_stages(self):
        if self.network is None:
            raise ConfigError(f"{self.field}: feature-based distillation needs the teacher's stage feature maps; "
                              f"give its bin/train run folder, not a SavedModel")

    def stages(self, images):
        self.require_stages()
        return [tf.stop_gradient(f) for f in self.network.backbone(images, training=False)]

