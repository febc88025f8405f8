"""bin/visualize and tfkd.visualize on tiny real runs: MetaDistiller's target-entropy metrics
against a hand computation, a tiny MetaDistiller run that learns and exports without its
generator, every figure written as a small valid PNG from the right data, and bad inputs refused
with one line before anything is written."""
import csv
import json
import math
import os
import shutil
import struct
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import REPO, SUBPROCESS_TIMEOUT, tiny_config
from tests.test_train_fewshot import fewshot_config, progressive_config, write_pixel_features
from tfkd import export, runs, train, visualize
from tfkd.errors import ConfigError, DataError, UserError, WorkdirError
from tfkd.methods import build_method
from tfkd.methods.metadistiller import target_entropy
from tfkd.models import MultiExitResNet

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def error_line(stderr):
    """bin/ scripts' one-line error (TensorFlow's own start-up log lines may precede it)."""
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr and [l for l in lines if l.startswith("error: ")] == lines[-1:], stderr
    return lines[-1]


def assert_small_png(path, max_kb=200):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == PNG_SIGNATURE, path
    width, height = struct.unpack(">II", head[16:24])
    assert 100 < width < 2000 and 100 < height < 2000, (path, width, height)
    assert 2_000 < os.path.getsize(path) < max_kb * 1024, (path, os.path.getsize(path))
    import matplotlib.image

    assert matplotlib.image.imread(path).shape[:2] == (height, width)  # decodes


# ---------------------------------------------------------------------- the entropy metric


def _tiny_metadistiller():
    keras.utils.set_random_seed(0)
    net = MultiExitResNet(depth=10, num_classes=3, width=0.0625, input_shape=(8, 8, 1), mean=[0.5], std=[0.5])
    net.ensure_built()
    method = build_method("metadistiller", net, {"tau": 2.0, "fusion_channels": 4}, weight_decay=5e-4)
    method.build()
    method.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    method.build_state()
    return method


def test_target_entropy_is_zero_for_one_hot_and_log_c_for_uniform():
    probs = tf.constant([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0]])
    np.testing.assert_allclose(target_entropy(probs).numpy(), [0.0, math.log(3), math.log(2)], rtol=1e-6)


def test_entropy_metrics_equal_hand_computed_entropy_of_the_generated_targets():
    method = _tiny_metadistiller()
    rng = np.random.default_rng(0)
    images = tf.constant(rng.uniform(size=(6, 8, 8, 1)), tf.float32)
    labels = tf.constant(rng.integers(0, 3, 6).astype(np.int32))
    method.set_phase("main")
    train_logs = method.train_step((images, labels))
    for m in method.metrics:
        m.reset_state()
    logs = method.test_step((images, labels))  # inference mode: deterministic, checkable by hand
    _, features = method.network(images, training=False, return_features=True)
    targets = method.generator(method.stage_features(features), training=False)
    exits = method.output_names_ordered[:-1]
    assert exits == ["exit_1", "exit_2", "exit_3"]
    for name in exits:
        z = targets[name].numpy().astype(np.float64) / 2.0  # tau = 2
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        expected = float(np.mean(-(p * np.log(p)).sum(1)))
        assert float(logs[f"target_entropy_{name}"]) == pytest.approx(expected, rel=1e-5), name
        assert 0.0 <= float(train_logs[f"target_entropy_{name}"]) <= math.log(3) + 1e-6


# ---------------------------------------------------------------------- tiny real runs


@pytest.fixture(scope="module")
def md_run_and_metrics(tmp_path_factory):
    """One tiny MetaDistiller run (bin/train's path) serves the learning and export checks and the
    figures: training a second one cost 20-30 s of the suite."""
    config = tiny_config(method="metadistiller", epochs=3)
    config.metadistiller.meta_every_epochs = 3  # epoch 1 is a meta epoch, 2-3 are main epochs
    workdir = str(tmp_path_factory.mktemp("viz") / "md")
    return workdir, train.run(config, workdir)


@pytest.fixture(scope="module")
def md_run(md_run_and_metrics):
    return md_run_and_metrics[0]


@pytest.fixture(scope="module")
def fewshot_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("viz_fs")
    features = write_pixel_features(root / "features")
    folders = {}
    down = progressive_config(features, schedule_steps=12)
    down.fewshot.episodes_per_epoch = 20  # 10 steps per epoch, k reaches 1 in epoch 2
    for name, config in (("gen", fewshot_config(features, "gen", epochs=1)), ("down", down)):
        config.fewshot.test_episodes = 10
        config.fewshot.val_episodes = 10
        config.fewshot.all_way_shots = ()
        config.export.enabled = False
        folders[name] = str(root / name)
        train.run(config, folders[name])
    return folders


