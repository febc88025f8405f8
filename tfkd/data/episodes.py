"""Few-shot episodes: class splits kept as data, a seeded M-way k-shot sampler with static shapes,
and the mean +- 95% confidence interval used to report episode accuracies.

The sampler draws ``k_max`` support examples per class and a mask selects the first ``k`` of them,
so a step traced under ``tf.function`` keeps one shape while k changes (progressive schedules).
Episode ``i`` of a sampler is a pure function of ``(seed, i)``: every method evaluated with the same
seed sees the same episodes, so differences between methods are paired.
"""
import dataclasses
import math
import os

import numpy as np
import tensorflow as tf

from tfkd import io
from tfkd.errors import ConfigError, DataError

SPLITS = ("base", "validation", "novel")


def load_class_split(path, class_groups):
    """{split: sorted class ids} from a JSON split file listing groups per split.

    ``class_groups[c]`` is the key of class ``c`` in the file: its group (glyphs: alphabet), its
    class name or its id (see tfkd.data.sources.class_keys); numbers in the file match ids. Every group must appear in exactly one split,
    and every listed group must exist.
    """
    if not os.path.exists(path):
        raise DataError(f"missing class-split file {path}")
    spec = io.read_json(path, DataError, "a JSON object mapping each split to its class groups")
    class_groups = np.asarray(class_groups).astype(str)
    known = set(class_groups.tolist())
    seen = {}
    out = {}
    for split in SPLITS:
        if split not in spec:
            raise DataError(f"{path}: missing split {split!r}; expected keys {list(SPLITS)}")
        spec[split] = [str(g) for g in spec[split]]
        for group in spec[split]:
            if group not in known:
                raise DataError(f"{path}: {split} lists unknown group {group!r}; known: {sorted(known)}")
            if group in seen:
                raise DataError(f"{path}: group {group!r} is in both {seen[group]!r} and {split!r}")
            seen[group] = split
        out[split] = np.flatnonzero(np.isin(class_groups, spec[split]))
    missing = sorted(known - set(seen))
    if missing:
        raise DataError(f"{path}: groups {missing} are in no split")
    return out


@dataclasses.dataclass
class Episode:
    classes: np.ndarray  # (n_way,) class ids
    support: np.ndarray  # (n_way, k_max) example indices
    query: np.ndarray  # (n_way, n_query) example indices
    support_mask: np.ndarray  # (n_way, k_max) bool: the first k_shot are real support examples
    class_index: np.ndarray = None  # (n_way,) position of each class in the sampler's sorted classes
    index: int = 0  # the episode number i (episode i is a function of (seed, i))


class EpisodeSampler:
    """Seeded M-way k-shot episodes over ``classes`` of a labelled set.

    Args:
      labels: (N,) class id of every example.
      classes: the class ids episodes may use (one split).
      n_way, k_shot, n_query: episode size; support and query are disjoint.
      k_max: support examples drawn per class (>= k_shot); the mask keeps the first k_shot.
      seed: episode i is a function of (seed, i) only.
      class_groups: optional (num_classes,) group of each class (e.g. alphabet); with
        ``within_group=True`` all classes of an episode come from one group (harder episodes).
    """

    def __init__(self, labels, classes, n_way, k_shot, n_query, seed=0, k_max=None, class_groups=None,
                 within_group=False):
        self.labels = np.asarray(labels)
        self.classes = np.asarray(sorted(set(np.asarray(classes).tolist())))
        self.n_way, self.k_shot, self.n_query = int(n_way), int(k_shot), int(n_query)
        self.k_max = int(k_max if k_max is not None else k_shot)
        self.seed = int(seed)
        if self.n_way < 2:
            raise ConfigError(f"n_way={n_way}: expected at least 2 classes per episode")
        if not 1 <= self.k_shot <= self.k_max:
            raise ConfigError(f"k_shot={k_shot}, k_max={self.k_max}: expected 1 <= k_shot <= k_max")
        if self.n_query < 1:
            raise ConfigError(f"n_query={n_query}: expected >= 1")
        if len(self.classes) < self.n_way:
            raise ConfigError(f"n_way={n_way} but the split has only {len(self.classes)} classes")
        self.by_class = {int(c): np.flatnonzero(self.labels == c) for c in self.classes}
        need = self.k_max + self.n_query
        short = {c: len(idx) for c, idx in self.by_class.items() if len(idx) < need}
        if short:
            worst = sorted(short.items(), key=lambda kv: kv[1])[:5]
            raise DataError(f"k_max + n_query = {need} examples per class are needed, but {len(short)} "
                            f"classes have fewer (class: count) {worst}")
        self.groups = None
        if within_group:
            if class_groups is None:
                raise ConfigError("within_group=True needs class_groups")
            groups = np.asarray(class_groups)[self.classes]
            self.groups = [self.classes[groups == g] for g in sorted(set(groups.tolist()))]
            self.groups = [g for g in self.groups if len(g) >= self.n_way]
            if not self.groups:
                raise ConfigError(f"no group has {n_way} classes for within-group episodes")

    def episode(self, index):
        rng = np.random.default_rng([self.seed, int(index)])
        pool = self.classes if self.groups is None else self.groups[rng.integers(len(self.groups))]
        classes = rng.choice(pool, size=self.n_way, replace=False)
        support = np.empty((self.n_way, self.k_max), np.int64)
        query = np.empty((self.n_way, self.n_query), np.int64)
        for i, c in enumerate(classes):
            picked = rng.choice(self.by_class[int(c)], size=self.k_max + self.n_query, replace=False)
            support[i], query[i] = picked[: self.k_max], picked[self.k_max:]
        mask = np.zeros((self.n_way, self.k_max), bool)
        mask[:, : self.k_shot] = True
        return Episode(classes=classes, support=support, query=query, support_mask=mask,
                       class_index=np.searchsorted(self.classes, classes).astype(np.int32), index=int(index))

    def __iter__(self):
        index = 0
        while True:
            yield self.episode(index)
            index += 1


