"""bin/train for episodic few-shot methods, end to end on real features (Fashion-MNIST pixels of the
documented class split: base = Trouser, Sneaker, T-shirt; validation = Dress, Sandal; novel = the
other five), resume, bin/evaluate's paired comparison, and bad inputs."""
import json
import os
import shutil

import numpy as np
import pytest

from tfkd import train
from tfkd.data.features import write_features
from tfkd.errors import ConfigError, DataError, WorkdirError


@pytest.fixture(scope="module")
def pixel_features(tmp_path_factory):
    return write_pixel_features(tmp_path_factory.mktemp("pixels"))


def write_pixel_features(folder):
    """base.h5 / validation.npz / novel.h5 of 14x14 average-pooled pixels (196-d), 120 per class."""
    from tests.conftest import tiny_config
    from tfkd.data import load_dataset

    cfg = tiny_config().data
    cfg.class_split = "base"
    data = load_dataset(cfg)
    images, labels = data.all_images.images, data.all_images.labels
    rng = np.random.default_rng(0)
    for split, ext in (("base", ".h5"), ("validation", ".npz"), ("novel", ".h5")):
        idx = np.concatenate([rng.choice(np.flatnonzero(labels == c), 120, replace=False)
                              for c in data.class_split[split]])
        pooled = images[idx, :, :, 0].reshape(-1, 14, 2, 14, 2).mean((2, 4)).reshape(len(idx), -1) / 255.0
        write_features(str(folder / (split + ext)), pooled, labels[idx])
    return str(folder)


def fewshot_config(features_dir, method="gen", epochs=2):
    from tfkd.config import base_config

    c = base_config()
    c.method = method
    c.fewshot.features_dir = features_dir
    c.fewshot.n_way = 3
    c.fewshot.k_shot = 1
    c.fewshot.n_query = 5
    c.fewshot.episodes_per_epoch = 40
    c.fewshot.episodes_per_batch = 2
    c.fewshot.val_episodes = 20
    c.fewshot.test_episodes = 60
    c.fewshot.test_way = 5
    c.fewshot.test_shots = (1, 5)
    c.fewshot.all_way_shots = (1, 5)
    c.fewshot.all_way_draws = 2
    c.train.epochs = epochs
    c.train.optimizer = "adam"
    c.train.learning_rate = 1e-3
    c.train.lr_schedule = "constant"
    c.train.weight_decay = 0.0
    c.train.verbose = 0
    c[method].embedding_units = (32,)
    c[method].scale_init = 10.0
    if method == "gen":
        c.gen.generator_hidden = (32,)
        c.gen.num_generated = 2
    return c


@pytest.fixture(scope="module")
def gen_run(pixel_features, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("fs") / "gen")
    metrics = train.run(fewshot_config(pixel_features), workdir)
    return workdir, metrics


def test_gen_run_trains_selects_on_validation_and_evaluates_novel_classes(gen_run):
    workdir, metrics = gen_run
    assert metrics["task"] == "fewshot" and metrics["best_epoch"] in (1, 2)
    with open(os.path.join(workdir, "evaluation.json")) as f:
        results = json.load(f)
    assert set(results) == {"5way_1shot", "5way_5shot", "all_way"}  # no groups -> no within-group protocol
    one, five = results["5way_1shot"], results["5way_5shot"]
    assert len(one["accuracies"]) == 60 and one["ci95"] > 0
    assert one["mean"] > 0.20 + 0.15, one  # novel classes, 5-way: chance is 20%
    assert five["mean"] > one["mean"]  # more shots help
    all_way = results["all_way"]["shots"]
    assert all_way["5"]["top5"]["mean"] == 1.0  # 5 novel classes: top-5 always contains the truth
    assert set(os.listdir(workdir)) >= {"config.json", "run_info.json", "history.csv", "logs", "checkpoints",
                                        "metrics.json", "evaluation.json"}
    with pytest.raises(WorkdirError, match="finished run"):
        train.run(fewshot_config(metrics["features_dir"]), workdir)


