"""Classifier heads: the cosine head of Chen et al. 2019 against numpy, and in the ResNet."""
import numpy as np
import pytest

from tfkd.models import MultiExitResNet
from tfkd.models.heads import CosineDense, classifier_head


def test_cosine_head_is_scaled_cosine_and_ignores_feature_norm():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 8)).astype(np.float32)
    head = CosineDense(4, scale_init=10.0)
    logits = np.asarray(head(x))
    w = np.asarray(head.kernel)
    expected = 10.0 * (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=0, keepdims=True))
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(head(5.0 * x)), logits, rtol=1e-5, atol=1e-5)
    assert np.abs(logits).max() <= 10.0 + 1e-4
    assert len(head.trainable_weights) == 2  # kernel and the learnable scale


def test_resnet_with_cosine_head_round_trips_config():
    model = MultiExitResNet(depth=18, num_classes=7, width=0.0625, input_shape=(28, 28, 1), head="cosine")
    model.ensure_built()
    assert isinstance(model.classifier, CosineDense)
    clone = MultiExitResNet.from_config(model.get_config())
    clone.ensure_built()
    assert clone.head == "cosine" and isinstance(clone.classifier, CosineDense)
    with pytest.raises(ValueError, match="head must be 'linear' or 'cosine'"):
        classifier_head("mlp", 3)
