"""Feature extraction for few-shot learning (behind ``bin/extract_features``): the backbone of a run
trained on the base classes (``config.data.class_split=base``) embeds every image (train and test
files) of every class split -- base / validation / novel -- and writes one HDF5 file per split in
the low-shot layout of tfkd.data.features, labels being the dataset's original class ids.
``features.json`` beside them records the run, the checkpoint, the split sizes and, when the
dataset has class groups (glyphs: alphabets), the group of every class (for within-group episodes).
"""
import os

import keras
import numpy as np
import tensorflow as tf

from tfkd import data as data_lib
from tfkd import io
from tfkd.data.features import write_features
from tfkd.errors import DataError, WorkdirError
from tfkd.export import restore_network
from tfkd.progress import bar_verbosity


def extract_features(workdir, output_dir, checkpoint="best", overwrite=False, batch_size=256, verbose=1):
    io.check_output_folder(output_dir, "--output")
    network, config, _, ckpt = restore_network(workdir, checkpoint)
    if not config.data.class_split:
        raise DataError(f"{workdir} was trained on all classes of {config.data.name!r}; few-shot features need a "
                        f"backbone trained on the base classes only (--config.data.class_split=base)")
    data = data_lib.load_dataset(config.data)
    split, everything = data.class_split, data.all_images
    targets = {name: os.path.join(output_dir, f"{name}.h5") for name in split}
    existing = [p for p in targets.values() if os.path.exists(p)]
    if existing and not overwrite:
        raise WorkdirError(f"feature files exist ({', '.join(existing)}); pass --overwrite to replace them")
    images, labels = everything.images, everything.labels.astype(np.int64)
    embed = tf.function(lambda x: network.embed(tf.cast(x, tf.float32)))
    for name, classes in split.items():
        idx = np.flatnonzero(np.isin(labels, classes))
        bar = keras.utils.Progbar(len(idx), verbose=bar_verbosity(verbose), unit_name="image")
        feats = []
        for start in range(0, len(idx), batch_size):
            chunk = idx[start: start + batch_size]
            feats.append(embed(images[chunk]).numpy())
            bar.add(len(chunk))
        write_features(targets[name], np.concatenate(feats), labels[idx], overwrite=overwrite)
        if verbose:
            print(f"{name}: {len(idx)} images of {len(classes)} classes -> {targets[name]}")
    meta = {"workdir": os.path.abspath(workdir), "checkpoint": os.path.abspath(ckpt), "dataset": config.data.name,
            "feature_dim": int(feats[-1].shape[-1]), "classes": {k: int(len(v)) for k, v in split.items()},
            "class_groups": data.class_groups.tolist() if data.class_groups is not None else None,
            "class_names": [str(n) for n in data.all_class_names] if data.all_class_names else None}
    io.write_json_atomic(os.path.join(output_dir, "features.json"), meta)
    return targets
