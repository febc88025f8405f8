"""Progressive distillation: Eq. 1, k schedules, teacher/student separation, gradients into G,
ensemble averaging, snapshots, bad configs."""
import math
import os

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from tfkd import losses
from tfkd.errors import ConfigError
from tfkd.methods.base import resolve_method_config
from tfkd.methods.distill import Distill, ProgressiveDistill, k_at, k_at_tensor, teacher_support


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_eq1_matches_hand_computation_including_t_squared():
    s = np.array([[2.0, -1.0, 0.5], [0.1, 0.3, -0.2]], np.float32)
    t = np.array([[1.0, 0.0, 3.0], [-2.0, 1.0, 0.0]], np.float32)
    y = np.array([0, 1])
    gamma, temp = 5.0, 7.0
    hard = -np.mean(np.log(_softmax(s)[np.arange(2), y]))
    soft = -np.mean((_softmax(t / temp) * np.log(_softmax(s / temp))).sum(-1))
    total, h, k = losses.progressive_kd_loss(y, s, t, gamma, temp)
    assert float(h) == pytest.approx(hard, rel=1e-5)
    assert float(k) == pytest.approx(temp ** 2 * soft, rel=1e-5)
    assert float(total) == pytest.approx(hard + gamma * temp ** 2 * soft, rel=1e-5)


def test_eq1_teacher_gets_no_gradient_temperature_does():
    s = tf.Variable([[2.0, -1.0, 0.5]])
    t = tf.Variable([[1.0, 0.0, 3.0]])
    temp = tf.Variable(7.0)
    with tf.GradientTape() as tape:
        total, _, _ = losses.progressive_kd_loss([0], s, t, 5.0, temp)
    gs, gt, gT = tape.gradient(total, [s, t, temp])
    assert gt is None and gs is not None and abs(float(gT)) > 0


@pytest.mark.parametrize("schedule", ["log", "linear"])
def test_schedule_endpoints_monotone_and_tensor_version(schedule):
    values = [k_at(step, 128, 1, 6000, schedule) for step in range(0, 6001, 10)]
    assert values[0] == 128 and values[-1] == 1
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert k_at(9000, 128, 1, 6000, schedule) == 1  # held after the schedule
    for step in (0, 1234, 3000, 5999, 7000):
        assert int(k_at_tensor(tf.constant(step), 128, 1, 6000, schedule)) == k_at(step, 128, 1, 6000, schedule)
    up = [k_at(step, 1, 20, 100, schedule) for step in range(101)]
    assert up[0] == 1 and up[-1] == 20 and up == sorted(up)


def test_log_schedule_128_to_1_takes_every_snapshot_value():
    taken = {k_at(step, 128, 1, 6000, "log") for step in range(6001)}
    assert {16, 8, 4, 2, 1} <= taken
    # Log: half of the steps are spent below sqrt(128) ~ 11; linear spends them above 64.
    assert k_at(3000, 128, 1, 6000, "log") == round(math.sqrt(128))
    assert k_at(3000, 128, 1, 6000, "linear") == round(64.5)


def test_teacher_support_counts_and_all_examples():
    labels = np.repeat([3, 5, 9], [4, 7, 2])
    features = np.arange(13, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)
    support, counts = teacher_support(features, labels, [3, 5, 9], 0, seed=0)
    assert support.shape == (3, 7, 2) and counts.tolist() == [4, 7, 2]
    support, counts = teacher_support(features, labels, [3, 5, 9], 3, seed=0)
    assert counts.tolist() == [3, 3, 2]
    assert set(support[1, :, 0].tolist()) <= set(range(4, 11))  # class 5's own examples


def _episode(rng, n_way=3, k_max=4, d=6, q=2, k=2, batch=2):
    mask = np.zeros((batch, n_way, k_max), bool)
    mask[..., :k] = True
    return {"support": tf.constant(rng.normal(size=(batch, n_way, k_max, d)), tf.float32),
            "support_mask": tf.constant(mask),
            "query": tf.constant(rng.normal(size=(batch, n_way * q, d)), tf.float32),
            "query_labels": tf.constant(np.tile(np.repeat(np.arange(n_way), q), (batch, 1)), tf.int32),
            "class_index": tf.constant(np.stack([rng.permutation(5)[:n_way] for _ in range(batch)]), tf.int32)}


def _method(cls=Distill, teacher_embedding_units=(6,), **kw):
    import keras

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    method = cls(6, generator_hidden=(8,), embedding_units=(), scale_init=10.0,
                 teacher_embedding_units=teacher_embedding_units, teacher_pretrain_steps=5, k_teacher=3, **kw)
    method.build_from_dim(batch=2)
    method.compile(optimizer=keras.optimizers.Adam(1e-2))
    labels = np.repeat(np.arange(5), 6)
    method.set_teacher(rng.normal(size=(30, 6)).astype(np.float32), labels, np.arange(5))
    method.pretrain_teacher()
    return method, rng


