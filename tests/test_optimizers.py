"""tfkd's fused SGD and Adam: the same updates as Keras' own, checkpoint-compatible slots, far
fewer graph ops per variable, and Keras' update where a fused kernel cannot be used."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from tfkd import optimizers

CASES = {
    "sgd_momentum": (lambda: keras.optimizers.SGD(0.1, momentum=0.9), lambda: optimizers.SGD(0.1, momentum=0.9)),
    "sgd_nesterov": (lambda: keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True),
                     lambda: optimizers.SGD(0.1, momentum=0.9, nesterov=True)),
    "sgd_plain": (lambda: keras.optimizers.SGD(0.1), lambda: optimizers.SGD(0.1)),
    "adam": (lambda: keras.optimizers.Adam(1e-2), lambda: optimizers.Adam(1e-2)),
}


def _weights_and_grads(steps=3):
    rng = np.random.default_rng(0)
    init = [rng.normal(size=(3, 4)).astype("float32"), rng.normal(size=(4,)).astype("float32")]
    grads = [[rng.normal(size=w.shape).astype("float32") for w in init] for _ in range(steps)]
    return init, grads


def _train(make, init, grads, compiled=True):
    variables = [keras.Variable(w) for w in init]
    opt = make()

    def step(g):
        opt.apply_gradients(zip(g, variables))

    step = tf.function(step) if compiled else step
    for g in grads:
        step([tf.constant(x) for x in g])
    return [v.numpy() for v in variables], [v.numpy() for v in opt.variables]


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("compiled", [True, False])
def test_fused_update_equals_keras_update(case, compiled):
    init, grads = _weights_and_grads()
    ref_make, fused_make = CASES[case]
    ref_weights, ref_state = _train(ref_make, init, grads, compiled)
    weights, state = _train(fused_make, init, grads, compiled)
    for a, b in zip(weights + state, ref_weights + ref_state):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    assert not np.allclose(weights[0], init[0])  # the steps moved the weights


@pytest.mark.parametrize("case", ["sgd_momentum", "adam"])
def test_fused_optimizer_puts_one_kernel_per_variable_into_the_graph(case):
    """The point of the fused kernels: Keras' SGD writes ~13 ops per variable, its Adam ~40."""
    variables = [keras.Variable(np.ones((2, 2), "float32")) for _ in range(20)]
    counts = {}
    for label, make in zip(("keras", "fused"), CASES[case]):
        opt = make()
        opt.build(variables)
        graph = tf.function(lambda g, opt=opt: opt.apply_gradients(zip(g, variables))).get_concrete_function(
            [tf.TensorSpec((2, 2), tf.float32)] * len(variables)).graph
        counts[label] = len(graph.get_operations())
    # Per variable: the gradient's, the variable's and its slots' placeholders, the kernel, its identity.
    assert counts["fused"] <= 9 * len(variables), counts  # measured: 151 (SGD) and 161 (Adam) for 20
    assert counts["keras"] >= 1.7 * counts["fused"], counts  # measured: 271 and 831


def test_checkpoint_moves_between_keras_and_fused_optimizers(tmp_path):
    """Same slot variables as Keras' Adam: a checkpoint of one resumes in the other."""
    init, grads = _weights_and_grads(steps=4)
    variables = [keras.Variable(w) for w in init]
    keras_adam = keras.optimizers.Adam(1e-2)
    for g in grads[:2]:
        keras_adam.apply_gradients(zip([tf.constant(x) for x in g], variables))
    path = str(tmp_path / "opt.ckpt")
    tf.train.Checkpoint(opt=keras_adam, v=variables).write(path)

    restored_vars = [keras.Variable(np.zeros_like(w)) for w in init]
    fused = optimizers.Adam(1e-2)
    fused.build(restored_vars)
    tf.train.Checkpoint(opt=fused, v=restored_vars).read(path).assert_consumed()
    for g in grads[2:]:
        keras_adam.apply_gradients(zip([tf.constant(x) for x in g], variables))
        fused.apply_gradients(zip([tf.constant(x) for x in g], restored_vars))
    for a, b in zip(restored_vars, variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-6)


def test_fused_optimizers_serialize():
    for opt in (optimizers.SGD(0.05, momentum=0.9, nesterov=True), optimizers.Adam(3e-3)):
        clone = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
        assert type(clone) is type(opt)
        assert clone.get_config() == opt.get_config()
