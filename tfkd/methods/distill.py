"""Knowledge distillation into the feature generator (progressive-distillation paper, Sections 3-4).

* ``dist``: a fixed many-shot teacher -- a cosine classifier over all base classes built from
  S_teacher, ``k_teacher`` real examples per class drawn once with ``teacher_seed`` -- guides the
  student (k_train real + generated examples) through Eq. 1:
  L = CE(softmax(s), e_y) + gamma * T^2 * CE(softmax(s / T), softmax(t / T)), T learnable (init 7).
  The teacher's logits are targets: no gradient reaches the teacher; the student's gradient flows
  through the prototypes into G.
* ``progressive``: the same, with k changing over meta-training on a ``log`` or ``linear``
  schedule of the optimizer step:
  - ``direction=weaken``: the student's real shots k_train go from ``k_start`` (e.g. 16) down to
    ``k_end`` (1), and G fills each class up to ``fill_to`` examples (default k_start);
  - ``direction=strengthen``: the teacher's shots k_teacher grow from k_train (``k_start``) to
    ``k_end``; the teacher's prototypes are rebuilt from its first k_teacher examples every step
    (the teacher "re-trained" on the enlarged S_teacher).
  Shapes stay static: k_max examples are sampled and masked by the current k, held in
  non-trainable variables (logged as metrics, so they reach TensorBoard and history.csv).

The teacher has no embedding by default (Appendix A for miniImageNet), or a linear embedding
pre-trained on S_teacher (``teacher_embedding_units=(d,)``, ImageNet setting) before meta-training;
several widths make it an MLP like the student's f (not in the paper: for a student whose f makes
it a better classifier than a linear teacher, benchmarks/fewshot_base_holdout.py).
"""
import hashlib
import io as bytes_io
import math
import os
import warnings
import zipfile

import keras
import numpy as np
import tensorflow as tf

from tfkd import io, losses, method_config, optimizers
from tfkd.distribute import replica_scale
from tfkd.errors import ConfigError, DiskFullError
from tfkd.methods.fewshot import GeneratorAugmented
from tfkd.registry import METHODS


def k_at(step, k_start, k_end, steps, schedule):
    """The scheduled k after ``step`` of ``steps`` optimizer steps (an int; then held at k_end)."""
    frac = min(max(step / steps, 0.0), 1.0) if steps > 0 else 1.0
    if schedule == "log":
        value = math.exp(math.log(k_start) + frac * (math.log(k_end) - math.log(k_start)))
    else:
        value = k_start + frac * (k_end - k_start)
    return int(round(value))


def k_at_tensor(step, k_start, k_end, steps, schedule):
    """``k_at`` in TensorFlow ops (inside the traced train step)."""
    frac = tf.clip_by_value(tf.cast(step, tf.float32) / float(max(steps, 1)), 0.0, 1.0)
    if schedule == "log":
        value = tf.exp(math.log(k_start) + frac * (math.log(k_end) - math.log(k_start)))
    else:
        value = k_start + frac * (k_end - k_start)
    return tf.cast(tf.round(value), tf.int32)


def _read_cached_teacher(path, variables):
    """Loads a cached pre-trained teacher into ``variables`` -> its training accuracy; None when
    there is none, or it is unreadable or of other shapes (then it is trained and rewritten)."""
    try:
        with np.load(path) as f:
            values = [f[f"w{i}"] for i in range(len(variables))]
            accuracy = float(f["accuracy"])
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        return None
    if [v.shape for v in values] != [tuple(v.shape) for v in variables]:
        return None
    for variable, value in zip(variables, values):
        variable.assign(value)
    return accuracy


def _write_cached_teacher(path, variables, accuracy):
    buffer = bytes_io.BytesIO()
    np.savez(buffer, accuracy=np.float64(accuracy), **{f"w{i}": v.numpy() for i, v in enumerate(variables)})
    try:
        io.write_bytes_atomic(path, buffer.getvalue())
    except (OSError, DiskFullError) as e:  # a cache that cannot be written costs a later run time, not this one
        warnings.warn(f"the pre-trained teacher was not cached ({e})")


