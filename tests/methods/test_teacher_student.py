"""Teacher-student methods: losses against hand computation, frozen teachers, DML, bad inputs."""
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfkd import losses, train
from tfkd.errors import ConfigError
from tfkd.methods import build_method
from tfkd.methods.teacher_student import attention_loss, attention_map
from tfkd.models import build_backbone
from tfkd.teachers import Teacher


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    """A real teacher: the tiny ResNet18 trained two epochs on a Fashion-MNIST subset."""
    from tests.conftest import tiny_config

    config = tiny_config(method="baseline", epochs=2)
    workdir = str(tmp_path_factory.mktemp("teacher") / "run")
    metrics = train.run(config, workdir)
    return workdir, metrics


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_kd_soft_term_is_tau_squared_kl_of_softened_outputs():
    s = np.array([[2.0, -1.0, 0.5], [0.0, 1.0, 3.0]], np.float32)
    t = np.array([[1.0, 0.0, 3.0], [2.0, 1.0, 0.0]], np.float32)
    temp = 4.0
    p_t, p_s = _softmax(t / temp), _softmax(s / temp)
    expected = temp ** 2 * np.mean((p_t * np.log(p_t / p_s)).sum(-1))
    keras_kd = keras.distillation.LogitsDistillation(temperature=temp, loss=keras.losses.KLDivergence())
    assert float(keras_kd.compute_loss(t, s)) == pytest.approx(expected, rel=1e-4)
    # Keras 3.15's default loss string skips softmax and T^2: why tfkd passes the instance.
    default = keras.distillation.LogitsDistillation(temperature=temp).compute_loss(t, s)
    assert float(default) != pytest.approx(expected, rel=1e-2)
    assert float(losses.kd_loss(t, s, temp)) == pytest.approx(expected, rel=1e-4)  # our own, same number


def test_attention_loss_against_numpy():
    rng = np.random.default_rng(0)
    fs = rng.normal(size=(2, 4, 4, 3)).astype(np.float32)
    ft = rng.normal(size=(2, 4, 4, 5)).astype(np.float32)

    def at(f):
        a = (f ** 2).mean(-1).reshape(2, -1)
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    expected = np.mean((at(fs) - at(ft)) ** 2)
    assert float(attention_loss(fs, ft)) == pytest.approx(expected, rel=1e-5)
    # Different spatial sizes: the student's map is resized to the teacher's.
    small = rng.normal(size=(2, 2, 2, 3)).astype(np.float32)
    assert np.isfinite(float(attention_loss(small, ft)))
    normalised, _ = attention_map(ft)
    np.testing.assert_allclose(np.linalg.norm(normalised, axis=1), 1.0, rtol=1e-5)


def _student():
    return build_backbone("mobilenetv2", num_classes=10, width=0.25, input_shape=(28, 28, 1))


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    return (tf.constant(rng.integers(0, 256, (8, 28, 28, 1)).astype(np.float32)),
            tf.constant(rng.integers(0, 10, 8), tf.int32))


@pytest.mark.parametrize("method,cfg", [
    ("kd", {"alpha": 0.9, "temperature": 4.0}),
    ("fitnet", {"beta": 100.0, "student_stage": 2, "teacher_stage": 2}),
    ("at", {"beta": 1000.0, "p": 2.0}),
])
def test_student_steps_leave_the_teacher_frozen(teacher_run, method, cfg):
    workdir, _ = teacher_run
    keras.utils.set_random_seed(0)
    model = build_method(method, _student(), cfg, teacher=Teacher(workdir, f"config.{method}.teacher"),
                         weight_decay=5e-4)
    model(tf.zeros((1, 28, 28, 1)), training=False)  # builds, as bin/train does
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    model.build_state()
    teacher_weights = [w.copy() for w in model.teacher.network.get_weights()]
    student_before = [v.numpy().copy() for v in model.network.trainable_variables]
    images, labels = _batch()
    logs = None
    for _ in range(3):
        logs = model.train_step((images, labels))
    for a, b in zip(teacher_weights, model.teacher.network.get_weights()):
        np.testing.assert_array_equal(a, b)  # BatchNorm statistics included
    assert any(not np.allclose(a, b.numpy()) for a, b in zip(student_before, model.network.trainable_variables))
    second = [n for n in logs if n not in ("loss", "ce_final", "final_accuracy")]
    assert second and all(float(logs[n]) > 0 for n in second)
    teacher_ids = {id(v) for v in model.teacher.network.variables}
    assert not teacher_ids & {id(v) for v in model.variables}  # never checkpointed with the student


def test_kd_accepts_an_exported_teacher_and_fitnet_explains_why_not(teacher_run):
    workdir, _ = teacher_run
    export = os.path.join(workdir, "export")
    model = build_method("kd", _student(), {"alpha": 0.9, "temperature": 4.0}, teacher=Teacher(export, "t"))
    images, _ = _batch()
    by_export = model.teacher.logits(images).numpy()
    by_checkpoint = Teacher(workdir, "t").logits(images).numpy()
    np.testing.assert_allclose(by_export, by_checkpoint, atol=1e-4)
    with pytest.raises(ConfigError, match="stage feature maps; give its bin/train run folder"):
        build_method("fitnet", _student(), {"beta": 100.0, "student_stage": 2, "teacher_stage": 2},
                     teacher=Teacher(export, "config.fitnet.teacher"))