def mean_confidence_interval(accuracies, z=1.96):
    """(mean, half-width) of the normal-approximation 95% interval: z * std / sqrt(N), with the
    population std (ddof=0), as in the few-shot literature's evaluation code (Chen et al. 2019)."""
    acc = np.asarray(accuracies, np.float64)
    if acc.size == 0:
        raise ValueError("no accuracies")
    if acc.size == 1:
        return float(acc[0]), float("nan")
    return float(acc.mean()), float(z * acc.std() / math.sqrt(acc.size))


# ---------------------------------------------------------------- tf.data episodes


def episode_arrays(features, labels, episode):
    """Gathers an Episode's indices into the static-shape dict the methods consume."""
    n_way, n_query = episode.query.shape
    return {
        "support": features[episode.support].astype(np.float32),
        "support_mask": episode.support_mask,
        "query": features[episode.query.reshape(-1)].astype(np.float32),
        "query_labels": np.repeat(np.arange(n_way), n_query).astype(np.int32),
        "class_index": episode.class_index,
        "episode_index": np.int32(episode.index),
    }


def episode_signature(sampler: EpisodeSampler, feature_dim, batch=None):
    lead = () if batch is None else (batch,)
    n_way, k_max, q = sampler.n_way, sampler.k_max, sampler.n_query
    return {
        "support": tf.TensorSpec(lead + (n_way, k_max, feature_dim), tf.float32),
        "support_mask": tf.TensorSpec(lead + (n_way, k_max), tf.bool),
        "query": tf.TensorSpec(lead + (n_way * q, feature_dim), tf.float32),
        "query_labels": tf.TensorSpec(lead + (n_way * q,), tf.int32),
        "class_index": tf.TensorSpec(lead + (n_way,), tf.int32),
        "episode_index": tf.TensorSpec(lead, tf.int32),
    }


def episode_dataset(features, labels, sampler: EpisodeSampler, first_episode=0, episodes_per_batch=None,
                    num_episodes=None):
    """tf.data stream of episodes ``first_episode, first_episode + 1, ...`` of ``sampler`` (endless,
    or ``num_episodes`` long). With ``episodes_per_batch`` they come in batches with a leading
    episode dimension, which tf.distribute splits over replicas."""
    def generate():
        index = first_episode
        while num_episodes is None or index < first_episode + num_episodes:
            yield episode_arrays(features, labels, sampler.episode(index))
            index += 1

    ds = tf.data.Dataset.from_generator(generate, output_signature=episode_signature(sampler, features.shape[1]))
    if episodes_per_batch:
        ds = ds.batch(episodes_per_batch, drop_remainder=True)
    return ds.prefetch(2)
