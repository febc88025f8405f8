"""The README's "Use from Python" snippet runs as written, and a plain Keras ``fit`` trains
MetaDistiller as bin/train does: meta steps in meta epochs only, the generator meta-trained."""
import os
import re

import numpy as np

from tests.conftest import REPO


def readme_python_snippet():
    text = open(os.path.join(REPO, "README.md")).read()
    section = text.split("## Use from Python", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```python\n(.*?)^```", section, flags=re.S | re.M)
    assert len(blocks) == 1
    return blocks[0]


def test_readme_snippet_fits_metadistiller_with_meta_epochs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the snippet's CSVLogger writes history.csv here
    namespace = {}
    exec(compile(readme_python_snippet(), "README.md (Use from Python)", "exec"), namespace)
    model, history, data = namespace["model"], namespace["history"], namespace["data"]
    steps = len(data.train) // 64
    # epochs 1 and 3 are meta epochs (meta_every_epochs=2): one meta step after each main step.
    assert int(model.meta_step_counter.numpy()) == 2 * steps
    assert int(model.optimizer.iterations.numpy()) == 3 * steps
    assert int(model.generator_optimizer.iterations.numpy()) == 2 * steps
    meta = history.history["meta_loss"]
    assert len(meta) >= 2 and all(np.isfinite(meta))
    assert history.history["val_final_accuracy"][-1] > 0.3  # 10 classes: chance is 0.1
    assert (tmp_path / "history.csv").exists()


def test_a_meta_epoch_without_split_batches_is_refused():
    import keras
    import pytest
    import tensorflow as tf

    from tfkd.methods import MetaDistiller
    from tfkd.models import MultiExitResNet

    network = MultiExitResNet(depth=18, num_classes=3, width=0.0625, input_shape=(12, 12, 1)).ensure_built()
    model = MetaDistiller(network, meta_every_epochs=1)
    model.compile(optimizer=keras.optimizers.SGD(0.05))
    plain = tf.data.Dataset.from_tensors((tf.zeros((4, 12, 12, 1)), tf.zeros((4,), tf.int32)))
    with pytest.raises(ValueError, match="meta_split=True"):
        model.fit(plain, epochs=1, verbose=0)
