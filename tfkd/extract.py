"""Feature extraction for few-shot learning (behind ``bin/extract_features``): a trained run's
backbone embeds every image of every class split (base / validation / novel) and the features are
written as one HDF5 file per split (the low-shot layout of tfkd.data.features), labels being the
dataset's original class ids."""
import os

import keras
import numpy as np
import tensorflow as tf

from tfkd import io
from tfkd.data.episodes import load_class_split
from tfkd.data.features import write_features
from tfkd.data.sources import default_glyphs_path, default_glyphs_split_file, read_npz
from tfkd.errors import DataError, WorkdirError
from tfkd.export import restore_network


def extract_features(workdir, output_dir, checkpoint="best", overwrite=False, batch_size=256, verbose=1):
    network, config, _, ckpt = restore_network(workdir, checkpoint)
    if config.data.name != "glyphs":
        raise DataError(f"feature extraction supports the glyphs dataset for now; {workdir} was trained on "
                        f"{config.data.name!r}")
    path = os.path.abspath(config.data.data_dir or default_glyphs_path())
    data = read_npz(path, ("images", "labels", "alphabets"))
    split = load_class_split(config.data.class_split_file or default_glyphs_split_file(), data["alphabets"])
    targets = {name: os.path.join(output_dir, f"{name}.h5") for name in split}
    existing = [p for p in targets.values() if os.path.exists(p)]
    if existing and not overwrite:
        raise WorkdirError(f"feature files exist ({', '.join(existing)}); pass --overwrite to replace them")
    images, labels = data["images"], data["labels"].astype(np.int64)
    if images.ndim == 3:
        images = images[..., None]
    embed = tf.function(lambda x: network.embed(tf.cast(x, tf.float32)))
    for name, classes in split.items():
        idx = np.flatnonzero(np.isin(labels, classes))
        bar = keras.utils.Progbar(len(idx), verbose=verbose, unit_name="image")
        feats = []
        for start in range(0, len(idx), batch_size):
            chunk = idx[start: start + batch_size]
            feats.append(embed(images[chunk]).numpy())
            bar.add(len(chunk))
        write_features(targets[name], np.concatenate(feats), labels[idx], overwrite=overwrite)
        if verbose:
            print(f"{name}: {len(idx)} images of {len(classes)} classes -> {targets[name]}")
    meta = {"workdir": os.path.abspath(workdir), "checkpoint": os.path.abspath(ckpt), "data": path,
            "feature_dim": int(feats[-1].shape[-1]), "splits": {k: int(len(v)) for k, v in split.items()}}
    io.write_json_atomic(os.path.join(output_dir, "features.json"), meta)
    return targets