def teacher_support(features, labels, classes, k_teacher, seed):
    """S_teacher: (C, k_t, d) features and (C,) counts, ``k_teacher`` examples per class of
    ``classes`` (sorted) drawn with ``seed``; k_teacher = 0 takes every example of every class."""
    rng = np.random.default_rng([seed, 1009])
    by_class = [np.flatnonzero(labels == c) for c in classes]
    width = max(len(i) for i in by_class) if k_teacher == 0 else k_teacher
    support = np.zeros((len(classes), width, features.shape[1]), np.float32)
    counts = np.zeros(len(classes), np.int32)
    for i, idx in enumerate(by_class):
        chosen = rng.permutation(idx)[:width]
        support[i, : len(chosen)] = features[chosen]
        counts[i] = len(chosen)
    return support, counts


@METHODS.register("dist")
class Distill(GeneratorAugmented):
    """Fixed many-shot teacher, Eq. 1."""

    config_section = method_config.DistillConfig

    def __init__(self, feature_dim, gamma=5.0, temperature_init=7.0, learn_temperature=True, k_teacher=0,
                 teacher_seed=0, teacher_scale=0.0, teacher_embedding_units=(), teacher_pretrain_steps=200, fill_to=0,
                 ensemble_size=1, ensemble_member=-1, **kwargs):
        super().__init__(feature_dim, **kwargs)
        self.gamma, self.k_teacher_config, self.teacher_seed = float(gamma), int(k_teacher), int(teacher_seed)
        self.teacher_scale = float(teacher_scale or self.classifier.scale_init)
        self.fill_to, self.teacher_pretrain_steps = int(fill_to), int(teacher_pretrain_steps)
        self.temperature = self.add_weight(shape=(), initializer=keras.initializers.Constant(temperature_init),
                                           trainable=bool(learn_temperature), name="temperature")
        # One width: the paper's linear embedding; more: an MLP like the student's f (ReLU between).
        last = len(teacher_embedding_units) - 1
        self.teacher_embedding = [keras.layers.Dense(int(u), activation="relu" if i < last else None,
                                                     name="teacher_embedding" if i == 0 else f"teacher_embedding_{i}")
                                  for i, u in enumerate(teacher_embedding_units)]
        width = self.feature_dim
        for layer in self.teacher_embedding:
            layer.build((None, width))
            width = layer.units
            layer.trainable = False  # only the teacher pre-training changes it
        self.k_train = self.add_weight(shape=(), dtype="int32", initializer="zeros", trainable=False, name="k_train")
        self.k_teacher = self.add_weight(shape=(), dtype="int32", initializer="zeros", trainable=False,
                                         name="k_teacher")
        self.teacher_accuracy = keras.metrics.SparseCategoricalAccuracy(name="teacher_accuracy")
        self.hard_tracker = keras.metrics.Mean(name="ce")
        self.soft_tracker = keras.metrics.Mean(name="kd")
        self._teacher_support = None
        self._frozen_support = None  # S_teacher through the frozen teacher embedding, computed once per fit
        self.teacher_loaded_from = None

    @property
    def metrics(self):
        return super().metrics + [self.hard_tracker, self.soft_tracker, self.teacher_accuracy]

    # ------------------------------------------------------------------ generation

    @property
    def max_generated(self):
        return max(self.num_generated, self.fill_to - 1) if self.fill_to else self.num_generated

    def generated_mask(self, real_count):
        """Each class gets max(num_generated, fill_to - real shots) generated examples."""
        want = tf.constant(self.num_generated, tf.int32)
        if self.fill_to:
            want = tf.maximum(want, self.fill_to - real_count)
        return tf.range(self.max_generated) < tf.broadcast_to(want, tf.shape(real_count))[..., None]

    # ------------------------------------------------------------------ teacher

    def set_teacher(self, features, labels, classes):
        """Builds S_teacher from base-class features (``classes`` sorted, as the sampler's)."""
        support, counts = teacher_support(features, labels, np.asarray(classes), self.k_teacher_config,
                                          self.teacher_seed)
        self._teacher_support = (tf.constant(support), tf.constant(counts))
        self._frozen_support = None
        self.k_teacher.assign(support.shape[1])
        return support.shape[1]

    def use_base_split(self, features, labels, classes):
        self.set_teacher(features, labels, classes)

    def check_ready(self):
        if self._teacher_support is None:
            raise ValueError(f"{type(self).__name__} has no teacher yet: call use_base_split(features, labels, "
                             f"classes) with the base-class features before fit")
        # fit: the teacher embedding is frozen from here on, so S_teacher is embedded once instead of in
        # every step (an MLP embedding of 449 classes x 32 examples costs more than the student's step).
        self._frozen_support = None
        if self.teacher_embedding:
            self._frozen_support = tf.constant(self.teacher_embed(self._teacher_support[0]))

    def start_training(self, seed, cache_dir=None):
        accuracy = self.pretrain_teacher(seed=seed, cache_dir=cache_dir)
        if accuracy is not None:
            source = f"loaded from {self.teacher_loaded_from}" if self.teacher_loaded_from else "pre-trained"
            print(f"Teacher embedding {source} (training accuracy on S_teacher {accuracy:.3f})", flush=True)

    def teacher_embed(self, x):
        for layer in self.teacher_embedding:
            x = layer(x)
        return x

    def teacher_prototypes(self, k_teacher):
        """(C, d') normalised prototypes of the first k_teacher examples of S_teacher per class."""
        if self._teacher_support is None:
            raise RuntimeError("call set_teacher(base features, labels, classes) before training")
        support, counts = self._teacher_support
        width = support.shape[1]
        mask = tf.range(width)[None, :] < tf.minimum(counts, k_teacher)[:, None]
        embedded = self._frozen_support if self._frozen_support is not None else self.teacher_embed(support)
        m = tf.cast(mask, embedded.dtype)[..., None]
        protos = tf.reduce_sum(embedded * m, axis=1) / tf.maximum(tf.reduce_sum(m, axis=1), 1.0)
        return tf.math.l2_normalize(protos, axis=-1)

    def teacher_logits_all(self, x, k_teacher=None):
        """(n, C) the teacher's logits for features ``x`` [n, d] over every base class at once, from
        its first ``k_teacher`` examples per class (default: the shots it holds). A diagnostic: how
        good a many-shot classifier the teacher is (benchmarks/fewshot_base_holdout.py)."""
        protos = self.teacher_prototypes(self.k_teacher if k_teacher is None else k_teacher)
        q = tf.math.l2_normalize(self.teacher_embed(x), axis=-1)
        return self.teacher_scale * tf.matmul(q, protos, transpose_b=True)

    def teacher_logits(self, query, class_index, k_teacher):
        protos = tf.gather(self.teacher_prototypes(k_teacher), class_index)  # (..., n_way, d')
        q = tf.math.l2_normalize(self.teacher_embed(query), axis=-1)
        return tf.stop_gradient(self.teacher_scale * tf.einsum("...qd,...nd->...qn", q, protos))

    def pretrain_teacher(self, steps=None, learning_rate=1e-3, batch_size=256, seed=0, cache_dir=None):
        """Trains the teacher's embedding (if any) as a cosine classifier over all base classes on
        S_teacher; afterwards it is frozen. Returns the last training accuracy.

        Every step embeds all of S_teacher (the prototypes move with the embedding): with an MLP
        teacher on a few hundred classes that is most of a run's time, and a search or a table
        trains the same teacher again in every run with the same seed. With ``cache_dir`` the
        trained weights are kept there, under a hash of everything the training reads (the
        initial weights, drawn from ``seed``; S_teacher; the steps, learning rate, batch size,
        TensorFlow version, thread counts and CPU model), and a later run with the same inputs on the
        same machine loads them instead of training."""
        self.teacher_loaded_from = None  # the cache file, when the weights came from one
        if not self.teacher_embedding:
            return None
        self._frozen_support = None  # the embedding changes below
        support, counts = (t.numpy() for t in self._teacher_support)
        mask = np.arange(support.shape[1])[None, :] < counts[:, None]
        x, y = support[mask], np.nonzero(mask)[0].astype(np.int32)  # the real rows, class by class
        steps = steps or self.teacher_pretrain_steps
        for i, layer in enumerate(self.teacher_embedding):
            # The teacher starts from weights of the run's seed alone, not from wherever the global
            # random stream stood after the student's layers were built: runs that differ only in
            # the student's knobs (a search's trials) pre-train the same teacher and share its cache.
            layer.kernel.assign(keras.initializers.GlorotUniform(seed=(int(seed) * 101 + i) % (2**31 - 1))(
                tuple(layer.kernel.shape)))
            layer.bias.assign(tf.zeros_like(layer.bias))
        variables = [v for layer in self.teacher_embedding for v in layer.variables]
        cache = None
        if cache_dir:
            key = hashlib.sha256()
            for part in [v.numpy() for v in variables] + [x, y]:
                key.update(np.ascontiguousarray(part).tobytes())
            # The machine's float arithmetic too: the same inputs pre-trained at another thread count or
            # on another CPU give other weights (so a run would depend on which one filled the cache).
            key.update(repr(([tuple(v.shape) for v in variables], steps, learning_rate, batch_size, seed,
                             self.teacher_scale, len(counts), tf.__version__, io.thread_counts(),
                             io.cpu_model())).encode())
            cache = os.path.join(cache_dir, f"teacher_{key.hexdigest()[:32]}.npz")
            cached = _read_cached_teacher(cache, variables)
            if cached is not None:
                self.teacher_loaded_from = cache
                return cached
        for layer in self.teacher_embedding:
            layer.trainable = True
        trainable = [v for layer in self.teacher_embedding for v in layer.trainable_variables]
        optimizer = optimizers.Adam(learning_rate)
        rng = np.random.default_rng([seed, 2027])
        x_all, classes = tf.constant(x), tf.constant(y)

        @tf.function
        def step(idx):
            with tf.GradientTape() as tape:
                embedded = self.teacher_embed(x_all)
                # Each class's mean over its real rows: the masked mean teacher_prototypes takes over
                # the padded support, without embedding the padding.
                protos = tf.math.l2_normalize(tf.math.unsorted_segment_mean(embedded, classes, len(counts)), -1)
                queries = tf.math.l2_normalize(tf.gather(embedded, idx), axis=-1)
                logits = self.teacher_scale * tf.matmul(queries, protos, transpose_b=True)
                labels = tf.gather(classes, idx)
                loss = losses.cross_entropy(labels, logits)
            optimizer.apply_gradients(zip(tape.gradient(loss, trainable), trainable))
            return tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), tf.float32))

        accuracy = None
        for _ in range(steps):
            accuracy = float(step(tf.constant(rng.integers(len(y), size=min(batch_size, len(y))), tf.int32)))
        for layer in self.teacher_embedding:
            layer.trainable = False  # frozen from here on: no student step can change it
        if cache:
            _write_cached_teacher(cache, variables, accuracy)
        return accuracy

    # ------------------------------------------------------------------ steps

    def schedule(self):
        """(k_train, k_teacher) for the current optimizer step: fixed for ``dist``."""
        return None, self.k_teacher

    def student_variables(self):
        teacher = {id(v) for layer in self.teacher_embedding for v in layer.variables}
        return [v for v in self.trainable_variables if id(v) not in teacher]

    def train_step(self, episode):
        k_train, k_teacher = self.schedule()
        mask = episode["support_mask"]
        if k_train is not None:
            self.k_train.assign(k_train)
            mask = tf.logical_and(mask, tf.range(mask.shape[-1]) < k_train)
        else:
            self.k_train.assign(tf.reduce_max(tf.reduce_sum(tf.cast(mask, tf.int32), -1)))
        self.k_teacher.assign(k_teacher)
        labels = episode["query_labels"]
        teacher = self.teacher_logits(episode["query"], episode["class_index"], k_teacher)
        student_episode = dict(episode, support_mask=mask)
        variables = self.student_variables()
        with tf.GradientTape() as tape:
            logits = self(student_episode, training=True)
            total, hard, soft = losses.progressive_kd_loss(labels, logits, teacher, self.gamma, self.temperature)
            scaled = replica_scale(total + self.weight_penalty(variables))
        self.optimizer.apply_gradients(zip(tape.gradient(scaled, variables), variables))
        self.loss_tracker.update_state(total)
        self.hard_tracker.update_state(hard)
        self.soft_tracker.update_state(soft)
        self.accuracy.update_state(labels, logits)
        self.teacher_accuracy.update_state(labels, teacher)
        logs = {m.name: m.result() for m in self.metrics}
        logs.update(k_train=self.k_train, k_teacher=self.k_teacher, temperature=self.temperature)
        return logs

    def test_step(self, episode):
        # Validation classes have no teacher: the student alone, as at test time.
        logits = self(episode, training=False)
        self.loss_tracker.update_state(losses.cross_entropy(episode["query_labels"], logits))
        self.accuracy.update_state(episode["query_labels"], logits)
        return {m.name: m.result() for m in (self.loss_tracker, self.accuracy)}


