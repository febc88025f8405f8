"""The README's "Use from Python" snippet runs as written, and a plain Keras ``fit`` trains
MetaDistiller as bin/train does: meta steps in meta epochs only, the generator meta-trained."""
import os
import re

import numpy as np

from tests.conftest import REPO


def readme_python_snippets():
    """The "Use from Python" section's code blocks: MetaDistiller on images, then few-shot."""
    text = open(os.path.join(REPO, "README.md")).read()
    section = text.split("## Use from Python", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```python\n(.*?)^```", section, flags=re.S | re.M)
    assert len(blocks) == 2
    return blocks


def run_snippet(index):
    namespace = {}
    exec(compile(readme_python_snippets()[index], f"README.md (Use from Python, block {index + 1})", "exec"),
         namespace)
    return namespace


def test_readme_snippet_fits_metadistiller_with_meta_epochs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the snippet's CSVLogger writes history.csv here
    namespace = run_snippet(0)
    model, history, data = namespace["model"], namespace["history"], namespace["data"]
    steps = len(data.train) // 64
    # epochs 1 and 3 are meta epochs (meta_every_epochs=2): one meta step after each main step.
    assert int(model.meta_step_counter.numpy()) == 2 * steps
    assert int(model.optimizer.iterations.numpy()) == 3 * steps
    assert int(model.generator_optimizer.iterations.numpy()) == 2 * steps
    meta = history.history["meta_loss"]
    assert len(meta) >= 2 and all(np.isfinite(meta))
    # 10 classes, 500 validation images: chance is 0.1 (std 0.013). Three epochs of the snippet's
    # ResNet10 on 1,000 images land at 0.43-0.52 here (seeds 0-2; epoch 2 at 0.15-0.48), and the
    # snippet's earlier ResNet18 at 0.30 on another CPU: the BatchNorm moving statistics are still
    # young, so the bar is twice chance, not a fixed learning curve.
    assert history.history["val_final_accuracy"][-1] > 0.2
    assert (tmp_path / "history.csv").exists()


def test_a_meta_epoch_without_split_batches_is_refused():
    import keras
    import pytest
    import tensorflow as tf

    from tfkd.methods import MetaDistiller
    from tfkd.models import MultiExitResNet

    network = MultiExitResNet(depth=10, num_classes=3, width=0.0625, input_shape=(12, 12, 1)).ensure_built()
    model = MetaDistiller(network, meta_every_epochs=1)
    model.compile(optimizer=keras.optimizers.SGD(0.05))
    plain = tf.data.Dataset.from_tensors((tf.zeros((4, 12, 12, 1)), tf.zeros((4,), tf.int32)))
    with pytest.raises(ValueError, match="meta_split=True"):
        model.fit(plain, epochs=1, verbose=0)


def write_pixel_features(folder):
    """base / validation / novel .h5 standing in for a backbone's features: real images average-pooled
    to 14x14 (196-d). The README's glyph split (configs/splits/glyphs_alphabets.json) when the glyphs
    file is here; otherwise Fashion-MNIST, whose 10 classes cannot fill three disjoint 5-class splits:
    base = classes 0-4, and validation and novel are disjoint images of classes 5-9."""
    import json

    from tfkd.data.features import write_features
    from tfkd.data.sources import default_glyphs_path

    os.makedirs(folder, exist_ok=True)
    if os.path.exists(default_glyphs_path()):
        data = np.load(default_glyphs_path())
        images, labels = data["images"], data["labels"]
        with open(os.path.join(REPO, "configs", "splits", "glyphs_alphabets.json")) as f:
            alphabets = json.load(f)
        splits = {name: np.flatnonzero(np.isin(labels, np.flatnonzero(np.isin(data["alphabets"], alphabets[name]))))
                  for name in ("base", "validation", "novel")}
    else:
        from tests.conftest import tiny_config
        from tfkd.data import load_dataset

        data = load_dataset(tiny_config().data)
        images, labels = data.train.images[..., 0], data.train.labels
        rng = np.random.default_rng(0)
        later = rng.permutation(np.flatnonzero(labels >= 5))
        splits = {"base": np.flatnonzero(labels < 5), "validation": later[: len(later) // 2],
                  "novel": later[len(later) // 2:]}
    for name, idx in splits.items():
        pooled = images[idx].reshape(-1, 14, 2, 14, 2).mean((2, 4)).reshape(len(idx), -1) / 255.0
        write_features(os.path.join(folder, f"{name}.h5"), pooled, labels[idx])


def test_readme_fewshot_snippet_trains_progressive_distillation_with_fit(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_pixel_features(tmp_path / "runs" / "glyphs_features")
    namespace = run_snippet(1)
    model, history = namespace["model"], namespace["history"]
    assert int(model.optimizer.iterations.numpy()) == 150  # 3 epochs of 50 episode batches
    assert int(model.k_train.numpy()) == 1  # the schedule weakened the student from 4 real shots to 1
    assert history.history["val_accuracy"][-1] > 0.3  # 5-way: chance is 0.2
    novel = namespace["results"]["Dist↓"]
    assert novel["episodes"] == 500 and novel["mean"] > 0.3  # 5-way 1-shot on novel classes; chance 0.2



def test_distillation_fit_without_teacher_data_names_the_missing_call():
    import keras
    import pytest

    from tfkd.data.episodes import EpisodeSampler, episode_dataset
    from tfkd.methods import Distill

    rng = np.random.default_rng(0)
    features, labels = rng.normal(size=(60, 8)).astype(np.float32), np.repeat(np.arange(6), 10)
    model = Distill(8, num_generated=1, generator_hidden=(8,))
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    episodes = episode_dataset(features, labels, EpisodeSampler(labels, np.arange(6), 3, 1, 2), num_episodes=2)
    with pytest.raises(ValueError, match=r"use_base_split\(features, labels, classes\)"):
        model.fit(episodes, epochs=1, verbose=0)
