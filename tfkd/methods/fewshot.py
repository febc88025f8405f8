"""Episodic few-shot methods on pre-computed features (progressive-distillation paper, Section 3).

* ``cosine``: the cosine prototypical classifier alone (embedding f and scale meta-trained on base
  episodes; nothing to train when f is absent).
* ``gen``: the same student, with its support set augmented by the feature generator
  G(x, z, q): for every class, ``num_generated`` features are generated from randomly chosen real
  support features x and the class mean q; the query loss back-propagates through the prototypes
  into G (Wang et al. 2018's meta-learned hallucination, extended with q).

An episode batch is a dict of static-shape tensors (see ``episode_arrays``): ``support``
(n_way, k_max, d), ``support_mask`` (n_way, k_max), ``query`` (n_way * n_query, d), ``query_labels``.
"""
import warnings

import keras
import tensorflow as tf

from tfkd import losses, method_config
from tfkd.data.episodes import episode_arrays, episode_dataset  # noqa: F401  (re-exported)
from tfkd.distribute import replica_scale
from tfkd.methods.base import ConfigSection, DistributedFit
from tfkd.models.cosine_classifier import CosineClassifier
from tfkd.models.feature_generator import FeatureGenerator
from tfkd.registry import METHODS


class SavesSeedStates:
    """Mixin for a keras.Model: its weight files also hold the state of every SeedGenerator inside
    it (Keras saves only variables), so a resumed run draws the same noise as an uninterrupted one."""

    def _all_seed_generators(self):
        return [g for layer in self._flatten_layers(include_self=True) for g in getattr(layer, "_seed_generators", [])]

    def save_own_variables(self, store):
        super().save_own_variables(store)
        for i, generator in enumerate(self._all_seed_generators()):
            store[f"seed_generator_{i}"] = keras.ops.convert_to_numpy(generator.state)

    def load_own_variables(self, store):
        own = {k: store[k] for k in store.keys() if not k.startswith("seed_generator_")}
        super().load_own_variables(own)
        for i, generator in enumerate(self._all_seed_generators()):
            if f"seed_generator_{i}" in store.keys():
                generator.state.assign(store[f"seed_generator_{i}"])


