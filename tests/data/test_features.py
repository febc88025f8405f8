"""Feature files: HDF5 padding is trimmed, inconsistent files are rejected, round trips, no overwrite."""
import json

import h5py
import numpy as np
import pytest

from tfkd.data.features import read_features, write_features
from tfkd.errors import DataError


def _h5(path, feats, labels, count):
    with h5py.File(path, "w") as f:
        f.create_dataset("all_feats", data=feats)
        f.create_dataset("all_labels", data=labels)
        f.create_dataset("count", data=count)


def test_hdf5_padding_is_trimmed(tmp_path):
    feats = np.zeros((10, 4), np.float32)
    feats[:7] = np.arange(28).reshape(7, 4)
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 0, 0, 0])
    _h5(tmp_path / "f.hdf5", feats, labels, 7)
    x, y = read_features(str(tmp_path / "f.hdf5"))
    assert x.shape == (7, 4) and y.tolist() == [0, 1, 2, 0, 1, 2, 0]
    np.testing.assert_array_equal(x, feats[:7])


@pytest.mark.parametrize("feats,labels,count,match", [
    (np.zeros((5, 3)), np.zeros(4, int), 4, "same N rows"),
    (np.zeros((5, 3)), np.zeros(5, int), 6, "count=6"),
    (np.zeros((5, 3)), np.zeros(5, int), 0, "count=0"),
    (np.zeros(5), np.zeros(5, int), 5, "same N rows"),
])
def test_inconsistent_hdf5_is_rejected(tmp_path, feats, labels, count, match):
    _h5(tmp_path / "bad.h5", feats, labels, count)
    with pytest.raises(DataError, match=match):
        read_features(str(tmp_path / "bad.h5"))


def test_missing_dataset_and_unknown_type(tmp_path):
    with h5py.File(tmp_path / "m.h5", "w") as f:
        f.create_dataset("all_feats", data=np.zeros((2, 2)))
    with pytest.raises(DataError, match="all_labels"):
        read_features(str(tmp_path / "m.h5"))
    (tmp_path / "x.csv").write_text("1,2")
    with pytest.raises(DataError, match="unknown feature file type"):
        read_features(str(tmp_path / "x.csv"))


@pytest.mark.parametrize("name", ["f.h5", "f.npz"])
def test_round_trip_and_no_silent_overwrite(tmp_path, name):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(6, 3)).astype(np.float32), np.arange(6) % 2
    path = str(tmp_path / name)
    write_features(path, x, y)
    x2, y2 = read_features(path)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    with pytest.raises(DataError, match="exists"):
        write_features(path, x, y)
    write_features(path, x + 1, y, overwrite=True)
    np.testing.assert_array_equal(read_features(path)[0], x + 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_negative_label_is_rejected(tmp_path):
    path = str(tmp_path / "f.npz")
    np.savez(path, features=np.zeros((4, 3), np.float32), labels=np.array([0, 1, -1, 1]))
    with pytest.raises(DataError, match=r"f\.npz: label -1 \(row 2\) is negative"):
        read_features(path)


def _feature_folder(folder, novel_labels, meta):
    rng = np.random.default_rng(0)
    for split, labels in (("base", [0, 0, 1, 1]), ("validation", [2, 2, 3, 3]), ("novel", novel_labels)):
        write_features(str(folder / f"{split}.npz"), rng.normal(size=(len(labels), 3)), np.asarray(labels),
                       overwrite=True)
    (folder / "features.json").write_text(json.dumps(meta))
    return str(folder)


def test_labels_beyond_the_classes_of_features_json_are_rejected(tmp_path):
    """Feature labels are original class ids; features.json lists the groups (and names) per class."""
    from tfkd.train_fewshot import FeatureSplits

    groups = ["a", "a", "b", "b", "c", "c"]
    assert FeatureSplits(_feature_folder(tmp_path, [4, 4, 5, 5], {"class_groups": groups})).class_groups.tolist() == groups
    folder = _feature_folder(tmp_path, [4, 4, 5, 50], {"class_groups": groups, "class_names": list("uvwxyz")})
    with pytest.raises(DataError) as e:
        FeatureSplits(folder)
    assert "novel.npz: label 50 (row 3" in str(e.value) and "class_groups" in str(e.value)
    (tmp_path / "features.json").write_text("{not json")
    with pytest.raises(DataError, match="features.json as JSON"):
        FeatureSplits(folder)
