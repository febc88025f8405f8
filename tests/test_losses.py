"""Distillation losses against hand computations in NumPy, and their gradient routing."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfkd.losses import cross_entropy, feature_hint_loss, kd_loss, kl_divergence, l2_penalty  # noqa: E402


def np_log_softmax(z, tau=1.0):
    z = np.asarray(z, np.float64) / tau
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_softmax(z, tau=1.0):
    return np.exp(np_log_softmax(z, tau))


def np_kl(p, log_q):
    """Mean over rows of sum_c p_c (log p_c - log q_c), with 0 log 0 = 0."""
    p = np.asarray(p, np.float64)
    log_p = np.where(p > 0, np.log(np.where(p > 0, p, 1.0)), 0.0)
    return float(np.mean(np.sum(p * (log_p - log_q), -1)))


RNG = np.random.default_rng(0)
TEACHER = (RNG.normal(size=(5, 7)) * 3).astype(np.float32)
STUDENT = (RNG.normal(size=(5, 7)) * 2).astype(np.float32)


def test_cross_entropy_matches_numpy():
    logits = np.array([[2.0, 1.0, 0.1], [0.5, 2.5, -1.0], [-3.0, 0.0, 3.0], [1.0, 1.0, 1.0]], np.float32)
    labels = np.array([0, 2, 2, 1])
    # By hand: -log softmax(z)[y], averaged.
    expected = np.mean([-(np_log_softmax(logits[i])[labels[i]]) for i in range(4)])
    assert float(cross_entropy(labels, logits)) == pytest.approx(expected, rel=1e-5)
    # A uniform row costs exactly log(C).
    assert float(cross_entropy([1], logits[3:])) == pytest.approx(np.log(3.0), rel=1e-6)
    # Accepts int64 labels and float16 logits, returns float32.
    out = cross_entropy(tf.constant(labels, tf.int64), tf.constant(logits, tf.float16))
    assert out.dtype == tf.float32
    assert float(out) == pytest.approx(expected, rel=1e-3)


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_kd_loss_is_tau2_kl_teacher_student(tau):
    p_t = np_softmax(TEACHER, tau)
    log_p_s = np_log_softmax(STUDENT, tau)
    expected = tau ** 2 * np_kl(p_t, log_p_s)
    got = float(kd_loss(TEACHER, STUDENT, tau=tau))
    assert got == pytest.approx(expected, rel=1e-5)
    assert got > 0
    # Direction: KL(T || S), not KL(S || T) (which differs on this asymmetric example).
    reverse = tau ** 2 * np_kl(np_softmax(STUDENT, tau), np_log_softmax(TEACHER, tau))
    assert abs(reverse - expected) > 0.05 * expected
    assert got != pytest.approx(reverse, rel=1e-3)


def test_kd_loss_direction_on_a_two_class_example():
    # T = (0.9, 0.1), S = (0.5, 0.5): KL(T||S) = 0.9 ln 1.8 + 0.1 ln 0.2 = 0.36806;
    # KL(S||T) = 0.5 ln(0.5/0.9) + 0.5 ln(0.5/0.1) = 0.51083.
    t = np.log(np.array([[0.9, 0.1]], np.float32))
    s = np.zeros((1, 2), np.float32)
    assert float(kd_loss(t, s)) == pytest.approx(0.9 * np.log(1.8) + 0.1 * np.log(0.2), rel=1e-5)
    assert float(kd_loss(t, s)) == pytest.approx(0.368064, abs=1e-5)
    assert float(kd_loss(s, t)) == pytest.approx(0.510826, abs=1e-5)


def test_kd_loss_zero_when_teacher_equals_student():
    for tau in (1.0, 4.0):
        assert abs(float(kd_loss(TEACHER, TEACHER, tau=tau))) < 1e-5
    # Invariant to a per-row shift of the logits (same softmax).
    assert abs(float(kd_loss(TEACHER, TEACHER + 10.0, tau=2.0))) < 1e-4


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_kd_loss_gradients_flow_only_into_student(tau):
    t = tf.Variable(TEACHER)
    s = tf.Variable(STUDENT)
    with tf.GradientTape(persistent=True) as tape:
        loss = kd_loss(t, s, tau=tau)
    g_t = tape.gradient(loss, t)
    g_s = tape.gradient(loss, s)
    assert g_t is None or not np.any(g_t.numpy())
    # d/ds [tau^2 KL(T||softmax(s/tau))] = tau (softmax(s/tau) - softmax(t/tau)) / batch.
    expected = tau * (np_softmax(STUDENT, tau) - np_softmax(TEACHER, tau)) / len(STUDENT)
    np.testing.assert_allclose(g_s.numpy(), expected, rtol=1e-4, atol=1e-7)
    assert np.abs(g_s.numpy()).max() > 1e-3


def test_kd_loss_with_teacher_probabilities():
    tau = 3.0
    probs = np.array([[0.7, 0.2, 0.1, 0.0], [0.0, 0.0, 1.0, 0.0]], np.float32)  # exact zeros: 0 log 0 = 0
    student = np.array([[1.0, 0.5, -0.5, 0.0], [0.0, 0.3, 2.0, -1.0]], np.float32)
    expected = tau ** 2 * np_kl(probs, np_log_softmax(student, tau))  # tau does not soften the teacher
    p = tf.Variable(probs)
    s = tf.Variable(student)
    with tf.GradientTape(persistent=True) as tape:
        loss = kd_loss(p, s, tau=tau, teacher_is_probs=True)
    assert np.isfinite(float(loss))
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    # Treating the probabilities as logits would give something else.
    assert float(kd_loss(probs, student, tau=tau)) != pytest.approx(expected, rel=1e-3)
    g_p = tape.gradient(loss, p)
    assert g_p is None or not np.any(g_p.numpy())
    expected_gs = tau * (np_softmax(student, tau) - probs) / len(student)
    np.testing.assert_allclose(tape.gradient(loss, s).numpy(), expected_gs, rtol=1e-4, atol=1e-7)


def test_kl_divergence_zero_log_zero():
    p = tf.constant([[1.0, 0.0, 0.0]])
    log_q = tf.math.log(tf.constant([[0.5, 0.25, 0.25]]))
    assert float(kl_divergence(p, log_q)) == pytest.approx(np.log(2.0), rel=1e-6)


def test_feature_hint_loss_value_and_stop_gradient():
    rng = np.random.default_rng(1)
    fs = rng.normal(size=(2, 4, 4, 3)).astype(np.float32)
    ft = rng.normal(size=(2, 4, 4, 3)).astype(np.float32)
    s, t = tf.Variable(fs), tf.Variable(ft)
    with tf.GradientTape(persistent=True) as tape:
        loss = feature_hint_loss(s, t)
    assert float(loss) == pytest.approx(float(np.mean((fs - ft) ** 2)), rel=1e-5)
    g_t = tape.gradient(loss, t)
    assert g_t is None or not np.any(g_t.numpy())
    np.testing.assert_allclose(tape.gradient(loss, s).numpy(), 2 * (fs - ft) / fs.size, rtol=1e-5, atol=1e-8)
    assert float(feature_hint_loss(fs, fs)) == 0.0


def test_l2_penalty_value_and_gradient_equals_weights():
    rng = np.random.default_rng(2)
    values = [rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(5,)).astype(np.float32)]
    variables = [tf.Variable(v) for v in values]
    with tf.GradientTape() as tape:
        loss = l2_penalty(variables)
    assert float(loss) == pytest.approx(0.5 * sum(float((v.astype(np.float64) ** 2).sum()) for v in values),
                                        rel=1e-5)
    for g, v in zip(tape.gradient(loss, variables), values):
        np.testing.assert_allclose(g.numpy(), v, rtol=1e-6)
    assert float(l2_penalty([])) == 0.0
