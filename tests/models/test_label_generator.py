"""Label generator (Eq. 5): target shapes for every early stage, odd spatial sizes, top-down flow."""
import numpy as np
import pytest
import tensorflow as tf

from tfkd.models import MultiExitResNet
from tfkd.models.label_generator import LabelGenerator


@pytest.mark.parametrize("size", [32, 28, 27, 13])
def test_targets_for_every_early_stage_any_size(size):
    net = MultiExitResNet(depth=18, num_classes=7, width=0.0625, input_shape=(size, size, 3))
    _, feats = net(tf.zeros((2, size, size, 3)), return_features=True)
    stages = [feats[f"stage_{k}"] for k in range(1, 5)]
    gen = LabelGenerator(net.stage_channels, 7, fusion_channels=8)
    targets = gen(stages)
    assert sorted(targets) == ["exit_1", "exit_2", "exit_3"]
    for t in targets.values():
        assert t.shape == (2, 7)
    fused = gen.fuse(stages)
    for f, s in zip(fused, stages[:-1]):  # fused maps keep each stage's spatial size
        assert f.shape[1:3] == s.shape[1:3] and f.shape[-1] == 8


def test_top_down_dependence():
    """T_k depends on F_k and deeper maps only: changing F_1 leaves T_2 and T_3 unchanged."""
    rng = np.random.default_rng(0)
    shapes = [(1, 16, 16, 4), (1, 8, 8, 8), (1, 4, 4, 16), (1, 2, 2, 32)]
    feats = [tf.constant(rng.normal(size=s).astype(np.float32)) for s in shapes]
    gen = LabelGenerator([4, 8, 16, 32], 5, fusion_channels=8)
    a = gen(feats, training=False)
    changed = [feats[0] + 1.0] + feats[1:]
    b = gen(changed, training=False)
    assert not np.allclose(a["exit_1"], b["exit_1"])
    np.testing.assert_allclose(a["exit_2"], b["exit_2"], atol=1e-6)
    np.testing.assert_allclose(a["exit_3"], b["exit_3"], atol=1e-6)
    c = gen(feats[:3] + [feats[3] + 1.0], training=False)  # the deepest map reaches every target
    for name in ("exit_1", "exit_2", "exit_3"):
        assert not np.allclose(a[name], c[name])
