"""Cosine-distance prototypical classifier (Chen et al. 2019, "A Closer Look at Few-shot
Classification"; the student/teacher of progressive distillation, Appendix A).

prototype_c = mean over the (masked) support examples of class c of f(x);
logit(q, c) = scale * cos(f(q), prototype_c), with a learnable scale (paper init 75 or 150) and
an optional embedding f (a 2-layer MLP, or the identity when ``embedding_units`` is empty).
Support comes as (n_way, k_max, d) with a (n_way, k_max) mask, so shapes stay static while the
number of shots changes. Any leading dimensions (a batch of episodes) are carried through:
support (..., n_way, k_max, d), mask (..., n_way, k_max), query (..., n_q, d) -> (..., n_q, n_way).
"""
import keras
from keras import layers, ops


@keras.saving.register_keras_serializable("tfkd")
class CosineClassifier(keras.Model):
    def __init__(self, embedding_units=(), scale_init=75.0, **kwargs):
        super().__init__(**kwargs)
        self.embedding_units = tuple(int(u) for u in embedding_units)
        self.scale_init = float(scale_init)
        self.embedding = [layers.Dense(u, activation="relu" if i < len(self.embedding_units) - 1 else None,
                                       name=f"embedding_{i}") for i, u in enumerate(self.embedding_units)]
        self.scale = self.add_weight(shape=(), initializer=keras.initializers.Constant(self.scale_init),
                                     name="scale")

    def embed(self, x):
        for layer in self.embedding:
            x = layer(x)
        return x

    def prototypes(self, support, support_mask):
        """(..., n_way, k_max, d), (..., n_way, k_max) -> (..., n_way, d'): masked means of the
        embedded support."""
        embedded = self.embed(support)
        mask = ops.cast(support_mask, embedded.dtype)[..., None]
        return ops.sum(embedded * mask, axis=-2) / ops.maximum(ops.sum(mask, axis=-2), 1.0)

    def call(self, inputs):
        """inputs = (support (..., n_way, k_max, d), support_mask (..., n_way, k_max),
        query (..., n_q, d)) -> logits (..., n_q, n_way)."""
        support, support_mask, query = inputs
        protos = self.prototypes(support, support_mask)
        q = self.embed(query)
        q = q / ops.maximum(ops.norm(q, axis=-1, keepdims=True), 1e-12)
        protos = protos / ops.maximum(ops.norm(protos, axis=-1, keepdims=True), 1e-12)
        return self.scale * ops.einsum("...qd,...nd->...qn", q, protos)

    def get_config(self):
        return {**super().get_config(), "embedding_units": self.embedding_units, "scale_init": self.scale_init}