@METHODS.register("progressive")
class ProgressiveDistill(Distill):
    """Dist with a k schedule: weaken the student or strengthen the teacher."""

    config_section = method_config.ProgressiveDistillConfig

    @classmethod
    def sampler_shots(cls, cfg, fewshot_cfg):
        if cfg.direction == "weaken":
            return cfg.k_start, cfg.k_start
        return super().sampler_shots(cfg, fewshot_cfg)

    @classmethod
    def check_fewshot_config(cls, cfg, fewshot_cfg):
        if cfg.direction == "strengthen" and cfg.k_start != fewshot_cfg.k_shot:
            raise ConfigError(f"config.progressive.k_start={cfg.k_start}: strengthening starts the teacher at the "
                              f"student's shots, config.fewshot.k_shot={fewshot_cfg.k_shot}")

    def snapshot_at_k(self):
        """Weakening tests k shots with the model trained at k (the paper's protocol): the snapshot
        after the last step with k_train >= k. Values above k_start would be the untrained model, and
        k_end is held until training ends, so its test uses the best checkpoint (chosen on validation)
        rather than the model on the step k_end was first reached, which never trained at k_end."""
        if self.direction != "weaken":
            return ()
        return tuple(k for k in self.save_at_k if self.k_end < k <= self.k_start)

    def __init__(self, feature_dim, direction="weaken", schedule="log", k_start=16, k_end=1, schedule_steps=2000,
                 save_at_k=(16, 8, 4, 2, 1), **kwargs):
        if direction == "weaken" and not kwargs.get("fill_to"):
            kwargs["fill_to"] = k_start  # G fills in the examples the student lost
        super().__init__(feature_dim, **kwargs)
        self.direction, self.schedule_kind = direction, schedule
        self.k_start, self.k_end, self.schedule_steps = int(k_start), int(k_end), int(schedule_steps)
        self.save_at_k = tuple(int(k) for k in save_at_k)

    def k_now(self, step):
        return k_at(step, self.k_start, self.k_end, self.schedule_steps, self.schedule_kind)

    def schedule(self):
        k = k_at_tensor(self.optimizer.iterations, self.k_start, self.k_end, self.schedule_steps, self.schedule_kind)
        if self.direction == "weaken":
            return k, self.k_teacher
        return None, k
