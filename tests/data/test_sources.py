"""Data sources: IDX reading, Fashion-MNIST / glyphs / TFDS loading, validation carving, subsets."""
import gzip
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tfkd.config import base_config  # noqa: E402
from tfkd.data import sources  # noqa: E402
from tfkd.data.sources import ArraySplit, font_family_split, load_dataset, read_idx  # noqa: E402
from tfkd.errors import DataError  # noqa: E402

FMNIST_DIR = sources.FASHION_MNIST_DIR
GLYPHS_CANDIDATES = (sources.default_glyphs_path(), "/work/shared/data/glyphs_background.npz")
GLYPHS_PATH = next((p for p in GLYPHS_CANDIDATES if os.path.exists(p)), None)


def data_config(**overrides):
    """A writable copy of the base config's ``data`` section."""
    cfg = ml_collections.ConfigDict(base_config().data.to_dict())
    for k, v in overrides.items():
        cfg[k] = v
    return cfg


def _rows(images, labels):
    """Each example as one opaque row (image bytes + label), for multiset comparisons."""
    flat = np.ascontiguousarray(images.reshape(len(images), -1))
    rows = np.concatenate([flat, labels.astype(np.uint8)[:, None]], axis=1)
    return np.ascontiguousarray(rows).view(np.dtype((np.void, rows.shape[1]))).ravel()


def _write_idx(path, payload_header, payload, compress=True):
    raw = bytes(payload_header) + bytes(payload)
    if compress:
        with gzip.open(path, "wb") as f:
            f.write(raw)
    else:
        with open(path, "wb") as f:
            f.write(raw)
    return str(path)


# ---------------------------------------------------------------- read_idx


@pytest.fixture(scope="module")
def fmnist_raw():
    train_x = read_idx(os.path.join(FMNIST_DIR, "train-images-idx3-ubyte.gz"))
    train_y = read_idx(os.path.join(FMNIST_DIR, "train-labels-idx1-ubyte.gz"))
    test_x = read_idx(os.path.join(FMNIST_DIR, "t10k-images-idx3-ubyte.gz"))
    test_y = read_idx(os.path.join(FMNIST_DIR, "t10k-labels-idx1-ubyte.gz"))
    return train_x, train_y, test_x, test_y


def test_read_idx_real_fashion_mnist(fmnist_raw):
    train_x, train_y, test_x, test_y = fmnist_raw
    assert train_x.shape == (60000, 28, 28) and train_x.dtype == np.uint8
    assert train_y.shape == (60000,) and train_y.dtype == np.uint8
    assert test_x.shape == (10000, 28, 28) and test_x.dtype == np.uint8
    assert test_y.shape == (10000,) and test_y.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(train_y, minlength=10), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(test_y, minlength=10), [1000] * 10)
    assert train_y.max() == 9 and test_y.max() == 9
    # Real pictures, not zeros: the well-known mean pixel of Fashion-MNIST is 0.286 * 255.
    assert train_x.mean() == pytest.approx(72.94, abs=0.1)
    assert train_x.max() == 255 and train_x.min() == 0


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_parses_header_and_payload(tmp_path, compress):
    data = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    header = b"\x00\x00\x08\x03" + b"".join(int(d).to_bytes(4, "big") for d in data.shape)
    path = _write_idx(tmp_path / ("x.idx.gz" if compress else "x.idx"), header, data.tobytes(), compress)
    out = read_idx(path)
    assert out.shape == (2, 3, 4) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, data)

    labels = np.array([3, 1, 4, 1, 5], np.uint8)
    lpath = _write_idx(tmp_path / "l.gz", b"\x00\x00\x08\x01" + (5).to_bytes(4, "big"), labels.tobytes())
    np.testing.assert_array_equal(read_idx(lpath), labels)


def test_read_idx_missing_file_names_path_and_package(tmp_path):
    path = str(tmp_path / "nowhere" / "train-images-idx3-ubyte.gz")
    with pytest.raises(DataError) as e:
        read_idx(path)
    assert path in str(e.value)
    assert "dataset-fashion-mnist" in str(e.value)


def test_read_idx_bad_magic(tmp_path):
    # 0x0D = float32 data: not uint8 IDX.
    path = _write_idx(tmp_path / "bad-magic.gz", b"\x00\x00\x0d\x01" + (4).to_bytes(4, "big"), b"\x00" * 16)
    with pytest.raises(DataError, match="magic") as e:
        read_idx(path)
    assert path in str(e.value)
    # A file that is not IDX at all.
    path2 = _write_idx(tmp_path / "text.gz", b"", b"hello, this is not an IDX file")
    with pytest.raises(DataError) as e2:
        read_idx(path2)
    assert path2 in str(e2.value)


