"""tfkd's BatchNormalization: TensorFlow's fused kernel in training mode, numerically Keras' own
(outputs, moving statistics, first- and second-order gradients: MetaDistiller differentiates the
network's backward pass)."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from tfkd.models.layers import BatchNormalization, fused_batchnorm


def _pair(channels=3):
    ours, theirs = BatchNormalization(momentum=0.9, epsilon=1e-5), keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)
    for layer in (ours, theirs):
        layer.build((None, 5, 5, channels))
        layer.gamma.assign(np.linspace(0.5, 2.0, channels))
        layer.beta.assign(np.linspace(-1.0, 1.0, channels))
    return ours, theirs


def _inputs(seed=0):
    return tf.constant(np.random.default_rng(seed).normal(1.0, 3.0, size=(8, 5, 5, 3)), tf.float32)


def _ops(layer, x, training):
    graph = tf.function(lambda t: layer(t, training=training)).get_concrete_function(x).graph
    return {op.type for op in graph.get_operations()}


def test_training_uses_the_fused_kernel_and_inference_keras_path():
    ours, theirs = _pair()
    x = _inputs()
    assert "FusedBatchNormV3" in _ops(ours, x, True)
    assert "FusedBatchNormV3" not in _ops(theirs, x, True)  # what we replace: moments, rsqrt, ...
    assert "FusedBatchNormV3" not in _ops(ours, x, False)
    with fused_batchnorm(False):  # what benchmarks/batchnorm_ab.py compares against
        assert "FusedBatchNormV3" not in _ops(ours, x, True)
    assert "FusedBatchNormV3" in _ops(ours, x, True)


def test_outputs_and_moving_statistics_equal_keras():
    ours, theirs = _pair()
    for step in range(3):  # moving averages accumulate over several updates
        x = _inputs(step)
        np.testing.assert_allclose(ours(x, training=True), theirs(x, training=True), atol=2e-6)
    np.testing.assert_allclose(ours.moving_mean.numpy(), theirs.moving_mean.numpy(), atol=1e-6)
    np.testing.assert_allclose(ours.moving_variance.numpy(), theirs.moving_variance.numpy(), rtol=1e-5)
    np.testing.assert_allclose(ours(x, training=False), theirs(x, training=False), atol=2e-6)


def test_first_and_second_order_gradients_equal_keras():
    """d/d(x, gamma, beta) of a weighted output, and the gradient of that gradient's squared norm
    (the kind of term a lookahead's meta-gradient differentiates)."""
    x = _inputs()
    weights = tf.constant(np.random.default_rng(1).normal(size=(8, 5, 5, 3)), tf.float32)
    results = []
    for layer in _pair():
        with tf.GradientTape(persistent=True) as outer:
            outer.watch(x)
            with tf.GradientTape() as inner:
                inner.watch(x)
                loss = tf.reduce_sum(tf.square(layer(x, training=True)) * weights)
            first = inner.gradient(loss, [x, layer.gamma, layer.beta])
            second_target = tf.add_n([tf.reduce_sum(tf.square(g)) for g in first])
        second = outer.gradient(second_target, [x, layer.gamma, layer.beta])
        results.append([g.numpy() for g in first + second])
    for ours, theirs in zip(*results):
        np.testing.assert_allclose(ours, theirs, rtol=2e-3, atol=2e-4 * float(np.abs(theirs).max()))


def test_float64_and_synchronized_replicas_keep_keras_path():
    ours, _ = _pair()
    x64 = tf.cast(_inputs(), tf.float64)
    assert not ours._fused_applies(x64, True, None)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])  # one replica: fused is still exact
    with strategy.scope():
        synced = BatchNormalization(synchronized=True)
    synced.build((None, 5, 5, 3))
    with strategy.scope():
        assert synced._fused_applies(_inputs(), True, None)
    assert keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(synced)).__class__ is BatchNormalization


@pytest.mark.parametrize("dtype", ["float32", "float64"])  # the fused path, and Keras' own
def test_frozen_statistics_normalise_with_the_batch_and_leave_the_moving_averages(dtype):
    """Inside frozen_batchnorm_statistics a training call gives what it gives outside, and the
    moving averages stay where they were; the fused path builds no update for them at all."""
    from tfkd.models.layers import frozen_batchnorm_statistics

    layer = BatchNormalization(momentum=0.9, epsilon=1e-5, dtype=dtype)
    layer.build((None, 5, 5, 3))
    layer.moving_mean.assign([0.5, -1.0, 2.0])
    x = tf.cast(_inputs(), dtype)
    with frozen_batchnorm_statistics():
        frozen = layer(x, training=True).numpy()
        ops_frozen = _ops(layer, x, True)
    np.testing.assert_array_equal(layer.moving_mean.numpy(), [0.5, -1.0, 2.0])
    np.testing.assert_array_equal(layer.moving_variance.numpy(), [1.0, 1.0, 1.0])
    np.testing.assert_allclose(frozen, layer(x, training=True).numpy(), rtol=1e-6, atol=1e-6)
    assert layer.moving_mean.numpy()[0] != 0.5  # outside, the same call updates them
    if dtype == "float32":
        assert "AssignVariableOp" in _ops(layer, x, True) and "AssignVariableOp" not in ops_frozen


