"""MetaDistiller (Liu et al., ECCV 2020): top-down soft targets from a meta-learned label generator.

Main update (every step), Eq. 3-4 with the generator's targets T_k (a stop-gradient: the main
loss trains neither the generator nor, through the targets, the backbone):

    L_S = CE(y, S_K) + sum_k [alpha CE(y, S_k) + (1 - alpha) tau^2 KL(T_k || S_k)]

Generator update (Algorithm 1), in "meta epochs" (epoch % M == 0, 0-based, i.e. the 1st, (M+1)-th,
... epoch): the training set is split in random halves D_train / D_test (seeded by
(seed, epoch)), and after each main update (or every ``meta_every_steps``-th one):

    theta+ = theta - zeta * grad_theta L_S(x_a, y_a; theta, T(theta_g))     x_a from D_train
    theta_g <- Adam step on grad_theta_g CE(y_b, S(x_b; theta+))            x_b from D_test

zeta is the main optimizer's current learning rate. theta+ is built functionally with
``stateless_call`` inside nested GradientTapes, so the lookahead never touches the real weights,
their BatchNorm moving statistics or the main optimizer's state.

Readings of the ambiguous parts (all config fields of ``config.metadistiller``):
* How many meta steps per meta phase: Algorithm 1 shows one mini-batch pair; a single generator
  step every M epochs cannot train a network, so we take one meta step per training step of a
  meta epoch (``meta_every_steps=1``), thinned by ``meta_every_steps``.
* Which outputs enter the outer CE: ``outer_outputs='all'`` sums the CE of every exit and the
  final output of theta+ (the generator's targets act on the exits, so their generalisation is
  the signal); ``'final'`` uses the final output only.
* The inner step includes the coupled weight decay of the real update (it does not depend on
  theta_g, so it only shifts theta+ as the real step would).
* Generator learning rate: default Adam 1e-3. The paper's 0.1 was checked too and is stable
  here (no divergence, similar validation accuracy; docs/benchmarks.md, generator learning-rate table).
* ``meta_batch_size``: a cheaper meta step on the first n examples of the D_train / D_test batches
  (not in the paper, which does not give its meta batch size; step-cost table in docs/benchmarks.md).
* Within the lookahead, BatchNorm uses batch statistics (training mode, as in the real step);
  the moving statistics produced by stateless_call are discarded.
"""
import keras
import tensorflow as tf

from tfkd import losses, method_config, optimizers
from tfkd.methods.base import MultiExitMethod
from tfkd.models.label_generator import LabelGenerator
from tfkd.models.layers import frozen_batchnorm_statistics
from tfkd.registry import METHODS


def _values(variables):
    return [tf.convert_to_tensor(v) for v in variables]


