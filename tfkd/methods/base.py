"""Base class of the multi-exit training methods.

A method is a ``keras.Model`` wrapping a multi-exit network. Following mdistiller's contract, a
subclass only says how its losses are computed (``compute_losses`` returns a dict of named,
already-weighted loss terms); this class sums them, adds coupled weight decay, handles replica
scaling under ``tf.distribute`` and mixed-precision loss scaling, and keeps the metrics:

* training: every named loss term, the total ``loss``, and ``final_accuracy``;
* evaluation: ``loss``, accuracy of every exit and of the final head, and ``ensemble_accuracy``
  (the mean of all heads' softmax outputs).
"""
import keras
import tensorflow as tf

from tfkd import method_config
from tfkd.distribute import replica_scale
from tfkd.method_config import resolve_method_config  # noqa: F401  (part of this module's API)


def _fit_step(step):
    """Wraps a train / test step for Keras 3 ``fit`` / ``evaluate``:

    * Every op of the step waits for the batch. Keras calls the step's graph once more when a
      finite dataset is exhausted (the failing ``get_next`` ends the epoch); ops that do not depend
      on the data still run then. With static batch shapes (episode batches) a metric's count
      increment is such an op, so every finite evaluation counted one phantom, all-wrong batch
      (1 / 2 / 4 perfect batches reported accuracy 0.5 / 0.667 / 0.8).
    * Keras 3 reduces step logs across MultiWorkerMirroredStrategy workers with
      ``reduce("MEAN", v, axis=0)``, which fails on scalars (tensorflow/tensorflow#72388): there,
      logs become shape-(1,) tensors, whose mean over workers along axis 0 is the usual scalar."""
    def wrapper(self, data):
        with tf.control_dependencies([t for t in tf.nest.flatten(data) if isinstance(t, tf.Tensor)]):
            logs = step(self, data)
        if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
            logs = {k: tf.reshape(v, (1,)) if len(getattr(v, "shape", ())) == 0 else v for k, v in logs.items()}
        return logs

    wrapper._fit_step = True
    wrapper.__name__, wrapper.__doc__ = step.__name__, step.__doc__
    return wrapper


