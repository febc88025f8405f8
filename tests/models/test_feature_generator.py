"""Feature generator G(x, z, q): identity at initialisation, seeded noise, gradients reach G."""
import keras
import numpy as np
import tensorflow as tf

from tfkd.models.cosine_classifier import CosineClassifier
from tfkd.models.feature_generator import FeatureGenerator


def test_identity_at_init_and_noise_matters_after_training_step():
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(5, 8)).astype(np.float32))
    q = tf.constant(rng.normal(size=(5, 8)).astype(np.float32))
    gen = FeatureGenerator(8, hidden_units=(16,), seed=3)
    np.testing.assert_allclose(gen((x, q)).numpy(), x.numpy(), atol=1e-6)
    gen.out.kernel.assign(tf.random.normal(gen.out.kernel.shape, seed=1))
    a, b = gen((x, q)), gen((x, q))  # fresh noise each call
    assert not np.allclose(a.numpy(), b.numpy())
    z = tf.zeros((5, 8))
    np.testing.assert_allclose(gen((x, q), noise=z).numpy(), gen((x, q), noise=z).numpy())


def test_noise_is_reproducible_from_the_seed():
    x = tf.ones((3, 4))
    outs = []
    for _ in range(2):
        keras.utils.set_random_seed(0)  # same initial weights; the noise comes from seed=11
        gen = FeatureGenerator(4, hidden_units=(8,), seed=11)
        gen((x, x))
        gen.out.kernel.assign(tf.ones(gen.out.kernel.shape))
        outs.append(gen((x, x)).numpy())
    np.testing.assert_allclose(outs[0], outs[1])


def test_gradients_reach_generator_through_student():
    """Backprop from the student's query loss through generated support features into G."""
    rng = np.random.default_rng(2)
    real = tf.constant(rng.normal(size=(3, 1, 6)).astype(np.float32))  # 3-way 1-shot
    query = tf.constant(rng.normal(size=(9, 6)).astype(np.float32))
    labels = tf.constant(np.repeat(np.arange(3), 3))
    gen = FeatureGenerator(6, hidden_units=(12,), seed=0)
    clf = CosineClassifier(scale_init=10.0)
    with tf.GradientTape() as tape:
        x = tf.repeat(real, 2, axis=1)  # 2 generated per class from the real shot
        flat = tf.reshape(x, (-1, 6))
        generated = tf.reshape(gen((flat, flat)), (3, 2, 6))
        support = tf.concat([real, generated], axis=1)
        logits = clf((support, tf.ones((3, 3), bool), query))
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
    grads = tape.gradient(loss, gen.trainable_variables)
    out_kernel_grad = grads[[v.path for v in gen.trainable_variables].index(gen.out.kernel.path)]
    assert float(tf.reduce_max(tf.abs(out_kernel_grad))) > 0
