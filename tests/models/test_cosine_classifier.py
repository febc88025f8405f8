"""Cosine prototypical classifier: logits against numpy, masks, invariances, gradients."""
import numpy as np
import pytest
import tensorflow as tf

from tfkd.models.cosine_classifier import CosineClassifier


def _numpy_logits(support, mask, query, scale):
    protos = (support * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    protos /= np.linalg.norm(protos, axis=-1, keepdims=True)
    q = query / np.linalg.norm(query, axis=-1, keepdims=True)
    return scale * q @ protos.T


def test_logits_match_numpy_and_mask_hides_extra_shots():
    rng = np.random.default_rng(0)
    support = rng.normal(size=(4, 6, 8)).astype(np.float32)
    query = rng.normal(size=(10, 8)).astype(np.float32)
    mask = np.zeros((4, 6), bool)
    mask[:, :2] = True
    clf = CosineClassifier(scale_init=75.0)
    logits = clf((support, mask, query)).numpy()
    np.testing.assert_allclose(logits, _numpy_logits(support, mask, query, 75.0), rtol=1e-4, atol=1e-4)
    changed = support.copy()
    changed[:, 2:] += 100.0  # masked-out shots must not matter
    np.testing.assert_allclose(clf((changed, mask, query)).numpy(), logits, rtol=1e-5, atol=1e-5)
    # Cosine: rescaling a query leaves its logits unchanged.
    np.testing.assert_allclose(clf((support, mask, 3.0 * query)).numpy(), logits, rtol=1e-4, atol=1e-4)


def test_embedding_and_scale_receive_gradients():
    rng = np.random.default_rng(1)
    support = tf.constant(rng.normal(size=(3, 2, 5)).astype(np.float32))
    query = tf.constant(rng.normal(size=(6, 5)).astype(np.float32))
    labels = tf.constant([0, 1, 2, 0, 1, 2])
    clf = CosineClassifier(embedding_units=(16, 8), scale_init=10.0)
    with tf.GradientTape() as tape:
        logits = clf((support, tf.ones((3, 2), bool), query))
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
    grads = tape.gradient(loss, clf.trainable_variables)
    assert len(grads) == 5  # 2 dense kernels + 2 biases + scale
    assert all(g is not None and float(tf.reduce_max(tf.abs(g))) > 0 for g in grads)
    assert logits.shape == (6, 3)


def test_get_config_round_trip():
    clf = CosineClassifier(embedding_units=(4,), scale_init=150.0)
    clone = CosineClassifier.from_config(clf.get_config())
    assert clone.embedding_units == (4,) and clone.scale_init == pytest.approx(150.0)