def test_teacher_logits_over_all_base_classes_agree_with_each_episodes_teacher():
    """The base-holdout benchmark scores a run's teacher over every base class at once."""
    method, rng = _method()
    episode = _episode(rng, n_way=3)
    k = int(method.k_teacher.numpy())
    per_episode = method.teacher_logits(episode["query"], episode["class_index"], k).numpy()
    every_class = method.teacher_logits_all(tf.reshape(episode["query"], (-1, 6))).numpy().reshape(2, 6, 5)
    np.testing.assert_allclose(per_episode, np.take_along_axis(every_class, episode["class_index"].numpy()[:, None, :],
                                                               axis=-1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("teacher_embedding_units", [(6,), (12, 6)])
def test_student_step_leaves_teacher_unchanged_and_trains_generator_and_temperature(teacher_embedding_units):
    """A linear teacher embedding (the paper's) or an MLP one: pre-trained, then frozen."""
    method, rng = _method(teacher_embedding_units=teacher_embedding_units)
    live = method.teacher_prototypes(method.k_teacher).numpy()
    method.check_ready()  # as fit does: S_teacher embedded once, the same prototypes
    assert method._frozen_support is not None
    np.testing.assert_allclose(method.teacher_prototypes(method.k_teacher).numpy(), live, rtol=1e-6)
    assert [layer.units for layer in method.teacher_embedding] == list(teacher_embedding_units)
    assert [layer.activation.__name__ for layer in method.teacher_embedding][-1] == "linear"
    if len(teacher_embedding_units) > 1:
        assert method.teacher_embedding[0].activation.__name__ == "relu"
    teacher = [v.numpy().copy() for layer in method.teacher_embedding for v in layer.variables]
    protos = method.teacher_prototypes(method.k_teacher).numpy()
    generator = [v.numpy().copy() for v in method.generator.trainable_variables]
    temperature = float(method.temperature.numpy())
    for _ in range(3):
        logs = method.train_step(_episode(rng))
    after = [v.numpy() for layer in method.teacher_embedding for v in layer.variables]
    assert all(np.array_equal(a, b) for a, b in zip(teacher, after))
    np.testing.assert_array_equal(method.teacher_prototypes(method.k_teacher).numpy(), protos)
    assert any(not np.allclose(a, b.numpy()) for a, b in zip(generator, method.generator.trainable_variables))
    assert float(method.temperature.numpy()) != temperature
    assert float(logs["kd"]) > 0 and int(logs["k_teacher"]) == 3


def test_a_held_temperature_stays_at_its_init_while_the_step_still_distills():
    method, rng = _method(learn_temperature=False, temperature_init=4.0)
    assert all(v is not method.temperature for v in method.trainable_variables)
    generator = [v.numpy().copy() for v in method.generator.trainable_variables]
    for _ in range(3):
        logs = method.train_step(_episode(rng))
    assert float(method.temperature.numpy()) == 4.0
    assert float(logs["kd"]) > 0
    assert any(not np.allclose(a, b.numpy()) for a, b in zip(generator, method.generator.trainable_variables))


def test_weaken_masks_real_shots_and_fills_with_generated():
    method, rng = _method(ProgressiveDistill, direction="weaken", k_start=4, k_end=1, schedule_steps=2)
    assert method.fill_to == 4 and method.max_generated == 4  # max(num_generated=4, fill_to - 1 = 3)
    mask = method.generated_mask(tf.constant([1, 3, 4]))
    assert mask.numpy().sum(-1).tolist() == [4, 4, 4]  # at least num_generated
    small = ProgressiveDistill(6, direction="weaken", k_start=8, k_end=1, num_generated=1, generator_hidden=(8,))
    assert small.generated_mask(tf.constant([1, 5, 8])).numpy().sum(-1).tolist() == [7, 3, 1]
    ks = []
    for _ in range(4):
        ks.append(int(method.train_step(_episode(rng, k=4))["k_train"]))
    assert ks[0] == 4 and ks[-1] == 1 and ks == sorted(ks, reverse=True)


def test_strengthen_grows_teacher_shots():
    method, rng = _method(ProgressiveDistill, direction="strengthen", k_start=1, k_end=3, schedule_steps=2)
    ks = [int(method.train_step(_episode(rng))["k_teacher"]) for _ in range(4)]
    assert ks[0] == 1 and ks[-1] == 3 and ks == sorted(ks)


def _episode_of_shape(rng, n_way, k, d=6, n_query=4):
    return (rng.normal(size=(n_way, k, d)).astype(np.float32), np.ones((n_way, k), bool),
            rng.normal(size=(n_query, d)).astype(np.float32))


def test_ensemble_averages_member_probabilities():
    from tfkd.methods.fewshot import episode_predictor

    from tfkd.methods.fewshot import CosinePrototypes

    # Deterministic members (a generator draws new evaluation noise at every call).
    members = [CosinePrototypes(6, embedding_units=(4,), scale_init=5.0 + i).build_from_dim() for i in range(2)]
    episode = _episode_of_shape(np.random.default_rng(0), 3, 2)
    expected = np.mean([_softmax(np.asarray(m.predictor()(*episode))) for m in members], axis=0)
    np.testing.assert_allclose(np.exp(episode_predictor(members)(*episode)), expected, rtol=1e-5)


def test_episode_predictors_trace_once_for_any_way_and_shots(caplog):
    """Evaluation asks for a predictor per protocol and shot count, and an ensemble calls each
    member: each model's predictor (and an ensemble's) is one tf.function traced once, so no
    'triggered tf.function retracing' warning."""
    import logging

    from tfkd.methods.fewshot import episode_predictor

    from tensorflow.python.eager.polymorphic_function import polymorphic_function

    rng = np.random.default_rng(0)
    members = [Distill(6, num_generated=1, generator_hidden=(8,), seed=i).build_from_dim() for i in range(6)]
    shapes = [(5, 1), (5, 5), (20, 1), (20, 5), (7, 20), (5, 1)]
    # TF counts traces per function *source* over the whole process, so the predictors of models
    # that earlier tests in this worker evaluated count too (each traced once): which tests ran
    # before decided whether this test warned. Its count starts from zero here (TF's private state).
    polymorphic_function._frequent_tracing_detector_manager._detectors.pop(
        episode_predictor([members[-1]]).python_function.__code__, None)
    with caplog.at_level(logging.WARNING, logger="tensorflow"):
        for m in members[:2]:  # as a run's evaluation does: a predictor per (protocol, k)
            for n_way, k in shapes:
                m.predictor()(*_episode_of_shape(rng, n_way, k))
        ensemble = episode_predictor(members)
        for n_way, k in shapes:
            ensemble(*_episode_of_shape(rng, n_way, k))
    assert not [r for r in caplog.records if "retracing" in r.getMessage()]
    assert all(m.predictor() is m.predictor() for m in members[:2])
    assert {m.predictor().experimental_get_tracing_count() for m in members[:2]} == {1}
    assert ensemble.experimental_get_tracing_count() == 1


def test_snapshot_for_shot_picks_largest_saved_k_not_above(tmp_path):
    from tfkd.runs import snapshot_for_shot, write_manifest

    for k in (16, 8, 4, 2, 1):  # intact snapshots as KSnapshots writes them (contents do not matter)
        folder = tmp_path / "snapshots" / f"k_{k:03d}"
        folder.mkdir(parents=True)
        (folder / "model.weights.h5").write_bytes(b"x")
        (folder / "state.json").write_text(f'{{"k_train": {k}}}')
        write_manifest(str(folder))
    (tmp_path / "snapshots" / "k_008" / "state.json").write_text("damaged")  # fails its checksum: skipped
    pick = lambda k: snapshot_for_shot(str(tmp_path), k)  # noqa: E731
    assert pick(1).endswith("k_001") and pick(5).endswith("k_004") and pick(20).endswith("k_016")
    assert pick(10).endswith("k_004") and snapshot_for_shot(str(tmp_path / "none"), 5) is None


@pytest.mark.parametrize("overrides, match", [
    ({"direction": "weaken", "k_start": 2, "k_end": 8}, "weaken needs k_end <= k_start"),
    ({"direction": "sideways"}, "direction='sideways': expected one of"),
    ({"schedule": "cubic"}, "schedule='cubic'"),
    ({"ensemble_size": 0}, "ensemble_size=0: expected at least 1"),
    ({"direction": "strengthen", "k_start": 8, "k_end": 2}, "strengthen needs k_end >= k_start"),
    ({"gamma": -1.0}, "gamma=-1.0"),
    ({"teacher_embedding_units": (512, 0)}, "teacher_embedding_units=\\(512, 0\\): expected positive"),
])
def test_bad_progressive_configs_name_the_field(overrides, match):
    with pytest.raises(ConfigError, match=match):
        resolve_method_config(ProgressiveDistill, ml_collections.ConfigDict(overrides), "progressive")


def _unpretrained(seed=0, counts=(2, 5, 3, 4), student_units=()):
    """A Distill with an MLP teacher over classes of unequal size (S_teacher is padded)."""
    import keras

    keras.utils.set_random_seed(seed)
    method = Distill(6, generator_hidden=(8,), embedding_units=student_units, scale_init=10.0,
                     teacher_embedding_units=(8, 6), teacher_pretrain_steps=6, k_teacher=0)
    method.build_from_dim(batch=2)
    labels = np.repeat(np.arange(len(counts)), counts)
    features = np.random.default_rng(1).normal(size=(len(labels), 6)).astype(np.float32)
    method.set_teacher(features, labels, np.arange(len(counts)))
    return method


def _teacher_weights(method):
    return [v.numpy() for layer in method.teacher_embedding for v in layer.variables]


def test_pretrained_teacher_is_cached_and_a_run_with_the_same_inputs_loads_it(tmp_path, monkeypatch):
    """A search trains the same teacher in every trial: the second run loads the first one's
    weights instead of training (no optimizer is even built); other inputs train anew."""
    from tfkd.methods import distill

    first = _unpretrained()
    accuracy = first.pretrain_teacher(seed=3, cache_dir=str(tmp_path))
    cached = sorted(os.listdir(tmp_path))
    assert len(cached) == 1 and cached[0].endswith(".npz")
    start = _unpretrained()
    start.pretrain_teacher(seed=3, steps=1)
    assert max(np.abs(a - b).max() for a, b in zip(_teacher_weights(first), _teacher_weights(start))) > 1e-4

    def no_training(*args, **kwargs):
        raise AssertionError("the cached teacher should have been loaded")

    with monkeypatch.context() as m:
        m.setattr(distill.optimizers, "Adam", no_training)
        second = _unpretrained()
        assert second.pretrain_teacher(seed=3, cache_dir=str(tmp_path)) == accuracy
        assert second.teacher_loaded_from == str(tmp_path / cached[0]) and first.teacher_loaded_from is None
    for a, b in zip(_teacher_weights(first), _teacher_weights(second)):
        np.testing.assert_array_equal(a, b)
    # The student's knobs do not matter (a search's trials): another global seed and another student
    # (a different amount of the random stream drawn before the teacher) load the same teacher.
    third = _unpretrained(seed=1, student_units=(4,))
    third.pretrain_teacher(seed=3, cache_dir=str(tmp_path))
    assert third.teacher_loaded_from == second.teacher_loaded_from
    _unpretrained().pretrain_teacher(seed=4, cache_dir=str(tmp_path))  # another run seed: its own entry
    _unpretrained(counts=(3, 3, 3, 5)).pretrain_teacher(seed=3, cache_dir=str(tmp_path))  # other S_teacher too
    assert len(os.listdir(tmp_path)) == 3
    # Another thread count or CPU gives other float sums, so other weights: never the entry of this one.
    real_threads = distill.io.thread_counts()
    for patch in (("thread_counts", lambda: {**real_threads, "intra_op": real_threads["intra_op"] + 1}),
                  ("cpu_model", lambda: "another CPU")):
        with monkeypatch.context() as m:
            m.setattr(distill.io, *patch)
            other_machine = _unpretrained()
            other_machine.pretrain_teacher(seed=3, cache_dir=str(tmp_path))
            assert other_machine.teacher_loaded_from is None, patch[0]
    assert len(os.listdir(tmp_path)) == 5


def test_a_damaged_teacher_cache_entry_is_retrained_and_rewritten(tmp_path):
    reference = _unpretrained()
    reference.pretrain_teacher(seed=3)
    first = _unpretrained()
    first.pretrain_teacher(seed=3, cache_dir=str(tmp_path))
    (entry,) = [tmp_path / name for name in os.listdir(tmp_path)]
    entry.write_bytes(entry.read_bytes()[:100])  # e.g. a disk that filled up under another writer
    again = _unpretrained()
    again.pretrain_teacher(seed=3, cache_dir=str(tmp_path))
    for a, b in zip(_teacher_weights(reference), _teacher_weights(again)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    with np.load(entry) as f:  # rewritten whole
        np.testing.assert_array_equal(f["w0"], _teacher_weights(again)[0])


def test_pretraining_prototypes_are_the_masked_means_of_the_padded_support():
    """Pre-training averages each class's real rows (no padding embedded); the student's teacher
    averages the padded support under its mask: the same prototypes."""
    method = _unpretrained()
    method.pretrain_teacher(seed=0)
    support, counts = (t.numpy() for t in method._teacher_support)
    assert len(set(counts)) > 1  # padded
    mask = np.arange(support.shape[1])[None, :] < counts[:, None]
    embedded = method.teacher_embed(tf.constant(support[mask])).numpy()
    classes = np.nonzero(mask)[0]
    means = np.stack([embedded[classes == c].mean(0) for c in range(len(counts))])
    expected = means / np.linalg.norm(means, axis=-1, keepdims=True)
    np.testing.assert_allclose(method.teacher_prototypes(method.k_teacher).numpy(), expected, rtol=1e-5, atol=1e-6)