class DistributedFit:
    """Mixin for tfkd's keras.Model methods: works around Keras 3 ``fit`` / ``evaluate`` problems
    (finite datasets and tf.distribute; see _fit_step, and _maybe_symbolic_build below)."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name in ("train_step", "test_step"):
            step = cls.__dict__.get(name)
            if step is not None and not getattr(step, "_fit_step", False):
                setattr(cls, name, _fit_step(step))

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # tfkd builds every variable before fit. Keras' pre-fit probe reduces one distributed
        # batch, which fails under MultiWorkerMirroredStrategy with one device per worker and on
        # non-float inputs (episode masks) under MirroredStrategy (Keras 3.15 / TF 2.21): skip
        # the probe when there is nothing to build.
        if self.built and all(layer.built for layer in self._flatten_layers()) and getattr(
                self.optimizer, "built", False):
            return
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)


class ConfigSection:
    """Mixin: a method's knobs are those of ``config_section`` (a TF-free class of
    tfkd.method_config, so configs are checked before TensorFlow or any data is loaded)."""

    config_section = method_config.MethodConfig  # the knobs of config.<method name>

    @classmethod
    def default_config(cls):
        """Method-specific knobs and their defaults (``config.<method name>`` overrides them)."""
        return cls.config_section.default_config()

    @classmethod
    def check_config(cls, cfg):
        """Raises ConfigError for out-of-range knobs (called before any data is loaded)."""
        cls.config_section.check_config(cfg)


class MultiExitMethod(ConfigSection, DistributedFit, keras.Model):
    """Subclasses set ``loss_names`` and implement ``compute_losses``."""

    task = "classification"  # trained by tfkd.train on images (bin/train dispatches on it)
    loss_names = ()
    uses_exits = True  # False: only the final head is computed, trained and evaluated

    def __init__(self, network, weight_decay=0.0, **kwargs):
        super().__init__(**kwargs)
        self.network = network
        self.weight_decay = float(weight_decay)
        self.output_names_ordered = list(network.output_names_ordered) if self.uses_exits else ["final"]
        self._phase, self._phase_fixed = None, False
        self._train_function_of_phase = {}  # phase -> its compiled train step, kept across switches
        self.loss_trackers = {name: keras.metrics.Mean(name=name) for name in ("loss",) + tuple(self.loss_names)}
        self.train_accuracy = keras.metrics.SparseCategoricalAccuracy(name="final_accuracy")
        self.eval_loss = keras.metrics.Mean(name="loss")
        self.eval_accuracy = {name: keras.metrics.SparseCategoricalAccuracy(name=f"{name}_accuracy")
                              for name in self.output_names_ordered + ["ensemble"]}

    @property
    def metrics(self):
        return (list(self.loss_trackers.values()) + [self.train_accuracy, self.eval_loss]
                + list(self.eval_accuracy.values()))

    def build(self, input_shape=None):
        self.network.ensure_built()
        self.built = True

    def build_state(self):
        """Creates every variable a checkpoint holds (call after compile, before load_weights)."""
        self.optimizer.build(self.update_variables())

    def update_variables(self):
        """What the main step trains: the network (plus e.g. a FitNet regressor or a DML peer).
        Exits a method does not compute are left out: they get no gradient (Keras would warn
        about each of their variables) and no weight decay, so they stay as initialised."""
        return trained_network_variables(self.network, self.uses_exits)

    # ------------------------------------------------------------------ training phases
    # Epochs with the same phase key share one compiled train step; bin/train runs one `fit` per
    # run of equal phases, so a method can switch procedures between epochs (MetaDistiller's
    # meta epochs) without a tf.cond around optimizer updates.

    def epoch_phase(self, epoch):
        return None

    def phase_needs_meta_split(self, phase):
        """True if this phase's batches must carry MetaDistiller's D_train / D_test halves."""
        return False

    def set_phase(self, phase):
        """Fixes the phase of the following fits (bin/train fits one run of equal phases at a time);
        EpochPhases then leaves it alone."""
        self._phase_fixed = True
        self._switch_phase(phase)

    def _switch_phase(self, phase):
        if self._phase != phase:
            # Each phase keeps its compiled step: MetaDistiller's next meta epoch reuses the meta
            # step traced for the first one (tens of seconds of tracing) instead of retracing it.
            self._train_function_of_phase[self._phase] = self.train_function
            self._phase = phase
            self.train_function = self._train_function_of_phase.get(phase)  # None: Keras traces it

    def compile(self, *args, **kwargs):
        super().compile(*args, **kwargs)
        self._train_function_of_phase = {}  # steps traced for the previous optimizer are stale

    def fit(self, *args, callbacks=None, **kwargs):
        """keras.Model.fit, plus the method's epoch phases: a plain ``fit`` over all epochs switches
        phase at each epoch's start (EpochPhases, added unless the caller gave one)."""
        callbacks = list(callbacks or [])
        if not any(isinstance(c, EpochPhases) for c in callbacks):
            callbacks.insert(0, EpochPhases())
        # Everything a step updates exists before tracing (bin/train does this after compile):
        # Keras' symbolic build cannot call a method on its structured (meta-split) batches.
        with self.distribute_strategy.scope():
            if not self.built:
                self.build()
            if not getattr(self.optimizer, "built", False):
                self.build_state()
        return super().fit(*args, callbacks=callbacks, **kwargs)

    def call(self, images, training=None):
        if not self.uses_exits:
            return {"final": self.network.final_logits(images, training=training)}
        return self.network(images, training=training)

    # ------------------------------------------------------------------ to override

    def compute_losses(self, images, labels, training):
        """Returns (dict of named loss terms, dict of logits)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ shared machinery

    def with_weight_decay(self, grads, variables, scale):
        """Coupled L2 weight decay (PyTorch's SGD weight_decay): ``weight_decay * w`` added to each
        gradient, times ``scale``, the factor the loss was scaled by before differentiating (replica
        and mixed-precision loss scale). The same gradients as ``weight_decay *
        losses.l2_penalty(variables)`` in the loss, but written out: differentiating the penalty
        put ~7 ops per variable into each step's graph (~1,300 for a multi-exit ResNet18) and a
        second-order copy into MetaDistiller's lookahead, all traced and optimised before the
        first step."""
        if not self.weight_decay:
            return list(grads)
        factor = scale * self.weight_decay
        return [g if g is None else g + tf.cast(factor, g.dtype) * tf.cast(v, g.dtype)
                for g, v in zip(grads, variables)]

    replica_scale = staticmethod(replica_scale)

    def loss_for_gradients(self, loss):
        """Replica-scaled and (under mixed precision) loss-scaled; call inside the tape."""
        scaled = self.replica_scale(loss)
        if hasattr(self.optimizer, "scale_loss"):
            scaled = self.optimizer.scale_loss(scaled)
        return scaled

    @_fit_step
    def train_step(self, data):
        return self.main_step(*data)

    def main_step(self, images, labels):
        """One update of the main network on a batch; returns the training metrics."""
        variables = self.update_variables()
        with tf.GradientTape() as tape:
            terms, logits = self.compute_losses(images, labels, training=True)
            scaled = self.loss_for_gradients(tf.add_n(list(terms.values())))
        grads = self.with_weight_decay(tape.gradient(scaled, variables), variables,
                                       self.loss_for_gradients(tf.constant(1.0, scaled.dtype)))
        self.optimizer.apply_gradients(zip(grads, variables))
        return self.record_training_metrics(terms, labels, logits)

    def record_training_metrics(self, terms, labels, logits):
        """Updates the training metrics with one step's loss terms and logits; returns the logs."""
        self.loss_trackers["loss"].update_state(tf.add_n(list(terms.values())))
        for name, value in terms.items():
            self.loss_trackers[name].update_state(value)
        self.train_accuracy.update_state(labels, logits["final"])
        return {m.name: m.result() for m in list(self.loss_trackers.values()) + [self.train_accuracy]}

    @_fit_step
    def test_step(self, data):
        images, labels = data
        terms, logits = self.compute_losses(images, labels, training=False)
        self.eval_loss.update_state(tf.add_n(list(terms.values())))
        probs = []
        for name in self.output_names_ordered:
            self.eval_accuracy[name].update_state(labels, logits[name])
            probs.append(tf.nn.softmax(tf.cast(logits[name], tf.float32)))
        self.eval_accuracy["ensemble"].update_state(labels, tf.add_n(probs) / len(probs))
        return {m.name: m.result() for m in [self.eval_loss] + list(self.eval_accuracy.values())}

    def get_config(self):
        return {"weight_decay": self.weight_decay}


class EpochPhases(keras.callbacks.Callback):
    """Sets a multi-phase method's phase (``epoch_phase``, e.g. MetaDistiller's meta epochs) at the
    start of each epoch and retraces the train step when it changes, so that one plain
    ``model.fit(..., epochs=N)`` trains exactly as bin/train's one-fit-per-phase loop. A no-op for
    single-phase methods and once a phase was fixed with ``set_phase`` (bin/train, benchmarks)."""

    def on_epoch_begin(self, epoch, logs=None):
        phase = self.model.epoch_phase(epoch)
        if not self.model._phase_fixed and phase != self.model._phase:
            self.model._switch_phase(phase)
            self.model.make_train_function()  # fit calls self.train_function each step


def trained_network_variables(network, with_exits=True):
    """``network``'s trainable variables, without its exit heads' unless ``with_exits``."""
    if with_exits:
        return network.trainable_variables
    exit_ids = {id(v) for head in network.exit_heads for v in head.variables}
    return [v for v in network.trainable_variables if id(v) not in exit_ids]