def test_resume_after_interruption_matches_uninterrupted_run(gen_run, pixel_features, tmp_path):
    workdir, metrics = gen_run
    # Simulate a kill after epoch 1: keep epoch 1's checkpoint only.
    resumed = str(tmp_path / "resumed")
    shutil.copytree(workdir, resumed)
    for name in ("metrics.json", "evaluation.json"):
        os.remove(os.path.join(resumed, name))
    ckpts = os.path.join(resumed, "checkpoints")
    shutil.rmtree(os.path.join(ckpts, "epoch_0002"))
    with open(os.path.join(ckpts, "epoch_0001", "state.json")) as f:
        state = json.load(f)
    if state["best_epoch"] == 1:
        shutil.rmtree(os.path.join(ckpts, "best"))
        shutil.copytree(os.path.join(ckpts, "epoch_0001"), os.path.join(ckpts, "best"))
    again = train.run(fewshot_config(pixel_features), resumed)
    assert again["best_epoch"] == metrics["best_epoch"]
    for name, value in metrics["test"].items():
        assert again["test"][name] == pytest.approx(value, abs=1e-6), name


def test_evaluate_runs_pairs_methods_on_the_same_episodes(gen_run, pixel_features, tmp_path):
    from tfkd.train_fewshot import evaluate_runs

    workdir, _ = gen_run
    cosine_dir = str(tmp_path / "cosine")
    train.run(fewshot_config(pixel_features, method="cosine", epochs=1), cosine_dir)
    out = str(tmp_path / "eval.json")
    payload = evaluate_runs([cosine_dir, workdir], {"test_episodes": 30, "test_shots": (1,), "all_way_shots": ()},
                            output=out)
    cos, gen = (payload["runs"][w]["results"]["5way_1shot"] for w in (cosine_dir, workdir))
    diff = np.subtract(gen["accuracies"], cos["accuracies"])
    assert payload["paired_vs_first"][workdir]["5way_1shot"]["mean"] == pytest.approx(diff.mean())
    assert os.path.exists(out) and len(cos["accuracies"]) == 30
    # Re-evaluating gives the same episodes: the cosine run has no randomness, so identical accuracies.
    again = evaluate_runs([cosine_dir], {"test_episodes": 30, "test_shots": (1,), "all_way_shots": ()})
    assert again["runs"][cosine_dir]["results"]["5way_1shot"]["accuracies"] == cos["accuracies"]


def test_validation_episodes_take_val_way_capped_at_the_validation_classes(tmp_path):
    from tfkd.train_fewshot import FeatureSplits, samplers

    rng = np.random.default_rng(0)
    for split, classes in (("base", range(0, 4)), ("validation", range(4, 10)), ("novel", range(10, 15))):
        labels = np.repeat(np.asarray(classes), 30)
        write_features(str(tmp_path / f"{split}.npz"), rng.normal(size=(len(labels), 8)), labels)
    feats = FeatureSplits(str(tmp_path))
    config = fewshot_config(str(tmp_path))
    config.fewshot.n_way = 3
    assert samplers(config, feats)[1].n_way == 3  # default: the meta-training ways
    config.fewshot.val_way = 5
    assert samplers(config, feats)[1].n_way == 5
    config.fewshot.val_way = 10000  # all of them: selection on the all-way protocol
    train_sampler, val_sampler = samplers(config, feats)
    assert val_sampler.n_way == 6 and train_sampler.n_way == 3


