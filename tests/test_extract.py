"""Few-shot feature extraction: a backbone trained on base classes embeds every split."""
import csv
import os

import numpy as np
import pytest

import json

from tfkd import train
from tfkd.data.features import read_features
from tfkd.data.sources import default_glyphs_path
from tfkd.errors import WorkdirError


@pytest.fixture(scope="module")
def glyphs_base_run(tmp_path_factory):
    if not os.path.exists(default_glyphs_path()):
        pytest.skip(f"glyphs file not found at {default_glyphs_path()}")
    from tests.conftest import tiny_config

    config = tiny_config(method="baseline", epochs=1, train_examples=1500, eval_examples=300)
    config.data.name = "glyphs"
    config.data.class_split = "base"
    config.model.width = 0.0625
    config.model.head = "cosine"  # the paper's "cosine" pre-trained features
    config.fewshot_val.episodes = 40  # select on validation-class episodes
    config.train.select_metric = "val_fewshot_accuracy"
    workdir = str(tmp_path_factory.mktemp("fewshot") / "backbone")
    metrics = train.run(config, workdir)
    return workdir, metrics


def test_backbone_trains_on_base_classes_only(glyphs_base_run):
    workdir, metrics = glyphs_base_run
    import json

    with open(os.path.join(workdir, "network.json")) as f:
        assert json.load(f)["kwargs"]["num_classes"] == 449  # the base alphabets' letters
    assert metrics["select_metric"] == "val_fewshot_accuracy"
    with open(os.path.join(workdir, "history.csv")) as f:
        row = next(csv.DictReader(f))
    # Letters of unseen alphabets, 5-way 1-shot: even one epoch of a tiny net beats chance (0.2).
    assert float(row["val_fewshot_accuracy"]) > 0.3


def test_extract_writes_every_split_and_refuses_overwrite(glyphs_base_run, tmp_path):
    from tfkd.extract import extract_features

    workdir, _ = glyphs_base_run
    out = str(tmp_path / "features")
    paths = extract_features(workdir, out, verbose=0)
    data = np.load(default_glyphs_path())
    sizes = {}
    for name, path in paths.items():
        feats, labels = read_features(path)
        assert feats.shape[1] == 32 and np.isfinite(feats).all()  # width 0.0625 -> 512/16 channels
        sizes[name] = len(labels)
        alphabets = set(data["alphabets"][np.unique(labels)].tolist())
        assert len(alphabets) >= 3
    assert sum(sizes.values()) == len(data["labels"])  # every image, once
    assert set(sizes) == {"base", "validation", "novel"}
    with open(os.path.join(out, "features.json")) as f:
        meta = json.load(f)
    assert len(meta["class_groups"]) == 761 and meta["class_groups"][0] == "Latin"
    with pytest.raises(WorkdirError, match="overwrite"):
        extract_features(workdir, out, verbose=0)


def test_fewshot_export_has_an_image_signature_matching_the_feature_path(glyphs_base_run, tmp_path, monkeypatch):
    """Backbone -> features -> a few-shot run -> export: images in, same probabilities as features in.
    The features folder is given relative to where the commands run, and the export runs from
    another folder: config.json holds the folder absolute, so the backbone is still found."""
    import tensorflow as tf

    from tests.test_train_fewshot import fewshot_config
    from tfkd import export
    from tfkd.data import load_dataset
    from tfkd.extract import extract_features

    workdir, _ = glyphs_base_run
    monkeypatch.chdir(tmp_path)
    extract_features(workdir, "features", verbose=0)
    features_dir = "features"
    config = fewshot_config(features_dir, method="gen", epochs=1)
    config.fewshot.n_query = 4
    config.fewshot.test_episodes = 20
    config.fewshot.all_way_shots = ()
    config.fewshot.within_group_way = 0
    run_dir = str(tmp_path / "gen")
    train.run(config, run_dir)
    with open(os.path.join(run_dir, "config.json")) as f:
        assert json.load(f)["fewshot"]["features_dir"] == str(tmp_path / "features")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    path, module = export.export_fewshot_predictor(run_dir, str(tmp_path / "export"))
    assert module.images is not None and export.load_metadata(path)["backbone_workdir"] == workdir
    # Five signatures, two label dtypes: the members and the backbone are traced for all of them once
    # (and once more by tf.saved_model.save itself), not once per signature function.
    assert module.members_probabilities.experimental_get_tracing_count() <= 2
    assert module.embed_images.experimental_get_tracing_count() <= 2
    feats, labels = read_features(str(tmp_path / "features" / "novel.h5"))
    # The images behind novel.h5, in its row order (as bin/extract_features read them).
    with open(os.path.join(workdir, "config.json")) as f:
        import ml_collections

        data_cfg = ml_collections.ConfigDict(json.load(f)["data"])
    everything = load_dataset(data_cfg).all_images
    novel_images = everything.images[np.isin(everything.labels, np.unique(labels))]
    classes = np.unique(labels)[:3]
    support_idx = np.concatenate([np.flatnonzero(labels == c)[:2] for c in classes])
    query_idx = np.concatenate([np.flatnonzero(labels == c)[2:4] for c in classes])
    support_labels = np.repeat(np.arange(3), 2).astype(np.int32)
    by_images = module.images(tf.constant(novel_images[support_idx]), tf.constant(support_labels),
                              tf.constant(novel_images[query_idx]))["probabilities"].numpy()
    by_features = module.serve(tf.constant(feats[support_idx]), tf.constant(support_labels),
                               tf.constant(feats[query_idx]))["probabilities"].numpy()
    np.testing.assert_allclose(by_images, by_features, atol=1e-5)
    loaded = tf.saved_model.load(path)
    assert set(loaded.signatures) == {"serving_default", "serving_int64", "class_ids", "images", "images_class_ids"}
    out = loaded.signatures["images_class_ids"](support_images=tf.constant(novel_images[support_idx]),
                                                support_labels=tf.constant(np.array([5, 50, 500])[support_labels]),
                                                query_images=tf.constant(novel_images[query_idx]))
    assert out["class_ids"].numpy().tolist() == [5, 50, 500]
    np.testing.assert_allclose(out["probabilities"].numpy(), by_images, atol=1e-5)
