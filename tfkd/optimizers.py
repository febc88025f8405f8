"""SGD (momentum) and Adam whose per-variable update is one fused TensorFlow kernel.

Keras 3 writes each variable's update as ~13 (SGD) to ~40 (Adam) small graph ops. A multi-exit
ResNet18 has ~190 variables, so the optimizer alone put ~1,400 ops into every training step's
graph and ~3,500 more into MetaDistiller's meta step (its generator's Adam): time to trace and
optimise before the first step, and per-op overhead in every step on a CPU. The fused kernels
(``ResourceApplyKerasMomentum``, ``ResourceApplyAdam``) compute the same formulas as Keras'
``update_step``; slots, their names and checkpoints are Keras' own. Layer: beside the losses
(imports Keras and TensorFlow only).

Sparse gradients (``tf.IndexedSlices``) take Keras' update.
"""
import contextlib

import keras
import tensorflow as tf


def _handle(variable):
    return (variable.value if isinstance(variable, keras.Variable) else variable).handle


@contextlib.contextmanager
def _for_this_apply(optimizer, name, value):
    """``optimizer.name = value`` while one apply() runs: scalars every variable's update shares,
    made once instead of a graph constant per variable; None again after (update_step then falls
    back to Keras' own update)."""
    setattr(optimizer, name, value)
    try:
        yield
    finally:
        setattr(optimizer, name, None)


def _fusable(gradient, variable):
    return not isinstance(gradient, tf.IndexedSlices) and isinstance(variable, (tf.Variable, keras.Variable))


@keras.saving.register_keras_serializable(package="tfkd")
class SGD(keras.optimizers.SGD):
    """keras.optimizers.SGD; with momentum, one ``ResourceApplyKerasMomentum`` per variable
    (accum = momentum * accum - lr * grad; var += accum, or the Nesterov form)."""

    _momentum = None  # made once per apply(), not a constant per variable

    def apply(self, grads, trainable_variables=None):
        with _for_this_apply(self, "_momentum", tf.constant(self.momentum, tf.float32)):
            return super().apply(grads, trainable_variables)

    def update_step(self, gradient, variable, learning_rate):
        if self.momentum == 0 or self._momentum is None or not _fusable(gradient, variable):
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        tf.raw_ops.ResourceApplyKerasMomentum(
            var=_handle(variable), accum=_handle(self.momentums[self._get_variable_index(variable)]),
            lr=tf.cast(learning_rate, dtype), grad=tf.cast(gradient, dtype), momentum=tf.cast(self._momentum, dtype),
            use_locking=False, use_nesterov=self.nesterov)


@keras.saving.register_keras_serializable(package="tfkd")
class Adam(keras.optimizers.Adam):
    """keras.optimizers.Adam (without amsgrad); one ``ResourceApplyAdam`` per variable:
    lr_t = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t), m and v moving averages, var -= lr_t * m / (sqrt(v) + eps)."""

    _scalars = None  # beta_1^t, beta_2^t, beta_1, beta_2, epsilon: made once per apply(), not per variable

    def apply(self, grads, trainable_variables=None):
        beta_1, beta_2 = tf.constant(self.beta_1, tf.float32), tf.constant(self.beta_2, tf.float32)
        local_step = tf.cast(self.iterations + 1, tf.float32)
        scalars = (tf.pow(beta_1, local_step), tf.pow(beta_2, local_step), beta_1, beta_2,
                   tf.constant(self.epsilon, tf.float32))
        with _for_this_apply(self, "_scalars", scalars):
            return super().apply(grads, trainable_variables)

    def update_step(self, gradient, variable, learning_rate):
        if self.amsgrad or self._scalars is None or not _fusable(gradient, variable):
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        index = self._get_variable_index(variable)
        beta_1_power, beta_2_power, beta_1, beta_2, epsilon = (tf.cast(t, dtype) for t in self._scalars)
        tf.raw_ops.ResourceApplyAdam(
            var=_handle(variable), m=_handle(self._momentums[index]), v=_handle(self._velocities[index]),
            beta1_power=beta_1_power, beta2_power=beta_2_power, lr=tf.cast(learning_rate, dtype), beta1=beta_1,
            beta2=beta_2, epsilon=epsilon, grad=tf.cast(gradient, dtype), use_locking=False, use_nesterov=False)