class EpisodicMethod(SavesSeedStates, ConfigSection, DistributedFit, keras.Model):
    """Shared episode loop: query cross-entropy, accuracy metrics, evaluation over episodes.

    Episodes may carry a leading batch dimension (several episodes per step); the loss is the mean
    query cross-entropy over all of them.
    """

    task = "fewshot"  # trained by tfkd.train_fewshot on feature files (bin/train dispatches on it)
    config_section = method_config.EpisodicConfig

    @classmethod
    def sampler_shots(cls, cfg, fewshot_cfg):
        """(k_shot, k_max) of the meta-training episode sampler."""
        return fewshot_cfg.k_shot, max(fewshot_cfg.k_max, fewshot_cfg.k_shot)

    @classmethod
    def check_fewshot_config(cls, cfg, fewshot_cfg):
        """Raises ConfigError when this method's knobs contradict config.fewshot."""

    # Hooks of the training driver (tfkd/train_fewshot.py); no-ops by default.
    def use_base_split(self, features, labels, classes):
        """Sees the base-class features before training (distillation builds its teacher here)."""

    def start_training(self, seed, cache_dir=None):
        """Called once before the first epoch of a new (not resumed) run; ``cache_dir`` may keep
        what it computes for later runs with the same inputs."""

    def snapshot_at_k(self):
        """Values of ``k_train`` at which the driver saves a snapshot (tfkd.runs.KSnapshots); () = none."""
        return ()

    def __init__(self, feature_dim, embedding_units=(), scale_init=75.0, weight_decay=0.0, **kwargs):
        super().__init__(**kwargs)
        self.feature_dim = int(feature_dim)
        self.weight_decay = float(weight_decay)
        self.classifier = CosineClassifier(embedding_units, scale_init, name="student")
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy]

    def fit(self, *args, shuffle=False, **kwargs):
        """keras.Model.fit on an episode dataset (``episode_dataset``). Variables and optimizer state
        are created first, in the model's strategy scope: a subclassed model otherwise builds on its
        first traced step, after the optimizer has been built for no variables. Episode order comes
        from the sampler (``shuffle`` stays False)."""
        self.check_ready()
        with self.distribute_strategy.scope():
            if not self.built:
                self.build_from_dim()
            if not getattr(self.optimizer, "built", False):
                self.optimizer.build(self.trainable_variables)
        with warnings.catch_warnings():
            # Validation episodes are a finite stream (``num_episodes``) so that every epoch is
            # scored on the same episodes; Keras warns each time such a stream ends, by design here.
            warnings.filterwarnings("ignore", message="Your input ran out of data")
            return super().fit(*args, shuffle=shuffle, **kwargs)

    def check_ready(self):
        """Raises ValueError when something ``fit`` needs was not given (e.g. a teacher's data)."""

    def support_set(self, episode, training):
        """(support, mask) the student is built from; ``gen`` adds generated features."""
        return episode["support"], episode["support_mask"]

    def call(self, episode, training=None):
        support, mask = self.support_set(episode, training)
        return self.classifier((support, mask, episode["query"]))

    def build_from_dim(self, batch=None):
        """Creates the variables with one zero episode (subclassed models build on first call)."""
        lead = () if batch is None else (batch,)
        d = self.feature_dim
        self({"support": tf.zeros(lead + (2, 1, d)), "support_mask": tf.ones(lead + (2, 1), tf.bool),
              "query": tf.zeros(lead + (2, d)), "query_labels": tf.zeros(lead + (2,), tf.int32),
              "class_index": tf.zeros(lead + (2,), tf.int32), "episode_index": tf.zeros(lead, tf.int32)})
        return self

    def weight_penalty(self, variables):
        """Coupled L2 (``weight_decay``, config.train.weight_decay) on the dense kernels among
        ``variables``: the embedding f and G are regularised; the cosine scale, a temperature and
        biases are not."""
        if not self.weight_decay:
            return 0.0
        return self.weight_decay * losses.l2_penalty([v for v in variables if v.path.endswith("kernel")])

    def train_step(self, episode):
        variables = self.trainable_variables
        with tf.GradientTape() as tape:
            logits = self(episode, training=True)
            loss = losses.cross_entropy(episode["query_labels"], logits)
            scaled = replica_scale(loss + self.weight_penalty(variables))
        if variables:
            self.optimizer.apply_gradients(zip(tape.gradient(scaled, variables), variables))
        self.loss_tracker.update_state(loss)
        self.accuracy.update_state(episode["query_labels"], logits)
        return {m.name: m.result() for m in self.metrics}

    def test_step(self, episode):
        logits = self(episode, training=False)
        self.loss_tracker.update_state(losses.cross_entropy(episode["query_labels"], logits))
        self.accuracy.update_state(episode["query_labels"], logits)
        return {m.name: m.result() for m in self.metrics}

    def predictor(self):
        """fn(support, mask, query) -> logits for one unbatched episode (any way / shot counts).
        Built once per model: evaluation asks for it per protocol and shot count, and a new
        tf.function per request would be traced again each time."""
        if "_episode_predictor" not in self.__dict__:  # kept out of Keras' attribute tracking
            self.__dict__["_episode_predictor"] = episode_predictor([self])
        return self.__dict__["_episode_predictor"]

    def evaluate_episodes(self, features, labels, sampler, num_episodes):
        """Mean +- 95% CI and per-episode accuracies on episodes 0 .. num_episodes - 1 of ``sampler``."""
        from tfkd import evaluation

        return evaluation.episode_protocol(self.predictor(), features, labels, sampler, num_episodes)

    def get_config(self):
        return {"feature_dim": self.feature_dim, "name": self.name}


def episode_predictor(models):
    """fn(support (n_way, k_max, d), mask (n_way, k_max), query (n_q, d)) -> scores (n_q, n_way) for
    unbatched episodes: one model's logits, or for several (an ensemble) the log of the mean of
    their probabilities. One tf.function whose signature admits any way and shot count, so it is
    traced once, whatever the protocols ask."""
    d = models[0].feature_dim
    signature = [tf.TensorSpec((None, None, d), tf.float32, name="support"),
                 tf.TensorSpec((None, None), tf.bool, name="mask"),
                 tf.TensorSpec((None, d), tf.float32, name="query")]

    @tf.function(input_signature=signature)
    def predict(support, mask, query):
        episode = {"support": support[None], "support_mask": mask[None], "query": query[None]}
        if len(models) == 1:
            return models[0](episode, training=False)[0]
        probs = [tf.nn.softmax(tf.cast(m(episode, training=False)[0], tf.float32)) for m in models]
        return tf.math.log(tf.maximum(tf.add_n(probs) / len(probs), 1e-30))

    return predict


@METHODS.register("cosine")
class CosinePrototypes(EpisodicMethod):
    """Baseline without generation."""


