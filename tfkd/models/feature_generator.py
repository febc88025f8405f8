"""Feature generator G(x, z, q; w) of progressive distillation (Wang et al. 2018's hallucinator,
extended with the class mean q): an MLP on [x, z, q] that outputs a new feature of x's class.

It is residual, x + MLP([x, z, q]), with the last layer initialised at zero: at the start G is the
identity on x, so early meta-training sees real features and is stable. Noise z ~ N(0, I) comes
from a SeedGenerator owned by the model (reproducible, checkpointed with the weights).
"""
import keras
from keras import layers, ops


@keras.saving.register_keras_serializable("tfkd")
class FeatureGenerator(keras.Model):
    def __init__(self, feature_dim, hidden_units=(512,), noise_dim=0, seed=0, **kwargs):
        super().__init__(**kwargs)
        self.feature_dim = int(feature_dim)
        self.hidden_units = tuple(int(u) for u in hidden_units)
        self.noise_dim = int(noise_dim or feature_dim)
        self.seed = int(seed)
        self.hidden = [layers.Dense(u, activation="leaky_relu", name=f"hidden_{i}")
                       for i, u in enumerate(self.hidden_units)]
        self.out = layers.Dense(self.feature_dim, kernel_initializer="zeros", name="out")
        self.seed_generator = keras.random.SeedGenerator(self.seed, name="noise_seed")

    def call(self, inputs, noise=None):
        """inputs = (x (n, d) real features, q (n, d) their class means) -> (n, d) generated."""
        x, q = inputs
        if noise is None:
            noise = keras.random.normal((ops.shape(x)[0], self.noise_dim), seed=self.seed_generator, dtype=x.dtype)
        h = ops.concatenate([x, noise, q], axis=-1)
        for layer in self.hidden:
            h = layer(h)
        return x + self.out(h)

    def get_config(self):
        return {**super().get_config(), "feature_dim": self.feature_dim, "hidden_units": self.hidden_units,
                "noise_dim": self.noise_dim, "seed": self.seed}
