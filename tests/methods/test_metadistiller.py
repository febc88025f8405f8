"""MetaDistiller: the meta-gradient against finite differences, a side-effect-free lookahead, the
thinning of meta steps. Learning on real data and the export without the generator are checked on
the tiny run tests/test_visualize.py trains once for its figures too."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from tfkd import losses, train
from tfkd.methods import build_method
from tfkd.models import MultiExitResNet


def _tiny_method(**overrides):
    net = MultiExitResNet(depth=10, num_classes=3, width=0.0625, input_shape=(8, 8, 1), mean=[0.5], std=[0.5])
    net.ensure_built()
    cfg = {"alpha": 0.5, "tau": 2.0, "fusion_channels": 4, **overrides}
    method = build_method("metadistiller", net, cfg, weight_decay=5e-4)
    method.build()
    method.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    method.build_state()
    return method


def _batches(dtype, seed=0):
    rng = np.random.default_rng(seed)
    make = lambda: (tf.constant(rng.uniform(size=(6, 8, 8, 1)), dtype),  # noqa: E731
                    tf.constant(rng.integers(0, 3, 6).astype(np.int32)))
    return make(), make()


@pytest.fixture
def float64():
    policy = keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")  # an explicitly set policy would shadow floatx
    yield
    keras.config.set_floatx("float32")
    keras.config.set_dtype_policy(policy)


@pytest.mark.parametrize("fusion_norm", [True, False])
def test_meta_gradient_matches_finite_differences(float64, fusion_norm):
    keras.utils.set_random_seed(0)  # seeds Keras' initializers too (tf.random.set_seed does not)
    method = _tiny_method(fusion_norm=fusion_norm)
    meta_train, meta_test = _batches(tf.float64)
    zeta = tf.constant(0.5, tf.float64)  # a large step makes the second-order term matter
    loss, grads = method.meta_gradient(meta_train, meta_test, zeta)
    assert loss.dtype == tf.float64

    phi = [tf.convert_to_tensor(v) for v in method.generator.trainable_variables]
    theta = [tf.convert_to_tensor(v) for v in method.network.trainable_variables]
    nt = [tf.convert_to_tensor(v) for v in method.network.non_trainable_variables]
    gnt = [tf.convert_to_tensor(v) for v in method.generator.non_trainable_variables]

    # Traced once: the ~100 evaluations below then run as one graph each instead of op by op.
    lookahead = tf.function(lambda values: method.lookahead_loss(values, theta, nt, gnt, meta_train, meta_test, zeta))

    def outer(values):
        return float(lookahead(values))

    def central_difference(i, idx, eps):
        plus = [p.numpy().copy() for p in phi]
        minus = [p.numpy().copy() for p in phi]
        plus[i][idx] += eps
        minus[i][idx] -= eps
        return (outer([tf.constant(p) for p in plus]) - outer([tf.constant(p) for p in minus])) / (2 * eps)

    # The network is piecewise smooth (ReLU): a coordinate whose finite differences at two step
    # sizes disagree straddles a kink and says nothing about the gradient; skip those (few).
    order = sorted(((float(np.abs(g.numpy()).max()), i) for i, g in enumerate(grads)), reverse=True)
    checked, skipped = 0, 0
    for _, i in order[:24]:
        g = grads[i].numpy()
        idx = np.unravel_index(int(np.argmax(np.abs(g))), g.shape)
        fd_coarse, fd_fine = central_difference(i, idx, 1e-5), central_difference(i, idx, 1e-6)
        if abs(fd_coarse - fd_fine) > 1e-6 * max(1.0, abs(fd_coarse)):
            skipped += 1
            continue
        rel = abs(fd_coarse - g[idx]) / max(abs(fd_coarse), abs(g[idx]))
        assert rel < 1e-4, (method.generator.trainable_variables[i].path, idx, fd_coarse, g[idx], rel)
        checked += 1
    assert checked >= 10 and skipped <= checked, (checked, skipped)


def test_lookahead_inner_gradient_is_the_d_train_gradient_with_coupled_weight_decay():
    """The inner step's gradient (written-out weight decay, no L2 term in the tape) equals the
    gradient of the student loss + weight_decay * 0.5 * sum ||w||^2 taken with an ordinary tape."""
    keras.utils.set_random_seed(4)
    method = _tiny_method()
    method.weight_decay = 0.05  # large enough that a missing or doubled decay term shows
    (xa, ya), (xb, yb) = _batches(tf.float32)
    theta = [tf.convert_to_tensor(v) for v in method.network.trainable_variables]
    _, inner = method.lookahead_loss(
        [tf.convert_to_tensor(v) for v in method.generator.trainable_variables], theta,
        [tf.convert_to_tensor(v) for v in method.network.non_trainable_variables],
        [tf.convert_to_tensor(v) for v in method.generator.non_trainable_variables],
        (xa, ya), (xb, yb), tf.constant(0.1), return_inner=True)
    with tf.GradientTape() as tape:
        logits, features = method.network(xa, training=True, return_features=True)
        targets = method.generator([tf.stop_gradient(f) for f in method.stage_features(features)], training=True)
        terms = method.student_terms(ya, logits, method.soft_targets(targets, logits["final"].dtype))
        loss = tf.add_n(list(terms.values())) + 0.05 * losses.l2_penalty(method.network.trainable_variables)
    expected = tape.gradient(loss, method.network.trainable_variables,
                             unconnected_gradients=tf.UnconnectedGradients.ZERO)
    for got, want, v in zip(inner["grads"], expected, method.network.trainable_variables):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-6, err_msg=v.path)


def test_lookahead_leaves_real_model_untouched():
    method = _tiny_method()
    # One real step first, so that the optimizer has non-zero momentum state to protect.
    (xa, ya), (xb, yb) = _batches(tf.float32)
    method.set_phase("main")
    method.train_step((xa, ya))
    snapshot = lambda vs: [v.numpy().copy() for v in vs]  # noqa: E731
    net_before = snapshot(method.network.variables)  # incl. BatchNorm moving statistics
    opt_before = snapshot(method.optimizer.variables)
    gen_before = snapshot(method.generator.trainable_variables)
    method.meta_step((xa, ya), (xb, yb))
    for a, b in zip(net_before, method.network.variables):
        np.testing.assert_array_equal(a, b.numpy())
    for a, b in zip(opt_before, method.optimizer.variables):
        np.testing.assert_array_equal(a, b.numpy())
    changed = [not np.array_equal(a, b.numpy()) for a, b in zip(gen_before, method.generator.trainable_variables)]
    assert any(changed)
    assert int(method.meta_step_counter.numpy()) == 1


def test_shared_meta_step_equals_main_step_on_d_train_plus_meta_step_at_theta():
    """share_inner_gradient: one forward/backward gives the real update and the lookahead. It must
    equal the meta-gradient taken at theta followed by a main step on the D_train batch (weights,
    BatchNorm statistics, momentum, generator and its Adam state)."""
    def make():
        keras.utils.set_random_seed(3)
        m = _tiny_method(share_inner_gradient=True)
        m.set_phase("main")
        m.train_step(_batches(tf.float32, seed=1)[0])  # non-zero momentum and moving statistics
        m.set_phase("meta")
        return m

    (xa, ya), (xb, yb) = _batches(tf.float32)
    shared, separate = make(), make()
    shared.shared_meta_step((xa, ya), (xb, yb))
    _, grads = separate.meta_gradient((xa, ya), (xb, yb), separate.optimizer.learning_rate)
    separate.main_step(xa, ya)
    separate.generator_optimizer.apply_gradients(zip(grads, separate.generator.trainable_variables))
    separate.meta_step_counter.assign_add(1)
    for a, b in zip(shared.variables + shared.optimizer.variables + shared.generator_optimizer.variables,
                    separate.variables + separate.optimizer.variables + separate.generator_optimizer.variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.path)
    assert int(shared.meta_step_counter.numpy()) == 1


def test_main_update_does_not_train_the_generator():
    method = _tiny_method()
    (xa, ya), _ = _batches(tf.float32)
    gen_before = [v.numpy().copy() for v in method.generator.trainable_variables]
    with tf.GradientTape() as tape:
        terms, _ = method.compute_losses(xa, ya, training=True)
    grads = tape.gradient(terms["kd_exits"], method.generator.trainable_variables)
    assert all(g is None for g in grads)
    method.set_phase("main")
    method.train_step((xa, ya))
    for a, b in zip(gen_before, method.generator.trainable_variables):
        np.testing.assert_array_equal(a, b.numpy())


def test_meta_epochs_follow_m():
    method = _tiny_method(meta_every_epochs=3)
    assert [method.epoch_phase(e) for e in range(7)] == ["meta", "main", "main", "meta", "main", "main", "meta"]
    assert train.phase_segments(method, 1, 7) == [(1, 3, "main"), (3, 4, "meta"), (4, 6, "main"), (6, 7, "meta")]


def test_meta_every_steps_thins_shared_meta_steps_and_each_phase_is_traced_once():
    """share_inner_gradient with meta_every_steps=2 and M=2: in meta epochs, updates 2 and 4 are
    shared meta steps on the D_train / D_test batches, updates 1 and 3 main steps on the D batch;
    the main epoch between them has main steps only. Meta, main, meta epochs trace the meta step
    once (the second meta epoch reuses it: retracing cost tens of seconds per meta epoch), in a
    plain fit and in bin/train's one-fit-per-phase loop. (One model covers both checks: each new
    model's meta step is another trace of the nested-tape graph, the suite's costliest kind.)"""
    def make():
        keras.utils.set_random_seed(5)
        return _tiny_method(share_inner_gradient=True, meta_every_steps=2, meta_every_epochs=2)

    (xa, ya), (xb, yb) = _batches(tf.float32)
    (xm, ym), _ = _batches(tf.float32, seed=2)
    element = {"main": (xm, ym), "meta_train": (xa, ya), "meta_test": (xb, yb)}
    ds = tf.data.Dataset.from_tensors(element).repeat()
    thinned, by_hand = make(), make()
    traced = []
    original = thinned.train_step
    thinned.train_step = lambda data: traced.append(thinned._phase) or original(data)  # runs when traced
    thinned.fit(ds, epochs=1, steps_per_epoch=4, verbose=0, shuffle=False)  # a meta epoch
    for _ in range(2):
        by_hand.main_step(xm, ym)
        by_hand.shared_meta_step((xa, ya), (xb, yb))
    # Weights, generator and BatchNorm statistics; fit's graph and these eager steps round differently
    # (after 4 steps at lr 0.1: ~1e-4 with two intra-op threads, 7.7e-4 with one; growing chaotically
    # with more steps), where the wrong steps shared differ by more than 1.
    for a, b in zip(thinned.variables, by_hand.variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-3, atol=3e-3, err_msg=a.path)
    thinned.fit(ds, initial_epoch=1, epochs=3, steps_per_epoch=4, verbose=0, shuffle=False)  # main, meta
    # Meta steps are the updates whose optimizer step count is even in meta epochs: 2, 4 and 10, 12.
    assert int(thinned.meta_step_counter.numpy()) == 4 and int(thinned.optimizer.iterations.numpy()) == 12
    assert traced == ["meta", "main"]
    for phase in ("main", "meta", "main"):
        thinned.set_phase(phase)
        thinned.fit(ds, epochs=1, steps_per_epoch=1, verbose=0, shuffle=False)
    assert traced == ["meta", "main"]


def test_lookahead_with_targets_instead_of_the_generators():
    """The diagnostic hook of lookahead_loss: handing in the generator's own soft targets gives the
    generator's loss; other targets (uniform) give another loss from the same step."""
    keras.utils.set_random_seed(0)
    method = _tiny_method()
    meta_train, meta_test = _batches(tf.float32)
    args = ([tf.convert_to_tensor(v) for v in method.generator.trainable_variables],
            [tf.convert_to_tensor(v) for v in method.network.trainable_variables],
            [tf.convert_to_tensor(v) for v in method.network.non_trainable_variables],
            [tf.convert_to_tensor(v) for v in method.generator.non_trainable_variables], meta_train, meta_test,
            tf.constant(0.5))
    learned, inner = method.lookahead_loss(*args, return_inner=True)
    same = method.lookahead_loss(*args, targets_instead=lambda logits, labels: inner["soft"])
    uniform = method.lookahead_loss(*args, targets_instead=lambda logits, labels: {
        name: tf.fill(tf.shape(logits[name]), 1.0 / 3.0) for name in inner["soft"]})
    np.testing.assert_allclose(float(same), float(learned), rtol=1e-6)
    assert abs(float(uniform) - float(learned)) > 1e-6


@pytest.mark.parametrize("share_inner_gradient", [False, True])
def test_meta_batch_size_runs_the_meta_step_on_the_first_examples(share_inner_gradient):
    """A meta step with meta_batch_size=3 on batches of 6 is the meta step on the first 3 examples
    of each (shared: of the D_test batch only; the D_train batch is the real update's)."""
    meta_train, meta_test = _batches(tf.float32)
    cut = lambda batch: tuple(t[:3] for t in batch)  # noqa: E731
    step = "shared_meta_step" if share_inner_gradient else "meta_step"
    results = []
    for size, (train_batch, test_batch) in ((3, (meta_train, meta_test)),
                                            (0, (meta_train if share_inner_gradient else cut(meta_train),
                                                 cut(meta_test)))):
        keras.utils.set_random_seed(0)
        method = _tiny_method(meta_batch_size=size, share_inner_gradient=share_inner_gradient)
        getattr(method, step)(train_batch, test_batch)
        results.append([v.numpy() for v in method.generator.trainable_variables + method.network.trainable_variables])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="larger than the meta batches"):
        _tiny_method(meta_batch_size=7).meta_step(meta_train, meta_test)
