"""Classifier heads: the usual linear layer, and the cosine head of "A Closer Look at Few-shot
Classification" (Chen et al. 2019, Baseline++), the paper's "cosine" pre-trained features:
logit_c = scale * cos(w_c, x), with a learnable scale. Features trained this way suit the cosine
prototypical classifier used on novel classes."""
import keras
from keras import layers, ops


@keras.saving.register_keras_serializable("tfkd")
class CosineDense(layers.Layer):
    def __init__(self, units, scale_init=10.0, **kwargs):
        super().__init__(**kwargs)
        self.units, self.scale_init = int(units), float(scale_init)

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units), initializer="glorot_uniform",
                                      name="kernel")
        self.scale = self.add_weight(shape=(), initializer=keras.initializers.Constant(self.scale_init),
                                     name="scale")

    def call(self, x):
        x = ops.cast(x, self.compute_dtype)
        x = x / ops.maximum(ops.norm(x, axis=-1, keepdims=True), 1e-6)
        w = ops.cast(self.kernel, self.compute_dtype)
        w = w / ops.maximum(ops.norm(w, axis=0, keepdims=True), 1e-6)
        return ops.cast(self.scale, self.compute_dtype) * ops.matmul(x, w)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "scale_init": self.scale_init}


def classifier_head(kind, num_classes, dtype=None, name="classifier"):
    """'linear' (Dense) or 'cosine' (CosineDense) head."""
    if kind == "linear":
        return layers.Dense(num_classes, dtype=dtype, name=name)
    if kind == "cosine":
        return CosineDense(num_classes, dtype=dtype, name=name)
    raise ValueError(f"head must be 'linear' or 'cosine', got {kind!r}")
