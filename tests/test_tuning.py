"""Keras Tuner searches: every tuner type on a tiny real subset, resume, visible failures, and the
best config round trip into bin/train."""
import importlib.util
import json
import os

import pytest

from tfkd import train, tuning
from tfkd.errors import ConfigError


def search_config(tuner="random", trials=2):
    from tests.conftest import tiny_config

    # Trials are whole tiny runs (build, trace, checkpoint): what is checked is the search around them.
    c = tiny_config(method="baseline", epochs=1, train_examples=192, eval_examples=96)
    c.model.width = 0.0625
    c.export.enabled = False
    c.tune.tuner = tuner
    c.tune.max_trials = trials
    c.tune.space = ("train.learning_rate=log:0.01:0.2", "train.momentum=choice:0.0,0.9")
    return c


@pytest.mark.parametrize("kind", ["random", "bayesian", "hyperband"])
def test_each_tuner_runs_trials_and_writes_a_ready_to_run_best_config(kind, tmp_path):
    config = search_config(kind)
    config.export.enabled = True  # the trials still skip it (below)
    if kind == "hyperband":
        config.train.epochs = 2  # the budget: trials of 1 and 2 epochs
        config.tune.hyperband_factor = 2
    workdir = str(tmp_path / kind)
    values, score, path = tuning.tune(config, workdir, verbose=0)
    assert set(values) == {"train.learning_rate", "train.momentum"} and 0.0 <= score <= 1.0
    assert 0.01 <= values["train.learning_rate"] <= 0.2 and values["train.momentum"] in (0.0, 0.9)
    trials = [d for d in os.listdir(os.path.join(workdir, "trials"))]
    assert len(trials) >= 2
    for trial in trials:  # a search never sees test, and exports nothing it would throw away
        with open(os.path.join(workdir, "trials", trial, "metrics.json")) as f:
            assert json.load(f)["test"] == {}
        assert not os.path.exists(os.path.join(workdir, "trials", trial, "export"))
    table = open(os.path.join(workdir, "trials.md")).read()
    assert "train.learning_rate" in table and "val_final_accuracy" in table
    # The best config is a config file bin/train takes as is.
    spec = importlib.util.spec_from_file_location("best", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    best = module.get_config()
    assert best.train.learning_rate == pytest.approx(values["train.learning_rate"])
    assert best.train.momentum == pytest.approx(values["train.momentum"])
    assert best.train.evaluate_test and best.export.enabled  # the trials' own settings stay out of it
    if kind == "random":
        best.export.enabled = False
        rerun = train.run(best, str(tmp_path / "rerun"))
        assert rerun["val"]["final_accuracy"] == pytest.approx(score, abs=0.05)  # same recipe, same data
        assert 0.0 <= rerun["test"]["final_accuracy"] <= 1.0  # the chosen config is tested once, by the user


def test_search_resumes_and_only_runs_the_missing_trials(tmp_path):
    config = search_config("random", trials=2)
    workdir = str(tmp_path / "search")
    tuning.tune(config, workdir, verbose=0)
    first = sorted(os.listdir(os.path.join(workdir, "trials")))
    mtimes = {t: os.path.getmtime(os.path.join(workdir, "trials", t, "metrics.json")) for t in first}
    config.tune.max_trials = 3
    tuning.tune(config, workdir, verbose=0)
    after = sorted(os.listdir(os.path.join(workdir, "trials")))
    assert len(after) == 3 and set(first) <= set(after)
    for t in first:  # finished trials are not trained again
        assert os.path.getmtime(os.path.join(workdir, "trials", t, "metrics.json")) == mtimes[t]


def test_failing_trials_are_surfaced_and_stop_the_search(tmp_path, capsys):
    config = search_config("random", trials=5)
    config.method = "self_distill"
    config.tune.space = ("self_distill.alpha=float:1.5:2.0",)  # always out of range: every trial fails
    config.tune.max_consecutive_failed_trials = 2
    workdir = str(tmp_path / "failing")
    with pytest.raises(Exception):
        tuning.tune(config, workdir, verbose=0)
    text = open(os.path.join(workdir, "failures.txt")).read()
    assert "config.self_distill.alpha must be in [0, 1]" in text
    assert text.count("--- trial") == 2  # stopped after 2 consecutive failures
    assert "config.self_distill.alpha must be in [0, 1]" in capsys.readouterr().out  # the first one, printed


def test_bad_search_spaces_name_the_entry():
    config = search_config()
    for space, match in ((("train.nope=float:0:1",), "config.train.nope does not exist"),
                         (("train.learning_rate=gauss:0:1",), "expected 'field=kind:args'"),
                         (("train.learning_rate=log:0:1",), "log sampling needs low > 0"),
                         (("train.learning_rate=float:1:0",), "low < high")):
        with pytest.raises(ConfigError, match=match):
            tuning.parse_space(space, config)
    config.tune.tuner = "grid"
    with pytest.raises(ConfigError, match="config.tune.tuner='grid'"):
        tuning.tune(config, "/tmp/never-written")
    assert tuning.parse_space(tuning.default_space("metadistiller"), config)  # defaults are valid


def test_tuple_fields_take_x_joined_choices():
    from tfkd.config import base_config

    config = base_config()
    space = tuning.parse_space(("cosine.embedding_units=choice:none,256x256,128",), config)
    assert space == [("cosine.embedding_units", "choice", ["none", "256x256", "128"])]
    assert [tuning.apply_values(config, {"cosine.embedding_units": v}).cosine.embedding_units
            for v in space[0][2]] == [(), (256, 256), (128,)]
    with pytest.raises(ConfigError, match="'wide' is not a tuple choice"):
        tuning.parse_space(("cosine.embedding_units=choice:none,wide",), config)
    with pytest.raises(ConfigError, match="is a tuple; use choice"):
        tuning.parse_space(("cosine.embedding_units=int:1:3",), config)


def test_fewshot_search_selects_on_validation_episodes(tmp_path):
    """A few-shot method's trials are scored on validation-class episodes (val_accuracy)."""
    from tests.test_train_fewshot import fewshot_config, write_pixel_features

    features_dir = write_pixel_features(tmp_path / "pixels")
    config = fewshot_config(features_dir, method="gen", epochs=1)
    config.fewshot.test_episodes = 20
    config.fewshot.all_way_shots = ()
    config.export.enabled = False
    config.fewshot.val_way = 1000  # all validation classes: selection on the all-way protocol
    config.tune.max_trials = 3
    config.tune.space = ("gen.scale_init=choice:5.0,20.0", "train.learning_rate=log:1e-4:1e-2",
                         "gen.embedding_units=choice:none,16x16")
    workdir = str(tmp_path / "search")
    values, score, best_config = tuning.tune(config, workdir, verbose=0)
    assert 0.0 < score <= 1.0 and set(values) == {"gen.scale_init", "train.learning_rate", "gen.embedding_units"}
    sizes = set()
    for trial in os.listdir(os.path.join(workdir, "trials")):
        trial_dir = os.path.join(workdir, "trials", trial)
        with open(os.path.join(trial_dir, "metrics.json")) as f:
            metrics = json.load(f)
        with open(os.path.join(trial_dir, "trial.json")) as f:
            assert json.load(f)["score"] == metrics["val_accuracy"]  # validation, never the novel classes
        assert metrics["test"] == {}  # the trials do not even compute novel-class accuracy
        with open(os.path.join(trial_dir, "config.json")) as f:
            sizes.add(tuple(json.load(f)["gen"]["embedding_units"]))
    assert sizes <= {(), (16, 16)}
    text = open(best_config).read()
    assert f"c.gen.embedding_units = {tuple(tuning._as_tuple(values['gen.embedding_units']))!r}" in text
    assert "c.fewshot.evaluate_novel = True" in text  # the winner, run again, is evaluated as usual