def test_read_idx_truncated_payload(tmp_path):
    header = b"\x00\x00\x08\x03" + b"".join(int(d).to_bytes(4, "big") for d in (10, 28, 28))
    path = _write_idx(tmp_path / "short-images.gz", header, b"\x07" * (10 * 28 * 28 - 100))
    with pytest.raises(DataError) as e:
        read_idx(path)
    assert path in str(e.value)
    assert "(10, 28, 28)" in str(e.value)


def test_read_idx_truncated_gzip_stream(tmp_path):
    good = _write_idx(tmp_path / "good.gz", b"\x00\x00\x08\x01" + (5000).to_bytes(4, "big"),
                      np.random.default_rng(0).integers(0, 10, 5000, dtype=np.uint8).tobytes())
    raw = open(good, "rb").read()
    path = str(tmp_path / "cut.gz")
    with open(path, "wb") as f:
        f.write(raw[: len(raw) // 2])
    with pytest.raises(DataError) as e:
        read_idx(path)
    assert path in str(e.value)


# ---------------------------------------------------------------- Fashion-MNIST via load_dataset


@pytest.fixture(scope="module")
def fmnist_full():
    """The whole default split: 54000 train / 6000 val / 10000 test."""
    return load_dataset(data_config(name="fashion_mnist"))


def test_fashion_mnist_val_is_carved_from_train(fmnist_full, fmnist_raw):
    data = fmnist_full
    train_x, train_y, test_x, test_y = fmnist_raw
    assert data.name == "fashion_mnist"
    assert data.num_classes == 10 and data.image_shape == (28, 28, 1)
    assert data.flip_ok is True
    assert data.class_names[0] == "T-shirt/top" and data.class_names[9] == "Ankle boot"
    assert isinstance(data.train, ArraySplit) and data.train.images.shape == (54000, 28, 28, 1)
    assert data.train.images.dtype == np.uint8 and data.train.labels.dtype == np.int32
    assert len(data.train) + len(data.val) == 60000
    assert len(data.val) == 6000 and len(data.test) == 10000
    # Train + val is exactly the original train file as a multiset (duplicates in Fashion-MNIST
    # make hashing unsuitable for a disjointness check; multiset equality is not fooled by them).
    carved = np.sort(np.concatenate([_rows(data.train.images, data.train.labels),
                                     _rows(data.val.images, data.val.labels)]))
    np.testing.assert_array_equal(carved, np.sort(_rows(train_x, train_y)))
    # The test split is the t10k file, untouched and in order.
    np.testing.assert_array_equal(data.test.images[..., 0], test_x)
    np.testing.assert_array_equal(data.test.labels, test_y)


def test_fashion_mnist_val_is_stratified(fmnist_full):
    np.testing.assert_array_equal(np.bincount(fmnist_full.val.labels, minlength=10), [600] * 10)
    np.testing.assert_array_equal(np.bincount(fmnist_full.train.labels, minlength=10), [5400] * 10)


def test_fashion_mnist_normalisation_from_train(fmnist_full):
    # Fashion-MNIST: mean 0.2860, std 0.3530 on the 0..1 scale.
    (mean,), (std,) = fmnist_full.mean, fmnist_full.std
    assert mean == pytest.approx(0.2860 * 255, abs=0.3)
    assert std == pytest.approx(0.3530 * 255, abs=0.3)
    assert mean == pytest.approx(float(fmnist_full.train.images.mean()), rel=1e-6)


@pytest.mark.parametrize("shape", [(1000, 7, 5, 1), (333, 4, 6, 3)])
def test_channel_stats_of_uint8_images_equal_float64_numpy(shape):
    """The exact integer sums (chunked, several chunks here) give numpy's float64 mean and
    population std per channel, for one and for three channels."""
    images = np.random.default_rng(0).integers(0, 256, shape).astype(np.uint8)
    images[:10] = 255  # extreme values in the first chunk only
    mean, std = sources.channel_stats(images, chunk=128)
    x = images.astype(np.float64)
    np.testing.assert_allclose(mean, x.mean(axis=(0, 1, 2)), rtol=1e-13)
    np.testing.assert_allclose(std, x.std(axis=(0, 1, 2)), rtol=1e-13)
    assert sources.channel_stats(np.zeros((4, 2, 2, 1), np.uint8)) == ((0.0,), (1e-3,))  # std floored
    floats = images.astype(np.float32) / 255.0  # other dtypes keep the float64 path
    np.testing.assert_allclose(sources.channel_stats(floats)[0], floats.astype(np.float64).mean(axis=(0, 1, 2)))


def test_fashion_mnist_split_is_deterministic_and_depends_only_on_split_seed(fmnist_full):
    cfg = data_config(name="fashion_mnist")
    assert "seed" not in cfg  # the experiment seed never reaches the data split
    np.random.seed(12345)  # global RNG state must not matter
    again = load_dataset(cfg)
    np.testing.assert_array_equal(again.val.labels, fmnist_full.val.labels)
    np.testing.assert_array_equal(again.val.images, fmnist_full.val.images)
    np.testing.assert_array_equal(again.train.images, fmnist_full.train.images)

    other = load_dataset(data_config(name="fashion_mnist", split_seed=1))
    np.testing.assert_array_equal(np.bincount(other.val.labels, minlength=10), [600] * 10)
    same = np.isin(_rows(other.val.images, other.val.labels), _rows(fmnist_full.val.images, fmnist_full.val.labels))
    # A different split seed picks a different validation set (overlap ~10% by chance).
    assert same.mean() < 0.5


def test_fashion_mnist_subsets_are_class_balanced(fmnist_full):
    cfg = data_config(name="fashion_mnist", max_train_examples=100, max_eval_examples=50)
    data = load_dataset(cfg)
    assert len(data.train) == 100 and len(data.val) == 50 and len(data.test) == 50
    np.testing.assert_array_equal(np.bincount(data.train.labels, minlength=10), [10] * 10)
    np.testing.assert_array_equal(np.bincount(data.val.labels, minlength=10), [5] * 10)
    np.testing.assert_array_equal(np.bincount(data.test.labels, minlength=10), [5] * 10)
    # The subset is drawn from the (carved) train split, and normalisation still uses all of it.
    assert np.isin(_rows(data.train.images, data.train.labels),
                   _rows(fmnist_full.train.images, fmnist_full.train.labels)).all()
    assert data.mean == fmnist_full.mean and data.std == fmnist_full.std
    # Deterministic.
    again = load_dataset(cfg)
    np.testing.assert_array_equal(again.train.images, data.train.images)


def test_fashion_mnist_missing_data_dir(tmp_path):
    root = str(tmp_path / "no-such-dir")
    with pytest.raises(DataError) as e:
        load_dataset(data_config(name="fashion_mnist", data_dir=root))
    assert root in str(e.value)


def test_stratified_holdout_rejects_bad_fraction():
    with pytest.raises(DataError, match="val_fraction"):
        sources.stratified_holdout(np.zeros(10, np.int32), 1.0, 0)


def test_too_large_val_fraction_never_empties_a_class():
    labels = np.repeat(np.arange(3), [2, 5, 40])
    keep, hold = sources.stratified_holdout(labels, 0.9, seed=0)
    assert len(np.intersect1d(keep, hold)) == 0 and len(keep) + len(hold) == len(labels)
    for c in range(3):
        assert (labels[keep] == c).sum() >= 1 and (labels[hold] == c).sum() >= 1


# ---------------------------------------------------------------- glyphs


@pytest.fixture(scope="module")
def glyphs_npz():
    if GLYPHS_PATH is None:
        pytest.skip(f"glyphs dataset not found at {GLYPHS_CANDIDATES}")
    with np.load(GLYPHS_PATH, allow_pickle=False) as z:
        return {"labels": z["labels"], "font_families": z["font_families"]}


def test_font_family_split_keeps_families_on_one_side(glyphs_npz):
    labels, families = glyphs_npz["labels"], glyphs_npz["font_families"]
    train_idx, test_idx = font_family_split(labels, families)
    assert len(np.intersect1d(train_idx, test_idx)) == 0
    assert len(train_idx) + len(test_idx) == len(labels)
    assert 0.1 < len(test_idx) / len(labels) < 0.35
    is_test = np.zeros(len(labels), bool)
    is_test[test_idx] = True
    for c in np.unique(labels):
        in_c = labels == c
        train_fams = set(families[in_c & ~is_test])
        test_fams = set(families[in_c & is_test])
        assert not (train_fams & test_fams), f"class {c}: families {train_fams & test_fams} on both sides"
        if len(set(families[in_c])) >= 2:
            assert test_fams and train_fams, f"class {c} lacks a train or test family"


def test_font_family_split_is_independent_of_file_order(glyphs_npz):
    labels, families = glyphs_npz["labels"], glyphs_npz["font_families"]
    _, test_idx = font_family_split(labels, families)
    perm = np.random.default_rng(3).permutation(len(labels))
    _, test_idx_p = font_family_split(labels[perm], families[perm])
    as_pairs = lambda l, f: sorted(set(zip(l.tolist(), f.tolist())))  # noqa: E731
    assert as_pairs(labels[test_idx], families[test_idx]) == as_pairs(labels[perm][test_idx_p],
                                                                      families[perm][test_idx_p])


def test_glyphs_load_dataset(glyphs_npz):
    labels, families = glyphs_npz["labels"], glyphs_npz["font_families"]
    data = load_dataset(data_config(name="glyphs", data_dir=GLYPHS_PATH))
    train_idx, test_idx = font_family_split(labels, families)
    assert data.num_classes == 761 and data.image_shape == (28, 28, 1)
    assert data.flip_ok is False
    assert len(data.class_names) == 761
    assert len(data.train) + len(data.val) == len(train_idx)
    assert len(data.test) == len(test_idx)
    np.testing.assert_array_equal(np.sort(data.test.labels), np.sort(labels[test_idx]))
    np.testing.assert_array_equal(np.sort(np.concatenate([data.train.labels, data.val.labels])),
                                  np.sort(labels[train_idx]))
    # Every class is in train, and validation is carved per class.
    assert set(np.unique(data.train.labels)) == set(range(761))
    assert len(data.val) == pytest.approx(0.1 * len(train_idx), rel=0.15)


def test_glyphs_npz_missing_labels(tmp_path):
    path = str(tmp_path / "no_labels.npz")
    np.savez(path, images=np.zeros((4, 28, 28), np.uint8))
    with pytest.raises(DataError) as e:
        load_dataset(data_config(name="glyphs", data_dir=path))
    assert "labels" in str(e.value)
    assert path in str(e.value)


def _glyphs_npz(path, labels, num_names, **extra):
    labels = np.asarray(labels)
    np.savez(path, images=np.zeros((len(labels), 28, 28), np.uint8), labels=labels,
             class_names=np.array([f"c{i}" for i in range(num_names)]), **extra)
    return str(path)


@pytest.mark.parametrize("bad", [100000, 5, -1])
def test_glyphs_label_outside_class_names_is_rejected(tmp_path, bad):
    """Labels index class_names: one label = 100000 used to train a 100001-class model."""
    path = _glyphs_npz(tmp_path / "g.npz", [0, 1, 2, 3, 4, bad, 0, 1], num_names=5)
    with pytest.raises(DataError) as e:
        load_dataset(data_config(name="glyphs", data_dir=path))
    message = str(e.value)
    assert path in message and f"label {bad} " in message and "[0, 5)" in message
    assert "\n" not in message


def test_glyphs_num_classes_comes_from_class_names(tmp_path):
    # The last class has no image: still a 6-class dataset, as its class_names say.
    path = _glyphs_npz(tmp_path / "g.npz", np.repeat(np.arange(5), 4), num_names=6)
    data = load_dataset(data_config(name="glyphs", data_dir=path, val_fraction=0.25))
    assert data.num_classes == 6 and len(data.class_names) == 6


def test_glyphs_alphabets_must_give_one_group_per_class(tmp_path):
    path = _glyphs_npz(tmp_path / "g.npz", np.repeat(np.arange(5), 4), num_names=5, alphabets=np.array(["a", "b"]))
    with pytest.raises(DataError, match=r"alphabets.*\(5,\)"):
        load_dataset(data_config(name="glyphs", data_dir=path, val_fraction=0.25))


def test_fashion_mnist_label_outside_the_ten_classes_is_rejected(tmp_path):
    labels = np.arange(20, dtype=np.uint8) % 10
    labels[7] = 10
    for prefix in ("train", "t10k"):
        header = b"\x00\x00\x08\x03" + b"".join(int(d).to_bytes(4, "big") for d in (20, 28, 28))
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", header, bytes(20 * 28 * 28))
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", b"\x00\x00\x08\x01" + (20).to_bytes(4, "big"),
                   labels.tobytes())
    with pytest.raises(DataError) as e:
        load_dataset(data_config(name="fashion_mnist", data_dir=str(tmp_path)))
    assert "train-labels-idx1-ubyte.gz: label 10 (row 7" in str(e.value) and "[0, 10)" in str(e.value)


def test_glyphs_missing_file(tmp_path):
    path = str(tmp_path / "absent.npz")
    with pytest.raises(DataError) as e:
        load_dataset(data_config(name="glyphs", data_dir=path))
    assert path in str(e.value)


def test_glyphs_not_found_by_default_names_both_ways_to_point_at_it(tmp_path, monkeypatch):
    """A checkout away from shared/data (e.g. a clone in /tmp) finds no glyphs file by default; the
    error names the config field and the environment variable that point at it."""
    path = str(tmp_path / "glyphs_background.npz")
    monkeypatch.setenv("TFKD_GLYPHS", path)
    with pytest.raises(DataError, match=r"--config\.data\.data_dir or the TFKD_GLYPHS environment variable") as e:
        load_dataset(data_config(name="glyphs"))
    assert path in str(e.value)


# ---------------------------------------------------------------- TFDS

TFDS_EXAMPLES = 200


@pytest.fixture
def mock_cifar10(tmp_path):
    """cifar10 under ``tfds.testing.mock_data`` with real-looking metadata in ``tmp_path``.

    ``mock_data`` alone is not enough for tfkd's loader: it does not patch ``is_prepared()``
    (which stays False: the builder's data_dir is redirected to tfds/testing/metadata, which
    has no cifar10), and without metadata the split sizes are unknown, so
    ``as_dataset(batch_size=-1)`` asks ``padded_batch`` for sys.maxsize elements and aborts the
    process (std::length_error). Writing dataset_info.json with split sizes fixes both.
    """
    import tensorflow_datasets as tfds

    builder = tfds.builder("cifar10", data_dir=str(tmp_path))
    builder.info.set_splits(tfds.core.SplitDict([
        tfds.core.SplitInfo(name=s, shard_lengths=[TFDS_EXAMPLES], num_bytes=0) for s in ("train", "test")]))
    builder.data_path.mkdir(parents=True, exist_ok=True)
    builder.info.write_to_directory(builder.data_path)
    with tfds.testing.mock_data(num_examples=TFDS_EXAMPLES, data_dir=str(tmp_path)):
        yield str(tmp_path)


def test_tfds_in_memory_cifar10(mock_cifar10):
    data = load_dataset(data_config(name="cifar10", data_dir=mock_cifar10))
    assert data.name == "cifar10"
    assert data.image_shape == (32, 32, 3)
    assert data.num_classes == 10 and len(data.class_names) == 10
    assert data.flip_ok is True
    assert isinstance(data.train, ArraySplit) and data.train.images.dtype == np.uint8
    assert len(data.train) + len(data.val) == TFDS_EXAMPLES
    assert len(data.test) == TFDS_EXAMPLES
    assert 0.05 * TFDS_EXAMPLES <= len(data.val) <= 0.15 * TFDS_EXAMPLES
    # Stratified: every class present in train also has a validation example.
    assert set(np.unique(data.val.labels)) == set(np.unique(data.train.labels))
    assert len(data.mean) == 3 and len(data.std) == 3
    np.testing.assert_allclose(data.mean, data.train.images.reshape(-1, 3).mean(0), rtol=1e-6)


def test_tfds_label_outside_num_classes_is_rejected(tmp_path):
    """TFDS labels are checked against features['label'].num_classes (10 for cifar10)."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    builder = tfds.builder("cifar10", data_dir=str(tmp_path))
    builder.info.set_splits(tfds.core.SplitDict([
        tfds.core.SplitInfo(name=s, shard_lengths=[20], num_bytes=0) for s in ("train", "test")]))
    builder.data_path.mkdir(parents=True, exist_ok=True)
    builder.info.write_to_directory(builder.data_path)

    def as_dataset(self, *args, **kwargs):
        labels = np.arange(20) % 10
        labels[3] = 12
        return tf.data.Dataset.from_tensor_slices({"id": np.array([str(i) for i in range(20)]),
                                                   "image": np.zeros((20, 32, 32, 3), np.uint8),
                                                   "label": labels.astype(np.int64)})

    with tfds.testing.mock_data(as_dataset_fn=as_dataset, data_dir=str(tmp_path)):
        with pytest.raises(DataError) as e:
            load_dataset(data_config(name="cifar10", data_dir=str(tmp_path)))
    assert "'cifar10' split 'train': label 12 (row 3" in str(e.value)
    assert "features['label'].num_classes" in str(e.value)


def test_tfds_unprepared_fails_fast(tmp_path):
    import tensorflow_datasets  # noqa: F401  (import time is not the loader's)

    start = time.monotonic()
    with pytest.raises(DataError) as e:
        load_dataset(data_config(name="mnist", data_dir=str(tmp_path), allow_download=False))
    assert time.monotonic() - start < 5.0
    assert "tfds build" in str(e.value)
    assert str(tmp_path) in str(e.value)
    assert "allow_download" in str(e.value)
    assert not any(tmp_path.rglob("*.tfrecord*"))


def test_unknown_dataset_name():
    with pytest.raises(DataError) as e:
        load_dataset(data_config(name="no_such_dataset_xyz"))
    assert "no_such_dataset_xyz" in str(e.value)
    assert "fashion_mnist" in str(e.value)  # lists the local datasets


def test_tfds_streaming_split_feeds_training_and_eval(mock_cifar10):
    """in_memory=False (ImageNet-style): TFDS slicing carves validation from train, images are
    cropped to config.data.image_size, and the training stream has static batch shapes."""
    from tfkd.data import eval_dataset, train_dataset
    from tfkd.data.sources import StreamSplit

    data = load_dataset(data_config(name="cifar10", data_dir=mock_cifar10, in_memory=False, image_size=24,
                                    val_fraction=0.1))
    assert isinstance(data.train, StreamSplit) and data.image_shape == (24, 24, 3)
    assert len(data.train) == TFDS_EXAMPLES - round(0.1 * TFDS_EXAMPLES)  # train[:90%] by TFDS slicing
    x, y = next(iter(train_dataset(data, batch_size=8, seed=0)))
    assert x.shape == (8, 24, 24, 3) and y.shape == (8,)
    assert float(x.numpy().min()) >= 0.0 and float(x.numpy().max()) <= 255.0
    # (mock_data ignores split slicing when reading, so sizes are checked on the split info.)
    assert len(data.val) == round(0.1 * TFDS_EXAMPLES)
    for images, _ in eval_dataset(data, "test", batch_size=16).take(1):
        assert images.shape[1:] == (24, 24, 3)


def test_glyphs_class_split_keeps_one_split_relabelled():
    if not any(os.path.exists(p) for p in GLYPHS_CANDIDATES):
        pytest.skip("glyphs file not found")
    path = next(p for p in GLYPHS_CANDIDATES if os.path.exists(p))
    data = load_dataset(data_config(name="glyphs", data_dir=path, class_split="novel"))
    assert data.num_classes == 165  # Tamil, Sinhala, Myanmar, Canadian Syllabics
    assert set(np.unique(data.train.labels)) == set(range(165))
    with pytest.raises(DataError, match="config.data.class_split='nope'"):
        load_dataset(data_config(name="glyphs", data_dir=path, class_split="nope"))


def test_fashion_mnist_class_split_by_name_keeps_every_image_for_extraction():
    data = load_dataset(data_config(name="fashion_mnist", class_split="novel", max_train_examples=500,
                                    max_eval_examples=100))
    assert data.num_classes == 5
    assert data.class_names == ("Pullover", "Coat", "Shirt", "Bag", "Ankle boot")
    assert set(np.unique(data.train.labels)) == set(range(5))
    np.testing.assert_array_equal(data.class_split["base"], [0, 1, 7])
    assert len(data.all_images) == 70000  # original labels, train and test files together
    assert data.all_class_names[3] == "Dress"


def test_class_split_errors_name_the_field(tmp_path):
    with pytest.raises(DataError, match="needs a split file"):
        load_dataset(data_config(name="fashion_mnist", class_split="base", class_split_file=str(tmp_path / "x.json")))
    bad = tmp_path / "split.json"
    bad.write_text('{"base": ["Trouser"], "validation": ["Dress"], "novel": ["Bag", "Jacket"]}')
    with pytest.raises(DataError, match="unknown group 'Jacket'"):
        load_dataset(data_config(name="fashion_mnist", class_split="base", class_split_file=str(bad)))