def test_frozen_statistics_are_per_thread():
    """MirroredStrategy traces each replica in its own thread: one replica's lookahead freezing its
    statistics must not freeze another replica's main forward (the mirrored MetaDistiller check
    differed by 0.3 when the setting was process-wide)."""
    import threading

    from tfkd.models.layers import frozen_batchnorm_statistics

    layer = BatchNormalization(momentum=0.9, epsilon=1e-5)
    layer.build((None, 5, 5, 3))
    inside, done = threading.Event(), threading.Event()

    def freezer():
        with frozen_batchnorm_statistics():
            inside.set()
            done.wait(30)

    thread = threading.Thread(target=freezer)
    thread.start()
    try:
        assert inside.wait(30)
        layer(_inputs(), training=True)
    finally:
        done.set()
        thread.join()
    assert np.abs(layer.moving_mean.numpy()).max() > 0.01  # this thread's call updated them


@pytest.mark.parametrize("training", [True, False])
def test_mask_falls_back(training):
    ours, _ = _pair()
    assert not ours._fused_applies(_inputs(), training, tf.ones((8, 5, 5)))


def test_checkpoints_written_with_keras_batchnorm_still_load(tmp_path, monkeypatch):
    """Run folders trained before tfkd had its own BatchNormalization hold weights saved from Keras' class;
    Keras names a list-tracked layer's weights after its class, so they load only if the names
    agree (resuming such a MetaDistiller run failed: "smooth_bn_1 expected 4 variables, but
    received 0")."""
    from tfkd.methods import MetaDistiller
    from tfkd.models import MultiExitResNet, layers as tfkd_layers

    def build():
        keras.utils.set_random_seed(3)
        network = MultiExitResNet(depth=10, num_classes=3, width=0.0625, input_shape=(12, 12, 1)).ensure_built()
        model = MetaDistiller(network)
        model.build()
        return model

    with monkeypatch.context() as m:
        m.setattr(tfkd_layers, "BatchNormalization", keras.layers.BatchNormalization)  # what _bn made before
        old = build()
    assert not any(isinstance(layer, BatchNormalization) for layer in old._flatten_layers())
    x = np.random.default_rng(0).uniform(0, 255, (4, 12, 12, 1)).astype(np.float32)
    old.network(x, training=True)  # moving statistics away from their initial values
    old.generator([tf.zeros((4,) + tuple(v.shape[1:])) for v in old.stage_features(old.network(
        x, training=False, return_features=True)[1])], training=True)
    old.save_weights(str(tmp_path / "old.weights.h5"))
    new = build()
    new.load_weights(str(tmp_path / "old.weights.h5"))
    for a, b in zip(old.get_weights(), new.get_weights()):
        np.testing.assert_array_equal(a, b)


def _second_order(batch_norm, x, gamma, beta, weights, upstream):
    """(first-order grads, grads of <upstream, first-order grads> w.r.t. x, gamma and the output
    weights) of sum(weights * BN(x)), in a traced graph (as the MetaDistiller meta step takes them),
    and the number of ops the outer gradient added to that graph."""
    counts = []

    @tf.function
    def run(x, gamma, beta, weights):
        with tf.GradientTape() as outer:
            outer.watch([x, gamma, weights])
            with tf.GradientTape() as inner:
                inner.watch([x, gamma, beta])
                y = batch_norm(x, gamma, beta)[0]
                loss = tf.reduce_sum(weights * y)
            first = inner.gradient(loss, [x, gamma, beta])
            target = tf.add_n([tf.reduce_sum(u * g) for u, g in zip(upstream, first)])
        graph = tf.compat.v1.get_default_graph()
        before = len(graph.get_operations())
        second = outer.gradient(target, [x, gamma, weights])
        counts.append(len(graph.get_operations()) - before)
        return first + second

    return [t.numpy() for t in run(x, gamma, beta, weights)], counts[0]


def test_second_derivative_equals_tensorflows_own_and_is_a_smaller_graph():
    """fused_batch_norm_training writes out the fused gradient kernel's gradient (d/d dy, d/d x,
    d/d gamma, each with every upstream term: G, g_gamma and g_beta); TensorFlow's own comes from a
    composite BatchNorm. Same values, a smaller graph."""
    from tfkd.models.layers import fused_batch_norm_training

    rng = np.random.default_rng(2)
    x = tf.constant(rng.normal(1.0, 2.0, size=(4, 3, 3, 5)), tf.float32)
    gamma, beta = (tf.constant(rng.normal(size=5), tf.float32) for _ in range(2))
    weights = tf.constant(rng.normal(size=(4, 3, 3, 5)), tf.float32)
    upstream = [tf.constant(rng.normal(size=shape), tf.float32) for shape in ((4, 3, 3, 5), (5,), (5,))]
    ours, our_ops = _second_order(lambda *a: fused_batch_norm_training(*a, 1e-5), x, gamma, beta, weights, upstream)
    theirs, their_ops = _second_order(
        lambda *a: tf.compat.v1.nn.fused_batch_norm(*a, epsilon=1e-5, is_training=True), x, gamma, beta, weights,
        upstream)
    for name, a, b in zip(["dx", "dgamma", "dbeta", "d2x", "d2gamma", "d2weights"], ours, theirs):
        assert np.abs(b).max() > 0.1, name  # every term is really exercised
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(np.abs(b).max()), err_msg=name)
    assert our_ops < 0.7 * their_ops, (our_ops, their_ops)  # measured: 74 against 143 ops
