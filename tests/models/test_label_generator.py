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


def test_linear_fusion_is_eq5_as_written():
    """fusion_norm=False: F^_K = conv1x1(F_K), F^_k = conv3x3(Up(F^_{k+1}) + conv1x1(F_k)), with
    biases and nothing else (no BatchNorm, no ReLU), checked against the equation computed by hand."""
    rng = np.random.default_rng(1)
    shapes = [(2, 7, 7, 4), (2, 4, 4, 8), (2, 2, 2, 16)]  # odd sizes: the upsampling goes to F_k's exact size
    feats = [tf.constant(rng.normal(size=s).astype(np.float32)) for s in shapes]
    gen = LabelGenerator([4, 8, 16], 5, fusion_channels=6, fusion_norm=False)
    gen(feats, training=True)
    for conv in gen.lateral + gen.smooth:  # non-zero biases, so a dropped bias would show
        conv.bias.assign(rng.normal(size=conv.bias.shape).astype(np.float32))
    assert gen.smooth_bn == []

    def conv(layer, x):
        return tf.nn.conv2d(x, layer.kernel, 1, "SAME") + layer.bias

    expected = conv(gen.lateral[2], feats[2])
    by_hand = {}
    for k in (1, 0):
        up = tf.image.resize(expected, shapes[k][1:3], method="bilinear")
        expected = conv(gen.smooth[k], up + conv(gen.lateral[k], feats[k]))
        by_hand[k] = expected
    fused = gen.fuse(feats, training=True)
    for k in (0, 1):
        np.testing.assert_allclose(fused[k], by_hand[k], rtol=1e-5, atol=1e-5)
    assert float(tf.reduce_min(by_hand[0])) < 0  # linear: no ReLU clipped it
    default = LabelGenerator([4, 8, 16], 5, fusion_channels=6)
    default(feats, training=True)
    assert len(default.smooth_bn) == 2 and all(c.bias is None for c in default.lateral + default.smooth)
    assert LabelGenerator.from_config(gen.get_config()).fusion_norm is False


def test_generator_heads_follow_conv_chain_exits():
    """The paper's T_k head is the same bottleneck module as the exits': a network with conv-chain
    exits gets a generator with conv-chain heads (fusion width throughout), others keep BYOT's."""
    from tfkd.methods import build_method
    from tfkd.models.layers import ConvChainExit, ExitHead

    net = MultiExitResNet(depth=10, num_classes=3, width=0.0625, input_shape=(8, 8, 1), exit_style="conv_chain")
    net.ensure_built()
    method = build_method("metadistiller", net, {"fusion_channels": 4}, weight_decay=5e-4)
    method.build()
    heads = method.generator.heads
    assert all(isinstance(h, ConvChainExit) for h in heads)
    assert [[c.filters for c in h.convs] for h in heads] == [[4] * 5, [4] * 4, [4] * 3]
    targets = method.generator(method.stage_features(net(tf.zeros((2, 8, 8, 1)), return_features=True)[1]))
    assert all(t.shape == (2, 3) for t in targets.values())
    plain = LabelGenerator([4, 8, 16, 32], 5, fusion_channels=8)
    assert all(isinstance(h, ExitHead) for h in plain.heads)
    assert LabelGenerator.from_config(method.generator.get_config()).exit_style == "conv_chain"