@METHODS.register("gen")
class GeneratorAugmented(EpisodicMethod):
    """The student's support set is filled up with G(x, z, q) features, trained end to end."""

    config_section = method_config.GeneratorAugmentedConfig

    def __init__(self, feature_dim, num_generated=4, generator_hidden=(512,), noise_dim=0, seed=0, **kwargs):
        super().__init__(feature_dim, **kwargs)
        self.num_generated = int(num_generated)
        self.generator = FeatureGenerator(feature_dim, generator_hidden, noise_dim, seed=seed, name="generator")
        self.pick_seed = keras.random.SeedGenerator(seed + 1, name="pick_seed")
        # Set (a (2,) int tensor) by the few-shot SavedModel: stateless noise, so the same request
        # always gets the same answer and no RNG state lives in the served graph.
        self.serving_seed = None

    @property
    def max_generated(self):
        """Generated features per class in the static shape (a subclass may mask some out)."""
        return self.num_generated

    def generated_mask(self, real_count):
        """(..., n_way) real shots per class -> (..., n_way, max_generated) which generated features count."""
        return tf.ones(tf.concat([tf.shape(real_count), [self.max_generated]], 0), tf.bool)

    def episode_randomness(self, episode_index, n_way, dtype):
        """Per-episode (uniform picks (E, n_way, G), noise (E * n_way * G, noise_dim)) from stateless
        seeds (generator seed, episode index): the same episode gets the same noise however the
        episodes are batched or split over replicas, and after a resume."""
        index = tf.reshape(tf.cast(episode_index, tf.int32), (-1,))
        base = tf.fill(tf.shape(index), tf.constant(self.generator.seed, tf.int32))
        g, noise_dim = self.max_generated, self.generator.noise_dim
        picks = tf.map_fn(lambda s: tf.random.stateless_uniform((n_way, g), seed=s),
                          tf.stack([base, index], axis=1), fn_output_signature=tf.float32)
        noise = tf.map_fn(lambda s: tf.random.stateless_normal((n_way * g, noise_dim), seed=s, dtype=dtype),
                          tf.stack([base + 7919, index], axis=1), fn_output_signature=dtype)
        return picks, tf.reshape(noise, (-1, noise_dim))

    def generate(self, support, mask, episode_index=None):
        """(..., n_way, k_max, d) support, (..., n_way, k_max) mask -> (..., n_way, max_generated, d):
        G(x, z, q) with x drawn uniformly among each class's real (unmasked) shots, q the class mean.
        With ``episode_index`` (training episodes) the randomness is a function of the episode;
        without it (evaluation) it comes from the model's SeedGenerators (or the serving seed)."""
        maskf = tf.cast(mask, support.dtype)
        count = tf.reduce_sum(maskf, axis=-1, keepdims=True)  # real shots per class
        class_mean = tf.reduce_sum(support * maskf[..., None], axis=-2) / tf.maximum(count, 1.0)
        lead = tf.shape(support)[:-2]  # (..., n_way)
        pick_shape = tf.concat([lead, [self.max_generated]], 0)
        noise = None
        if episode_index is not None:
            u, noise = self.episode_randomness(episode_index, support.shape[-3], support.dtype)
            u = tf.reshape(u, pick_shape)
        elif self.serving_seed is None:
            u = keras.random.uniform(pick_shape, seed=self.pick_seed)
        else:
            u = tf.random.stateless_uniform(pick_shape, seed=self.serving_seed)
        pick = tf.cast(tf.minimum(tf.floor(u * count), count - 1), tf.int32)
        x = tf.gather(support, pick, batch_dims=len(support.shape) - 2)
        q = tf.broadcast_to(class_mean[..., None, :], tf.shape(x))
        d = support.shape[-1]
        if noise is None and self.serving_seed is not None:
            noise = tf.random.stateless_normal(tf.stack([tf.reduce_prod(pick_shape), self.generator.noise_dim]),
                                               seed=self.serving_seed + 1, dtype=support.dtype)
        generated = self.generator((tf.reshape(x, (-1, d)), tf.reshape(q, (-1, d))), noise=noise)
        return tf.reshape(generated, tf.shape(x))

    def support_set(self, episode, training):
        support, mask = episode["support"], episode["support_mask"]
        generated = self.generate(support, mask, episode.get("episode_index") if training else None)
        extra = self.generated_mask(tf.reduce_sum(tf.cast(mask, tf.int32), axis=-1))
        return tf.concat([support, generated], axis=-2), tf.concat([mask, extra], axis=-1)

    def get_config(self):
        return {**super().get_config(), "num_generated": self.num_generated}
