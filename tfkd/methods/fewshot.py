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
import keras
import ml_collections
import numpy as np
import tensorflow as tf

from tfkd import losses
from tfkd.data.episodes import EpisodeSampler, mean_confidence_interval
from tfkd.distribute import replica_scale
from tfkd.models.cosine_classifier import CosineClassifier
from tfkd.models.feature_generator import FeatureGenerator
from tfkd.registry import FEWSHOT_METHODS


def episode_arrays(features, labels, episode):
    """Gathers an Episode's indices into the static-shape dict the methods consume."""
    n_way, n_query = episode.query.shape
    return {
        "support": features[episode.support].astype(np.float32),
        "support_mask": episode.support_mask,
        "query": features[episode.query.reshape(-1)].astype(np.float32),
        "query_labels": np.repeat(np.arange(n_way), n_query).astype(np.int32),
    }


def episode_dataset(features, labels, sampler: EpisodeSampler, first_episode=0):
    """Endless tf.data stream of episodes ``first_episode, first_episode + 1, ...`` of ``sampler``."""
    def generate():
        index = first_episode
        while True:
            yield episode_arrays(features, labels, sampler.episode(index))
            index += 1

    d = features.shape[1]
    n_way, k_max, q = sampler.n_way, sampler.k_max, sampler.n_query
    signature = {
        "support": tf.TensorSpec((n_way, k_max, d), tf.float32),
        "support_mask": tf.TensorSpec((n_way, k_max), tf.bool),
        "query": tf.TensorSpec((n_way * q, d), tf.float32),
        "query_labels": tf.TensorSpec((n_way * q,), tf.int32),
    }
    return tf.data.Dataset.from_generator(generate, output_signature=signature).prefetch(2)


class EpisodicMethod(keras.Model):
    """Shared episode loop: query cross-entropy, accuracy metrics, evaluation over episodes."""

    @classmethod
    def default_config(cls):
        return ml_collections.ConfigDict({"embedding_units": (), "scale_init": 75.0})

    @classmethod
    def check_config(cls, cfg):
        pass

    def __init__(self, feature_dim, embedding_units=(), scale_init=75.0, **kwargs):
        super().__init__(**kwargs)
        self.feature_dim = int(feature_dim)
        self.classifier = CosineClassifier(embedding_units, scale_init, name="student")
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy]

    def support_set(self, episode, training):
        """(support, mask) the student is built from; ``gen`` adds generated features."""
        return episode["support"], episode["support_mask"]

    def call(self, episode, training=None):
        support, mask = self.support_set(episode, training)
        return self.classifier((support, mask, episode["query"]))

    def train_step(self, episode):
        with tf.GradientTape() as tape:
            logits = self(episode, training=True)
            loss = losses.cross_entropy(episode["query_labels"], logits)
            scaled = replica_scale(loss)
        variables = self.trainable_variables
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

    def episode_accuracies(self, features, labels, sampler, num_episodes):
        """Per-episode query accuracy on episodes 0 .. num_episodes - 1 of ``sampler``."""
        predict = tf.function(lambda ep: tf.argmax(self(ep, training=False), -1, output_type=tf.int32))
        out = []
        for index in range(num_episodes):
            ep = episode_arrays(features, labels, sampler.episode(index))
            out.append(float(np.mean(predict(ep).numpy() == ep["query_labels"])))
        return np.asarray(out)

    def evaluate_episodes(self, features, labels, sampler, num_episodes):
        accs = self.episode_accuracies(features, labels, sampler, num_episodes)
        mean, half_width = mean_confidence_interval(accs)
        return {"mean": mean, "ci95": half_width, "episodes": int(num_episodes), "accuracies": accs.tolist()}


@FEWSHOT_METHODS.register("cosine")
class CosinePrototypes(EpisodicMethod):
    """Baseline without generation."""


@FEWSHOT_METHODS.register("gen")
class GeneratorAugmented(EpisodicMethod):
    """The student's support set is filled up with G(x, z, q) features, trained end to end."""

    @classmethod
    def default_config(cls):
        cfg = super().default_config()
        cfg.num_generated = 4  # generated features per class and episode
        cfg.generator_hidden = (512,)
        cfg.noise_dim = 0  # 0 = feature dimension
        cfg.seed = 0
        return cfg

    def __init__(self, feature_dim, num_generated=4, generator_hidden=(512,), noise_dim=0, seed=0, **kwargs):
        super().__init__(feature_dim, **kwargs)
        self.num_generated = int(num_generated)
        self.generator = FeatureGenerator(feature_dim, generator_hidden, noise_dim, seed=seed, name="generator")
        self.pick_seed = keras.random.SeedGenerator(seed + 1, name="pick_seed")

    def support_set(self, episode, training):
        support, mask = episode["support"], episode["support_mask"]
        n_way, k_max, d = support.shape
        maskf = tf.cast(mask, support.dtype)
        count = tf.reduce_sum(maskf, axis=1, keepdims=True)  # real shots per class
        class_mean = tf.reduce_sum(support * maskf[..., None], axis=1) / count
        # Seed examples x: uniformly among each class's real (unmasked) shots.
        u = keras.random.uniform((n_way, self.num_generated), seed=self.pick_seed)
        pick = tf.cast(tf.minimum(tf.floor(u * count), count - 1), tf.int32)
        x = tf.gather(support, pick, batch_dims=1)
        q = tf.repeat(class_mean[:, None], self.num_generated, axis=1)
        generated = self.generator((tf.reshape(x, (-1, d)), tf.reshape(q, (-1, d))))
        generated = tf.reshape(generated, (n_way, self.num_generated, d))
        support = tf.concat([support, generated], axis=1)
        mask = tf.concat([mask, tf.ones((n_way, self.num_generated), tf.bool)], axis=1)
        return support, mask