def test_bad_inputs_fail_before_training(pixel_features, tmp_path):
    workdir = str(tmp_path / "bad")
    with pytest.raises(ConfigError, match="fewshot.features_dir"):
        train.run(fewshot_config(""), workdir)
    with pytest.raises(DataError, match="not a folder"):
        train.run(fewshot_config(str(tmp_path / "nowhere")), workdir)
    too_many = fewshot_config(pixel_features)
    too_many.fewshot.k_shot = 100
    too_many.fewshot.n_query = 50  # 150 > 120 examples per class
    with pytest.raises(DataError, match=r"config.fewshot .*k_max \+ n_query = 150"):
        train.run(too_many, workdir)
    ways = fewshot_config(pixel_features)
    ways.fewshot.test_way = 6
    with pytest.raises(ConfigError, match="test_way=6 but the novel split has 5 classes"):
        train.run(ways, workdir)
    # A validation file from another feature extractor (other dimension).
    mixed = tmp_path / "mixed"
    shutil.copytree(pixel_features, mixed)
    os.remove(mixed / "validation.npz")
    write_features(str(mixed / "validation.npz"), np.ones((20, 8)), np.repeat([3, 5], 10))
    with pytest.raises(DataError, match="feature dimensions differ"):
        train.run(fewshot_config(str(mixed)), workdir)
    # Novel classes that leak into base.
    leak = tmp_path / "leak"
    shutil.copytree(pixel_features, leak)
    os.remove(leak / "novel.h5")
    write_features(str(leak / "novel.h5"), np.ones((20, 196)), np.repeat([1, 2], 10))
    with pytest.raises(DataError, match="in both base and novel"):
        train.run(fewshot_config(str(leak)), workdir)
    wrong = fewshot_config(pixel_features)
    wrong.gen.num_generated = 0
    with pytest.raises(ConfigError, match="num_generated"):
        train.run(wrong, workdir)
    one_way = fewshot_config(pixel_features)
    one_way.fewshot.val_way = 1
    with pytest.raises(ConfigError, match="fewshot.val_way"):
        train.run(one_way, workdir)
    assert not os.path.exists(workdir)  # nothing written


def test_evaluate_rejects_features_of_another_dimension(gen_run, tmp_path):
    from tfkd.train_fewshot import evaluate_runs

    workdir, _ = gen_run
    other = tmp_path / "other"
    other.mkdir()
    for split, classes in (("base", [1, 7]), ("validation", [3, 5]), ("novel", [2, 4, 6, 8, 9])):
        write_features(str(other / f"{split}.h5"), np.ones((10 * len(classes), 64)), np.repeat(classes, 10))
    with pytest.raises(DataError, match="expects 196-d features"):
        evaluate_runs([workdir], features_dir=str(other))
    with pytest.raises(WorkdirError, match="not a tfkd run"):
        evaluate_runs([str(tmp_path)])


def _requests(features_dir):
    from tfkd.export import fewshot_check_requests
    from tfkd.train_fewshot import FeatureSplits

    novel_f, novel_l = FeatureSplits(features_dir)["novel"]
    return fewshot_check_requests(novel_f, novel_l, shots=(1, 5), n_way=5) + \
        fewshot_check_requests(novel_f, novel_l, shots=(2,), n_way=3, seed=1)


