"""Pre-computed feature files: the HDF5 layout of Hariharan & Girshick's low-shot code and of
"A Closer Look at Few-shot Classification" (datasets ``all_feats`` (N, d), ``all_labels`` (N,),
``count``: rows past ``count`` are zero padding), and a plain ``.npz`` with ``features``, ``labels``.
"""
import json
import os

import numpy as np

from tfkd.data.sources import check_labels
from tfkd.errors import DataError

METADATA_FILE = "features.json"  # beside the feature files; bin/extract_features writes it


def read_features(path):
    """Returns (features float32 (n, d), labels int64 (n,)) with any padding trimmed."""
    if not os.path.exists(path):
        raise DataError(f"missing feature file {path}")
    if path.endswith((".h5", ".hdf5")):
        import h5py

        try:
            f = h5py.File(path, "r")
        except OSError as e:
            raise DataError(f"cannot open {path} as HDF5: {e}") from None
        with f:
            missing = [k for k in ("all_feats", "all_labels", "count") if k not in f]
            if missing:
                raise DataError(f"{path}: missing dataset(s) {missing}; expected all_feats, all_labels, count")
            count = int(np.asarray(f["count"][()]).reshape(-1)[0])
            feats, labels = f["all_feats"], f["all_labels"]
            if feats.ndim != 2 or labels.ndim != 1 or feats.shape[0] != labels.shape[0]:
                raise DataError(f"{path}: all_feats {feats.shape} and all_labels {labels.shape} do not "
                                f"describe the same N rows of (N, d) features")
            if not 0 < count <= feats.shape[0]:
                raise DataError(f"{path}: count={count} must be in 1..{feats.shape[0]} (the padded length)")
            features, labels = np.asarray(feats[:count], np.float32), np.asarray(labels[:count])
    elif path.endswith(".npz"):
        with np.load(path) as data:
            missing = [k for k in ("features", "labels") if k not in data.files]
            if missing:
                raise DataError(f"{path}: missing array(s) {missing}; expected features (N, d), labels (N,)")
            features, labels = data["features"].astype(np.float32), data["labels"]
        if features.ndim != 2 or labels.shape != (features.shape[0],):
            raise DataError(f"{path}: features {features.shape} / labels {labels.shape}: expected (N, d) and (N,)")
    else:
        raise DataError(f"{path}: unknown feature file type; expected .h5/.hdf5 or .npz")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: labels must be integers, got {labels.dtype}")
    if not np.isfinite(features).all():
        raise DataError(f"{path}: features contain NaN or inf")
    if len(labels) and labels.min() < 0:
        bad = int(np.argmin(labels))
        raise DataError(f"{path}: label {labels[bad]} (row {bad}) is negative; expected class ids >= 0")
    return features, labels.astype(np.int64)


def read_feature_metadata(features_dir):
    """The folder's features.json (class groups and names by original class id), or {}."""
    path = os.path.join(features_dir, METADATA_FILE)
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read {path} as JSON: {e}") from None
    if not isinstance(meta, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    return meta


def check_labels_against_metadata(labels, path, meta):
    """Feature labels are original class ids; features.json's per-class lists must cover them (a
    stray id would index past the class groups of within-group episodes)."""
    for key in ("class_groups", "class_names"):
        if meta.get(key):
            n = len(meta[key])
            check_labels(labels, n, path, f"class ids of the {n} classes listed in {METADATA_FILE}'s {key}")


def write_features(path, features, labels, overwrite=False):
    """Writes the HDF5 layout above (count = N, no padding) or an .npz, atomically; refuses to
    replace an existing file unless ``overwrite``."""
    if os.path.exists(path) and not overwrite:
        raise DataError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".tmp-{os.getpid()}-{os.path.basename(path)}")
    try:
        if path.endswith((".h5", ".hdf5")):
            import h5py

            with h5py.File(tmp, "w") as f:
                f.create_dataset("all_feats", data=np.asarray(features, np.float32))
                f.create_dataset("all_labels", data=np.asarray(labels, np.int64))
                f.create_dataset("count", data=np.int64(len(labels)))
        else:
            with open(tmp, "wb") as f:
                np.savez(f, features=np.asarray(features, np.float32), labels=np.asarray(labels, np.int64))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