def test_metadistiller_learns_and_exports_without_generator(md_run_and_metrics):
    workdir, metrics = md_run_and_metrics
    assert metrics["test"]["final_accuracy"] > 0.4, metrics["test"]  # chance: 0.10
    assert metrics["test"]["ensemble_accuracy"] > 0.4, metrics["test"]
    network, *_ = export.restore_network(workdir, "best")
    path = f"{workdir}/export"
    reader = tf.train.load_checkpoint(f"{path}/variables/variables")
    saved = sum(int(np.prod(s)) for n, s in reader.get_variable_to_shape_map().items() if n.endswith("VARIABLE_VALUE"))
    assert saved == sum(int(np.prod(v.shape)) for v in network.inference_variables())
    assert export.check_export(network, path) < 1e-5


def test_metadistiller_history_logs_target_entropy_per_exit_train_and_validation(md_run):
    with open(os.path.join(md_run, "history.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3
    for row in rows:
        for k in (1, 2, 3):
            for prefix in ("", "val_"):
                value = float(row[f"{prefix}target_entropy_exit_{k}"])
                assert 0.0 <= value <= math.log(10) + 1e-6
    assert rows[0]["meta_loss"] and not rows[1]["meta_loss"] and not rows[2]["meta_loss"]  # meta epoch 1 only


def test_metadistiller_figures(md_run, tmp_path):
    out = str(tmp_path / "figs")
    written = visualize.make_figures([md_run], output=out, images=2)
    assert sorted(os.path.basename(p) for p in written) == ["learning_curves.png", "md_target_entropy.png",
                                                            "md_targets.png"]
    for path in written:
        assert_small_png(path)
    # The data of the targets figure: the final output and T_1..T_3, each a distribution per image.
    method, class_names = visualize.restore_metadistiller(md_run)
    images, labels = visualize.test_images(runs.read_config(md_run), 2)
    assert len(set(labels.tolist())) == 2 and class_names[0] == "T-shirt/top"
    probs = visualize.metadistiller_targets(method, images)
    assert sorted(probs) == ["exit_1", "exit_2", "exit_3", "final"]
    for name, p in probs.items():
        assert p.shape == (2, 10)
        np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-5, err_msg=name)
    # Network and label generator both come from the best checkpoint: evaluated on validation,
    # the restored method reproduces the run's final validation metrics, target entropies included.
    from tfkd import data as data_lib

    config = runs.read_config(md_run)
    logs = method.evaluate(data_lib.eval_dataset(data_lib.load_dataset(config.data), "val", batch_size=100),
                           verbose=0, return_dict=True)
    with open(os.path.join(md_run, "metrics.json")) as f:
        val = json.load(f)["val"]
    for key in ("final_accuracy", "target_entropy_exit_1", "target_entropy_exit_3"):
        assert logs[key] == pytest.approx(val[key], rel=1e-4, abs=1e-5), key


def test_fewshot_figures_and_their_data(fewshot_runs, tmp_path):
    out = str(tmp_path / "figs")
    written = visualize.make_figures([fewshot_runs["gen"], fewshot_runs["down"]], output=out, tsne_classes=3,
                                     tsne_points=12)
    assert sorted(os.path.basename(p) for p in written) == ["down_k_schedule.png", "down_tsne.png", "gen_tsne.png"]
    for path in written:
        assert_small_png(path)

    method, _ = runs.restore_fewshot_method(fewshot_runs["gen"])
    features, labels, _ = visualize.novel_split(fewshot_runs["gen"])
    data = visualize.tsne_data(method, features, labels, num_classes=3, real_per_class=12, generated_per_class=7)
    assert data["points"].shape == (3 * (12 + 7), 2) and np.isfinite(data["points"]).all()
    assert data["generated"].sum() == 3 * 7 and data["seed_example"].sum() == 3
    assert not (data["generated"] & data["seed_example"]).any()
    assert sorted(np.unique(data["labels"]).tolist()) == sorted(data["classes"].tolist())

    config = runs.read_config(fewshot_runs["down"])
    history = visualize.read_history(fewshot_runs["down"])
    x, scheduled, epochs, logged, column = visualize.k_schedule_data(config, history)
    assert column == "k_train" and len(scheduled) == 2 * 10 and x[-1] == 2.0
    assert scheduled[0] == 8 and scheduled[-1] == 1 and (np.diff(scheduled) <= 0).all()
    # The k logged at each epoch's end is the schedule's value at that epoch's last step.
    np.testing.assert_array_equal(logged, scheduled[[9, 19]])
    assert logged[0] > 1


def test_learning_curves_from_a_results_file(tmp_path):
    results = {"benchmark": "self_boosting_table", "datasets": {}}
    rng = np.random.default_rng(0)
    for dataset in ("fashion_mnist", "glyphs"):
        methods = results["datasets"].setdefault(dataset, {"methods": {}})["methods"]
        for method in visualize.SELF_BOOSTING:
            curve = lambda: list(np.linspace(0.5, 0.9, 40) + rng.normal(0, 0.01, 40))  # noqa: E731
            methods[method] = {"runs": [{"seed": s, "val_curve": curve()} for s in range(3)]}
    path = tmp_path / "self_boosting_converge.json"
    path.write_text(json.dumps(results))
    curves = visualize.self_boosting_curves_from_results(str(path))
    assert sorted(curves) == ["fashion_mnist", "glyphs"]
    assert all(len(curves[d][m]) == 3 and len(curves[d][m][0]) == 40 for d in curves for m in curves[d])

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    out = tmp_path / "figs"
    proc = subprocess.run([sys.executable, os.path.join(REPO, "bin", "visualize"), f"--results={path}",
                           f"--output={out}"], capture_output=True, text=True, env=env, timeout=SUBPROCESS_TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    assert_small_png(str(out / "self_boosting_converge_curves.png"))
    assert "wrote " in proc.stdout


def test_bad_inputs_are_refused_before_anything_is_written(md_run, fewshot_runs, tmp_path):
    out = str(tmp_path / "figs")

    def refused(error, match, *args, **kwargs):
        with pytest.raises(error, match=match):
            visualize.make_figures(*args, output=kwargs.pop("output", out), **kwargs)
        assert not os.path.exists(out) or not os.listdir(out)

    refused(ConfigError, "nothing to draw")
    refused(WorkdirError, "not a folder", [str(tmp_path / "nope")])
    refused(WorkdirError, "no config.json", [str(tmp_path)])
    # A method without figures (and a few-shot run without a generator).
    kd = tmp_path / "kd"
    kd.mkdir()
    (kd / "config.json").write_text(json.dumps({"method": "kd"}))
    refused(WorkdirError, "holds a 'kd' run", [str(md_run), str(kd)])
    # Missing files: the best checkpoint, history.csv, the entropy columns (a run from older code).
    broken = tmp_path / "broken_md"
    shutil.copytree(md_run, broken)
    shutil.rmtree(broken / "checkpoints")  # a lost best alone is rebuilt from its epoch's checkpoint
    refused(WorkdirError, "best is unusable", [str(broken)])
    old = tmp_path / "old_md"
    shutil.copytree(md_run, old)
    with open(old / "history.csv") as f:
        rows = list(csv.DictReader(f))
    keep = [k for k in rows[0] if "target_entropy" not in k]
    with open(old / "history.csv", "w") as f:
        writer = csv.DictWriter(f, keep, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    refused(WorkdirError, "target_entropy", [str(old)])
    os.remove(old / "history.csv")
    refused(WorkdirError, "no history.csv", [str(old)])
    # Two runs with the same folder name would write the same files.
    twin = tmp_path / "twin" / "gen"
    shutil.copytree(fewshot_runs["gen"], twin)
    refused(ConfigError, "same file", [fewshot_runs["gen"], str(twin)])
    # Results files: missing, not JSON, written before runs recorded their validation curve.
    refused(DataError, "does not exist", results=[str(tmp_path / "missing.json")])
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    refused(DataError, "not valid JSON", results=[str(bad)])
    refused(DataError, "val_curve", results=[os.path.join(REPO, "benchmarks", "results", "self_boosting_table.json")])
    # --output is a file.
    (tmp_path / "file.png").write_bytes(b"x")
    refused(ConfigError, "not a folder", [fewshot_runs["gen"]], output=str(tmp_path / "file.png"))

    # Existing PNGs are kept unless --overwrite; nothing else is written when refusing.
    os.makedirs(out)
    existing = os.path.join(out, "down_k_schedule.png")
    with open(existing, "wb") as f:
        f.write(b"old")
    with pytest.raises(WorkdirError, match="already exist"):
        visualize.make_figures([fewshot_runs["down"]], output=out)
    assert os.listdir(out) == ["down_k_schedule.png"] and open(existing, "rb").read() == b"old"
    visualize.make_figures([fewshot_runs["down"]], output=out, overwrite=True, tsne_classes=2, tsne_points=5)
    assert_small_png(existing)
    assert issubclass(WorkdirError, UserError)


def test_cli_unsupported_run_is_one_line_exit_2(tmp_path):
    cosine = tmp_path / "cosine_run"
    cosine.mkdir()
    (cosine / "config.json").write_text(json.dumps({"method": "cosine"}))
    out = tmp_path / "figs"
    proc = subprocess.run([sys.executable, os.path.join(REPO, "bin", "visualize"), f"--workdir={cosine}",
                           f"--output={out}"], capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert proc.returncode == 2
    assert error_line(proc.stderr) == (f"error: --workdir={cosine} holds a 'cosine' run; bin/visualize draws figures "
                                   f"for baseline, dsn, self_distill, metadistiller, gen, dist, progressive")
    assert not out.exists()