@METHODS.register("metadistiller")
class MetaDistiller(MultiExitMethod):
    loss_names = ("ce_final", "ce_exits", "kd_exits")
    config_section = method_config.MetaDistillerConfig

    def __init__(self, network, alpha=0.5, tau=1.0, meta_every_epochs=5, meta_every_steps=1, generator_lr=1e-3,
                 fusion_channels=0, outer_outputs="all", share_inner_gradient=False, meta_batch_size=0,
                 fusion_norm=True, **kwargs):
        cfg = self.default_config()
        cfg.update({"alpha": alpha, "tau": tau, "meta_every_epochs": meta_every_epochs,
                    "meta_every_steps": meta_every_steps, "generator_lr": generator_lr,
                    "fusion_channels": fusion_channels, "outer_outputs": outer_outputs,
                    "share_inner_gradient": bool(share_inner_gradient), "meta_batch_size": int(meta_batch_size),
                    "fusion_norm": fusion_norm})
        self.check_config(cfg)
        super().__init__(network, **kwargs)
        self.alpha, self.tau = float(alpha), float(tau)
        self.meta_every_epochs, self.meta_every_steps = int(meta_every_epochs), int(meta_every_steps)
        self.generator_lr, self.outer_outputs = float(generator_lr), outer_outputs
        self.share_inner_gradient = bool(share_inner_gradient)
        self.meta_batch_size = int(meta_batch_size)
        self.fusion_norm = bool(fusion_norm)
        channels = network.stage_channels
        self.generator = LabelGenerator(channels, network.num_classes, fusion_channels or channels[0],
                                        sync_bn=getattr(network, "sync_bn", False), dtype=network.dtype_policy,
                                        exits=network.exits, fusion_norm=self.fusion_norm,
                                        exit_style=getattr(network, "exit_style", "bottleneck"), name="label_generator")
        self.meta_loss_tracker = keras.metrics.Mean(name="meta_loss")
        # Mean entropy (nats) of each exit's soft targets T_k, logged train and validation: shows
        # how soft the generator's targets are and how that changes as it is meta-trained.
        self.target_entropy_trackers = {n: keras.metrics.Mean(name=f"target_entropy_{n}")
                                        for n in self.output_names_ordered[:-1]}
        self.meta_step_counter = self.add_weight(shape=(), dtype="int64", initializer="zeros", trainable=False,
                                                 name="meta_step_counter")

    @property
    def metrics(self):
        return super().metrics + [self.meta_loss_tracker] + list(self.target_entropy_trackers.values())

    def compile(self, optimizer="sgd", generator_optimizer=None, **kwargs):
        super().compile(optimizer=optimizer, **kwargs)
        self.generator_optimizer = generator_optimizer or optimizers.Adam(self.generator_lr)

    def build(self, input_shape=None):
        super().build(input_shape)
        if not self.generator.built:
            _, features = self.network(tf.zeros((1,) + tuple(self.network.image_shape), self.network.compute_dtype),
                                       training=False, return_features=True)
            self.generator(self.stage_features(features), training=False)

    def build_state(self):
        """Creates the generator optimizer's variables too, so checkpoints can be restored."""
        super().build_state()
        self.generator_optimizer.build(self.generator.trainable_variables)

    def stage_features(self, features):
        return [features[f"stage_{k + 1}"] for k in range(len(self.network.stage_channels))]

    # ------------------------------------------------------------------ phases

    def epoch_phase(self, epoch):
        return "meta" if epoch % self.meta_every_epochs == 0 else "main"

    def phase_needs_meta_split(self, phase):
        return phase == "meta"

    # ------------------------------------------------------------------ losses

    def soft_targets(self, targets, dtype):
        """{exit: T_k = softmax(target_k / tau)} from the generator's target logits."""
        return {n: tf.nn.softmax(tf.cast(targets[n], dtype) / self.tau) for n in self.output_names_ordered[:-1]}

    def student_terms(self, labels, logits, soft, stop_target_gradient=True):
        """Eq. 3-4 given the soft targets T_k (``soft_targets``)."""
        exit_names = self.output_names_ordered[:-1]
        return {
            "ce_final": losses.cross_entropy(labels, logits["final"]),
            "ce_exits": self.alpha * tf.add_n([losses.cross_entropy(labels, logits[n]) for n in exit_names]),
            "kd_exits": (1.0 - self.alpha) * tf.add_n([
                losses.kd_loss(soft[n], logits[n], self.tau, teacher_is_probs=True,
                               stop_teacher_gradient=stop_target_gradient) for n in exit_names]),
        }

    def compute_losses(self, images, labels, training):
        logits, features = self.network(images, training=training, return_features=True)
        targets = self.generator([tf.stop_gradient(f) for f in self.stage_features(features)], training=training)
        soft = self.soft_targets(targets, logits["final"].dtype)
        self.track_target_entropy(soft)
        return self.student_terms(labels, logits, soft), logits

    def track_target_entropy(self, soft):
        for name, probs in soft.items():
            self.target_entropy_trackers[name].update_state(target_entropy(tf.stop_gradient(probs)))

    def outer_loss(self, labels, logits):
        names = self.output_names_ordered if self.outer_outputs == "all" else ["final"]
        return tf.add_n([losses.cross_entropy(labels, logits[n]) for n in names])

    # ------------------------------------------------------------------ meta step

    def lookahead_loss(self, generator_values, theta, non_trainable, generator_non_trainable, meta_train,
                       meta_test, zeta, return_inner=False, targets_instead=None):
        """CE on ``meta_test`` of theta+ = theta - zeta * grad L_S(meta_train; theta, T(generator_values)).

        A pure function of its tensor arguments (no variable is read or written), so it can be
        differentiated w.r.t. ``generator_values`` and checked by finite differences. With
        ``return_inner`` also the inner step's pieces, which a shared step reuses for the real
        update: (loss, {"grads": this replica's grads, "non_trainable" / "generator_non_trainable":
        BatchNorm statistics after the inner forward, "terms", "logits" and "soft" targets on
        meta_train}).

        ``targets_instead``: a diagnostic. A function (network logits on meta_train, labels) ->
        {exit: soft targets} used in place of the generator's, to ask what the one-step lookahead
        would make of other targets (benchmarks/metadistiller_lookahead_probe.py).
        """
        (x_a, y_a), (x_b, y_b) = meta_train, meta_test
        # BatchNorm statistics after the inner forward are kept only for a shared step; the other
        # forwards' updates would be thrown away, so they are not built (a sixth of the graph).
        with tf.GradientTape() as inner, frozen_batchnorm_statistics(not return_inner):
            inner.watch(theta)
            (logits, features), new_non_trainable = self.network.stateless_call(
                theta, non_trainable, x_a, training=True, return_features=True)
            if targets_instead is None:
                targets, new_generator_non_trainable = self.generator.stateless_call(
                    generator_values, generator_non_trainable,
                    [tf.stop_gradient(f) for f in self.stage_features(features)], training=True)
                soft = self.soft_targets(targets, logits["final"].dtype)
            else:
                soft, new_generator_non_trainable = targets_instead(logits, y_a), generator_non_trainable
            terms = self.student_terms(y_a, logits, soft, stop_target_gradient=False)
            inner_loss = self.replica_scale(tf.add_n(list(terms.values())))
        replica_grads = self.with_weight_decay(
            inner.gradient(inner_loss, theta, unconnected_gradients=tf.UnconnectedGradients.ZERO), theta,
            self.replica_scale(tf.constant(1.0, inner_loss.dtype)))
        grads = _all_reduce_sum(replica_grads)
        theta_plus = [t - tf.cast(zeta, t.dtype) * g for t, g in zip(theta, grads)]
        with frozen_batchnorm_statistics():
            test_logits, _ = self.network.stateless_call(theta_plus, non_trainable, x_b, training=True)
        loss = self.outer_loss(y_b, test_logits)
        if not return_inner:
            return loss
        return loss, {"grads": replica_grads, "non_trainable": new_non_trainable,
                      "generator_non_trainable": new_generator_non_trainable, "terms": terms, "logits": logits,
                      "soft": soft}

    def meta_gradient(self, meta_train, meta_test, zeta, return_inner=False):
        """(outer loss, d outer / d generator trainable variables) for the current weights
        (+ the inner step's pieces with ``return_inner``, see lookahead_loss)."""
        phi = _values(self.generator.trainable_variables)
        theta = _values(self.network.trainable_variables)
        with tf.GradientTape() as outer:
            outer.watch(phi)
            result = self.lookahead_loss(phi, theta, _values(self.network.non_trainable_variables),
                                         _values(self.generator.non_trainable_variables), meta_train, meta_test,
                                         zeta, return_inner=return_inner)
            loss = result[0] if return_inner else result
            scaled = self.replica_scale(loss)
        grads = outer.gradient(scaled, phi, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return (loss, grads, result[1]) if return_inner else (loss, grads)

    def meta_batch(self, batch):
        """``batch`` cut to this replica's share of ``meta_batch_size`` (the whole batch when 0)."""
        if not self.meta_batch_size:
            return batch
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if self.meta_batch_size % replicas:
            raise ValueError(f"meta_batch_size={self.meta_batch_size} must split evenly over {replicas} replicas")
        size = self.meta_batch_size // replicas
        if batch[0].shape[0] is not None and batch[0].shape[0] < size:
            raise ValueError(f"meta_batch_size={self.meta_batch_size} is larger than the meta batches "
                             f"({batch[0].shape[0] * replicas} examples)")
        return tuple(t[:size] for t in batch)

    def meta_step(self, meta_train, meta_test):
        zeta = self.optimizer.learning_rate
        loss, grads = self.meta_gradient(self.meta_batch(meta_train), self.meta_batch(meta_test), zeta)
        self.generator_optimizer.apply_gradients(zip(grads, self.generator.trainable_variables))
        self.meta_loss_tracker.update_state(loss)
        self.meta_step_counter.assign_add(1)

    def shared_meta_step(self, meta_train, meta_test):
        """A meta step whose inner gradient (at theta, on the D_train batch) is also the real
        update's: the network trains on the D_train batch with that gradient (the same value a
        main step on it would compute; no gradient flows into the targets), takes the inner
        forward's BatchNorm statistics, and the generator gets its meta-gradient. One forward and
        backward of the network fewer than main_step + meta_step. Returns the training logs."""
        zeta = self.optimizer.learning_rate
        loss, grads, inner = self.meta_gradient(meta_train, self.meta_batch(meta_test), zeta, return_inner=True)
        network_grads = [tf.stop_gradient(g) for g in inner["grads"]]  # per replica: the optimizer all-reduces
        if hasattr(self.optimizer, "scale_loss"):  # mixed precision: the optimizer unscales what it gets
            network_grads = [self.optimizer.scale_loss(g) for g in network_grads]
        self.optimizer.apply_gradients(zip(network_grads, self.network.trainable_variables))
        for variable, value in zip(self.network.non_trainable_variables + self.generator.non_trainable_variables,
                                   list(inner["non_trainable"]) + list(inner["generator_non_trainable"])):
            variable.assign(value)  # BatchNorm statistics, as main_step's forward would leave them
        self.generator_optimizer.apply_gradients(zip(grads, self.generator.trainable_variables))
        self.meta_loss_tracker.update_state(loss)
        self.meta_step_counter.assign_add(1)
        self.track_target_entropy(inner["soft"])
        terms = {k: tf.stop_gradient(v) for k, v in inner["terms"].items()}
        return self.record_training_metrics(terms, meta_train[1], inner["logits"])

    def entropy_logs(self):
        return {m.name: m.result() for m in self.target_entropy_trackers.values()}

    def test_step(self, data):
        return {**super().test_step(data), **self.entropy_logs()}

    def train_step(self, data):
        # Batches with the D_train / D_test halves (tfkd.data.train_dataset(meta_split=True)) can
        # feed every epoch of a plain fit: main epochs use their "main" part only.
        split = isinstance(data, dict)
        if self._phase != "meta":
            return {**self.main_step(*(data["main"] if split else data)), **self.entropy_logs()}
        if not split:
            raise ValueError("a MetaDistiller meta epoch needs batches {'main', 'meta_train', 'meta_test'}: "
                             "build the dataset with tfkd.data.train_dataset(..., meta_split=True)")
        if self.share_inner_gradient:
            def shared():
                return self.shared_meta_step(data["meta_train"], data["meta_test"])
            if self.meta_every_steps == 1:
                logs = shared()
            else:  # the n-th, 2n-th, ... updates are shared meta steps, the others main steps
                due = tf.equal((self.optimizer.iterations + 1) % self.meta_every_steps, 0)
                logs = tf.cond(due, shared, lambda: self.main_step(*data["main"]))
            return {**logs, **self.entropy_logs(), "meta_loss": self.meta_loss_tracker.result()}
        logs = {**self.main_step(*data["main"]), **self.entropy_logs()}
        if self.meta_every_steps == 1:
            self.meta_step(data["meta_train"], data["meta_test"])
        else:
            due = tf.equal(self.optimizer.iterations % self.meta_every_steps, 0)
            tf.cond(due, lambda: self.meta_step(data["meta_train"], data["meta_test"]) or tf.constant(0),
                    lambda: tf.constant(0))
        logs["meta_loss"] = self.meta_loss_tracker.result()
        return logs

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "tau": self.tau,
                "meta_every_epochs": self.meta_every_epochs, "meta_every_steps": self.meta_every_steps,
                "generator_lr": self.generator_lr, "outer_outputs": self.outer_outputs,
                "share_inner_gradient": self.share_inner_gradient, "meta_batch_size": self.meta_batch_size,
                "fusion_norm": self.fusion_norm}


def target_entropy(probs):
    """Per-example entropy (nats) of probability rows; 0 log 0 counts as 0."""
    probs = tf.cast(probs, tf.float32)
    return -tf.reduce_sum(tf.math.multiply_no_nan(tf.math.log(probs), probs), axis=-1)


def _all_reduce_sum(tensors):
    """Sum over replicas of per-replica gradients of replica-scaled losses; differentiable."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return tensors
    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, tensors)