def test_teacher_mismatch_and_missing_teacher_fail_clearly(teacher_run, tmp_path):
    workdir, _ = teacher_run
    wrong = build_backbone("mobilenetv2", num_classes=7, width=0.25, input_shape=(28, 28, 1))
    with pytest.raises(ConfigError, match="predicts 10 classes, the student's data has 7"):
        build_method("kd", wrong, {"alpha": 0.9, "temperature": 4.0}, teacher=Teacher(workdir, "config.kd.teacher"))
    with pytest.raises(ConfigError, match="expected a bin/train run folder"):
        Teacher(str(tmp_path), "config.kd.teacher")
    with pytest.raises(TypeError, match="takes a loaded teacher"):  # a path is the driver's job to load
        build_method("kd", _student(), {"alpha": 0.9, "temperature": 4.0, "teacher": workdir})
    from tests.conftest import tiny_config

    with pytest.raises(ConfigError, match="config.kd.teacher: expected a finished bin/train run folder"):
        train.resolve(tiny_config(method="kd"))


def test_dml_updates_both_students_toward_each_other():
    keras.utils.set_random_seed(0)
    model = build_method("dml", _student(), {})
    model(tf.zeros((1, 28, 28, 1)), training=False)
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    model.build_state()
    first = [v.numpy().copy() for v in model.network.trainable_variables]
    peer = [v.numpy().copy() for v in model.peer.trainable_variables]
    assert any(not np.allclose(a, b) for a, b in zip(first, peer))  # independent initialisations
    images, labels = _batch(1)
    logs = model.train_step((images, labels))
    assert float(logs["kl_peer"]) > 0 and float(logs["kl_to_first"]) > 0
    assert any(not np.allclose(a, b.numpy()) for a, b in zip(first, model.network.trainable_variables))
    assert any(not np.allclose(a, b.numpy()) for a, b in zip(peer, model.peer.trainable_variables))
    # Each KL term's gradient reaches only its own student (the other side is a target).
    with tf.GradientTape() as tape:
        terms, _ = model.compute_losses(images, labels, training=False)
    grads = tape.gradient(terms["kl_peer"], model.peer.trainable_variables)
    assert all(g is None for g in grads)


def test_teacher_student_methods_train_end_to_end_with_bin_train(teacher_run, tmp_path):
    from tests.conftest import tiny_config

    workdir, teacher_metrics = teacher_run
    config = tiny_config(method="at", epochs=2)
    config.model.arch = "wrn16_1"  # another architecture than the teacher's ResNet18
    config.model.width = 0.5
    config.at.teacher = workdir
    metrics = train.run(config, str(tmp_path / "student"))
    assert metrics["test"]["final_accuracy"] > 0.3  # 10 classes: chance 0.1
    assert os.path.exists(str(tmp_path / "student" / "export" / "saved_model.pb"))
    # The student can be restored (bin/export, bin/extract_features) after its teacher is gone.
    from tfkd.export import restore_network

    moved = workdir + ".moved"
    os.rename(workdir, moved)
    try:
        network, _, _, _ = restore_network(str(tmp_path / "student"))
        assert network.num_classes == 10
    finally:
        os.rename(moved, workdir)


def test_fitnet_hint_matches_hand_computation(teacher_run):
    """beta * mean((BN(conv1x1(F_s)) - F_t)^2) with the regressor at initialisation (BN in inference
    mode: moving mean 0, variance 1)."""
    workdir, _ = teacher_run
    keras.utils.set_random_seed(0)
    model = build_method("fitnet", _student(), {"beta": 100.0, "student_stage": 2, "teacher_stage": 2},
                         teacher=Teacher(workdir, "config.fitnet.teacher"))
    model(tf.zeros((1, 28, 28, 1)), training=False)
    images, labels = _batch(3)
    terms, _ = model.compute_losses(images, labels, training=False)
    student = model.network.backbone(images, training=False)[1].numpy()
    target = model.teacher.stages(images)[1].numpy()
    kernel = model.regressor.get_layer("conv").kernel.numpy()[0, 0]  # (c_in, c_out)
    bn = model.regressor.get_layer("bn")
    regressed = (student @ kernel - bn.moving_mean.numpy()) / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)
    regressed = regressed * bn.gamma.numpy() + bn.beta.numpy()
    if regressed.shape[1:3] != target.shape[1:3]:
        regressed = tf.image.resize(regressed, target.shape[1:3], method="bilinear").numpy()
    expected = 100.0 * np.mean((regressed - target) ** 2)
    assert float(terms["hint"]) == pytest.approx(expected, rel=1e-4)