def test_export_serves_any_way_and_shot_and_reloads_identically(gen_run, pixel_features, tmp_path):
    import tensorflow as tf

    from tfkd import export

    workdir, metrics = gen_run
    assert os.path.exists(os.path.join(workdir, "export", "saved_model.pb"))  # written by the run
    path, module = export.export_fewshot_predictor(workdir, str(tmp_path / "export"))
    requests = _requests(pixel_features)
    assert export.check_fewshot_export(module, path, requests) <= 1e-5  # fresh process, same outputs
    correct = []
    for support, labels, query in requests:
        probs = module.serve(tf.constant(support), tf.constant(labels), tf.constant(query))["probabilities"].numpy()
        n_way = labels.max() + 1
        assert probs.shape == (len(query), n_way) and np.allclose(probs.sum(1), 1, atol=1e-5)
        correct.append(np.mean(probs.argmax(1) == np.repeat(np.arange(n_way), len(query) // n_way)))
    assert np.mean(correct) > 0.5  # novel classes, 3- and 5-way
    again = module.serve(*(tf.constant(x) for x in requests[0]))["probabilities"].numpy()
    first = module.serve(*(tf.constant(x) for x in requests[0]))["probabilities"].numpy()
    np.testing.assert_array_equal(again, first)  # stateless noise: same request, same answer
    support, labels, query = requests[0]
    with pytest.raises(tf.errors.InvalidArgumentError, match="every class"):  # labels 0, 2, .., 8 of 5 classes
        module.serve(tf.constant(support), tf.constant(labels * 2), tf.constant(query))
    with pytest.raises(Exception, match="query_features"):
        module.serve(tf.constant(support), tf.constant(labels), tf.constant(query[:, :10]))


def test_export_takes_int64_labels_any_class_ids_and_rejects_non_finite_features(gen_run, pixel_features):
    """The run's own export: numpy's int64 labels, a catalogue's class ids, and NaN / inf requests
    (which used to return all-NaN probabilities)."""
    import tensorflow as tf

    workdir, _ = gen_run
    loaded = tf.saved_model.load(os.path.join(workdir, "export"))
    support, labels, query = _requests(pixel_features)[0]

    def serve(signature, support=support, labels=labels, query=query):
        return loaded.signatures[signature](support_features=tf.constant(support), support_labels=tf.constant(labels),
                                            query_features=tf.constant(query))

    expected = serve("serving_default")["probabilities"].numpy()
    np.testing.assert_array_equal(serve("serving_int64", labels=labels.astype(np.int64))["probabilities"], expected)
    np.testing.assert_array_equal(loaded.serve(support, labels.astype(np.int64), query)["probabilities"], expected)
    # Any class ids: columns in increasing id order, the ids returned with the probabilities.
    catalogue = np.array([9001, 17, 530, 4, 77])  # the id of request class 0..4
    out = serve("class_ids", labels=catalogue[labels])
    order = np.argsort(catalogue)
    np.testing.assert_array_equal(out["class_ids"].numpy(), catalogue[order])
    renumbered = serve("serving_default", labels=np.argsort(order)[labels].astype(np.int32))["probabilities"].numpy()
    np.testing.assert_array_equal(out["probabilities"].numpy(), renumbered)
    np.testing.assert_array_equal(out["predicted_class_ids"].numpy(), catalogue[order][renumbered.argmax(1)])
    # Non-finite features are refused, naming the input.
    nan_support, inf_query = support.copy(), query.copy()
    nan_support[1, 3], inf_query[-1, 0] = np.nan, np.inf
    with pytest.raises(tf.errors.InvalidArgumentError, match="support_features contains NaN or inf"):
        serve("serving_default", support=nan_support)
    with pytest.raises(tf.errors.InvalidArgumentError, match="query_features contains NaN or inf"):
        serve("class_ids", labels=catalogue[labels], query=inf_query)
    # Labels must be 0..C-1: a huge one is refused before it sizes any tensor.
    with pytest.raises(tf.errors.InvalidArgumentError, match="support_labels must be 0..C-1"):
        serve("serving_int64", labels=np.where(np.arange(len(labels)) == 0, np.int64(2 ** 40), labels.astype(np.int64)))


def progressive_config(features_dir, **overrides):
    c = fewshot_config(features_dir, method="progressive", epochs=2)
    c.fewshot.n_query = 4
    c.progressive.direction = "weaken"
    c.progressive.k_start = 8
    c.progressive.k_end = 1
    c.progressive.schedule_steps = 25  # of 40 steps
    c.progressive.save_at_k = (8, 4, 2, 1)
    c.progressive.gamma = 1.0
    for k, v in overrides.items():
        c.progressive[k] = v
    return c


def test_progressive_weaken_saves_k_snapshots_and_tests_each_shot_with_its_own(pixel_features, tmp_path):
    import csv

    from tfkd import export
    from tfkd.train_fewshot import snapshot_for_shot

    from tfkd.methods.distill import k_at

    workdir = str(tmp_path / "down")
    config = progressive_config(pixel_features)
    metrics = train.run(config, workdir)
    # k = 8 -> 1 over 25 of 40 steps. Each snapshot is the model after the last step trained with at
    # least k shots; k_end = 1 is held to the end, so 1-shot tests use the best checkpoint.
    assert metrics["snapshots"] == ["k_002", "k_004", "k_008"]
    p = config.progressive
    for k in (8, 4, 2):
        with open(os.path.join(workdir, "snapshots", f"k_{k:03d}", "state.json")) as f:
            state = json.load(f)
        step = state["step"]
        assert state["k_train"] >= k and k_at(step - 1, p.k_start, p.k_end, p.schedule_steps, p.schedule) >= k
        assert k_at(step, p.k_start, p.k_end, p.schedule_steps, p.schedule) < k  # the next step had fewer
    assert snapshot_for_shot(workdir, 5).endswith("k_004") and snapshot_for_shot(workdir, 1) is None
    with open(os.path.join(workdir, "history.csv")) as f:
        rows = list(csv.DictReader(f))
    assert float(rows[-1]["k_train"]) == 1 and float(rows[0]["k_train"]) > 1  # logged per epoch
    assert metrics["test"]["5way_1shot"] > 0.35
    _, module = export.export_fewshot_predictor(workdir, str(tmp_path / "export"))
    assert list(module.thresholds) == [0, 2, 4, 8]  # 0: the best checkpoint, for 1 shot


def test_ensemble_trains_members_with_different_teachers_and_averages_them(pixel_features, tmp_path):
    from tfkd.train_fewshot import evaluate_runs

    workdir = str(tmp_path / "ensemble")
    config = fewshot_config(pixel_features, method="dist", epochs=1)
    config.dist.ensemble_size = 2
    config.dist.k_teacher = 30
    # A member trained on its own first (as a parallel worker would), then the rest and the ensemble.
    one = fewshot_config(pixel_features, method="dist", epochs=1)
    one.dist.ensemble_size, one.dist.ensemble_member, one.dist.k_teacher = 2, 1, 30
    train.run(one, workdir)
    assert os.path.exists(os.path.join(workdir, "members", "member_1", "metrics.json"))
    assert not os.path.exists(os.path.join(workdir, "metrics.json"))
    metrics = train.run(config, workdir)
    assert metrics["ensemble_size"] == 2 and [m["seed"] for m in metrics["members"]] == [0, 1]
    with open(os.path.join(workdir, "members", "member_1", "config.json")) as f:
        assert json.load(f)["dist"]["teacher_seed"] == 1  # a different S_teacher sample
    payload = evaluate_runs([workdir, os.path.join(workdir, "members", "member_0")],
                            {"test_episodes": 30, "test_shots": (1,), "all_way_shots": ()})
    assert len(payload["runs"]) == 2
    assert os.path.exists(os.path.join(workdir, "export", "saved_model.pb"))


def test_a_second_run_loads_the_cached_teacher_and_trains_like_the_first(pixel_features, tmp_path, capsys):
    """bin/train's path: the teacher pre-trained by the first `dist` run is cached beside the
    features and loaded by the next run with the same inputs; both runs then end identical."""
    import shutil

    from tfkd import train

    features = str(tmp_path / "features")
    shutil.copytree(pixel_features, features)  # the cache is written beside the features
    results = []
    for name in ("first", "second"):
        config = fewshot_config(features, "dist", epochs=1)
        config.dist.teacher_embedding_units = (16,)
        config.dist.teacher_pretrain_steps = 20
        config.dist.generator_hidden = (16,)
        config.fewshot.episodes_per_epoch = 10
        config.fewshot.test_episodes = 10
        config.fewshot.all_way_shots = ()
        config.export.enabled = False
        results.append(train.run(config, str(tmp_path / name)))
    out = capsys.readouterr().out
    (entry,) = os.listdir(os.path.join(features, "teacher_cache"))
    assert out.count("Teacher embedding pre-trained") == 1
    assert f"Teacher embedding loaded from {os.path.join(features, 'teacher_cache', entry)}" in out
    assert results[0]["test"] == results[1]["test"]
