"""tf.data pipelines: a training stream that is a pure function of (seed, epoch), augmentation, eval order."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tfkd.data.pipeline import (  # noqa: E402
    AUGMENTATIONS, eval_dataset, resolve_augment, steps_per_epoch, train_dataset)
from tfkd.data.sources import ArraySplit, ClassificationData  # noqa: E402
from tfkd.errors import ConfigError  # noqa: E402

N, BATCH = 64, 16
STEPS = N // BATCH


def make_data(n=N, shape=(28, 28, 1), flip_ok=True, num_classes=4, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n,) + shape, dtype=np.uint8)
    labels = (np.arange(n) % num_classes).astype(np.int32)
    val = ArraySplit(rng.integers(0, 256, (10,) + shape, dtype=np.uint8), np.arange(10, dtype=np.int32) % num_classes)
    test = ArraySplit(rng.integers(0, 256, (7,) + shape, dtype=np.uint8), np.arange(7, dtype=np.int32) % num_classes)
    return ClassificationData(
        name="tiny", train=ArraySplit(images, labels), val=val, test=test, num_classes=num_classes,
        image_shape=shape, mean=(127.0,) * shape[-1], std=(60.0,) * shape[-1], flip_ok=flip_ok)


@pytest.fixture(scope="module")
def data():
    return make_data()


def take(ds, n_batches, skip=0):
    xs, ys = [], []
    for x, y in ds.skip(skip).take(n_batches):
        xs.append(x.numpy())
        ys.append(y.numpy())
    return np.concatenate(xs), np.concatenate(ys)


def source_index(data, images):
    """Index into data.train of each (un-augmented) image; -1 where it matches none."""
    flat = data.train.images.reshape(len(data.train), -1).astype(np.float32)
    out = []
    for img in images.reshape(len(images), -1):
        hits = np.flatnonzero((flat == img).all(axis=1))
        out.append(hits[0] if len(hits) == 1 else -1)
    return np.array(out)


def test_resume_at_epoch_equals_uninterrupted_stream(data):
    full = train_dataset(data, batch_size=BATCH, seed=7, augment="crop_flip", initial_epoch=0)
    resumed = train_dataset(data, batch_size=BATCH, seed=7, augment="crop_flip", initial_epoch=2)
    x_full, y_full = take(full, STEPS + 1, skip=2 * STEPS)  # epoch 2 and the first batch of epoch 3
    x_res, y_res = take(resumed, STEPS + 1)
    assert x_full.shape == (BATCH * (STEPS + 1), 28, 28, 1)
    np.testing.assert_array_equal(x_res, x_full)
    np.testing.assert_array_equal(y_res, y_full)


def test_same_seed_same_stream_and_epochs_reshuffle(data):
    a = take(train_dataset(data, batch_size=BATCH, seed=3, augment="none"), 2 * STEPS)
    b = take(train_dataset(data, batch_size=BATCH, seed=3, augment="none"), 2 * STEPS)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    idx = source_index(data, a[0])
    epoch0, epoch1 = idx[:N], idx[N:]
    assert sorted(epoch0) == list(range(N)) and sorted(epoch1) == list(range(N))
    assert not np.array_equal(epoch0, epoch1)  # a fresh order each epoch


def test_different_seeds_give_different_order(data):
    x0, _ = take(train_dataset(data, batch_size=BATCH, seed=0, augment="none"), STEPS)
    x1, _ = take(train_dataset(data, batch_size=BATCH, seed=1, augment="none"), STEPS)
    i0, i1 = source_index(data, x0), source_index(data, x1)
    assert sorted(i0) == sorted(i1) == list(range(N))
    assert (i0 != i1).mean() > 0.5


def test_none_is_a_permutation_of_the_source(data):
    x, y = take(train_dataset(data, batch_size=BATCH, seed=5, augment="none"), STEPS)
    assert x.dtype == np.float32 and x.shape == (N, 28, 28, 1)
    assert y.dtype == np.int32
    idx = source_index(data, x)
    assert sorted(idx) == list(range(N))  # every source image exactly once
    np.testing.assert_array_equal(x, data.train.images[idx].astype(np.float32))
    np.testing.assert_array_equal(y, data.train.labels[idx])  # labels travel with their images
    assert not np.array_equal(idx, np.arange(N))  # shuffled


def test_drop_remainder_and_epoch_length():
    small = make_data(n=50)
    assert steps_per_epoch(small, BATCH) == 3
    x, _ = take(train_dataset(small, batch_size=BATCH, seed=0, augment="none"), 3)
    idx = source_index(small, x)
    assert len(set(idx.tolist())) == 48 and (idx >= 0).all()  # 48 distinct images, none repeated
    with pytest.raises(ConfigError, match="batch_size"):
        steps_per_epoch(small, 51)


def _matches_crop_or_flip(aug, src, pad=4):
    """Whether ``aug`` is a (pad-4, zero-padded) crop of ``src``, possibly flipped left-right."""
    h, w = src.shape[:2]
    padded = np.pad(src.astype(np.float32), [(pad, pad), (pad, pad), (0, 0)])
    for candidate in (aug, aug[:, ::-1]):
        for dy in range(2 * pad + 1):
            for dx in range(2 * pad + 1):
                if np.array_equal(padded[dy: dy + h, dx: dx + w], candidate):
                    return True
    return False


def test_crop_flip_augmentation(data):
    x_aug, y_aug = take(train_dataset(data, batch_size=BATCH, seed=11, augment="crop_flip"), STEPS)
    x_raw, y_raw = take(train_dataset(data, batch_size=BATCH, seed=11, augment="none"), STEPS)
    assert x_aug.shape == (N, 28, 28, 1) and x_aug.dtype == np.float32
    assert x_aug.min() >= 0.0 and x_aug.max() <= 255.0
    np.testing.assert_array_equal(x_aug, np.round(x_aug))  # no interpolation: still whole pixel values
    # The order does not depend on the augmentation, so x_raw tells which source each one came from.
    np.testing.assert_array_equal(y_aug, y_raw)
    assert (x_aug != x_raw).any(axis=(1, 2, 3)).mean() > 0.5  # it actually augments
    idx = source_index(data, x_raw)
    for a, i in zip(x_aug, idx):
        assert _matches_crop_or_flip(a, data.train.images[i])


def test_crop_without_flip_never_flips():
    # Left-right asymmetric images: a flip would not be a shifted copy.
    d = make_data(n=32, flip_ok=False)
    assert resolve_augment("auto", d) == "crop"
    x_aug, _ = take(train_dataset(d, batch_size=BATCH, seed=2, augment="auto"), 2)
    x_raw, _ = take(train_dataset(d, batch_size=BATCH, seed=2, augment="none"), 2)
    idx = source_index(d, x_raw)
    pad = 4
    for a, i in zip(x_aug, idx):
        padded = np.pad(d.train.images[i].astype(np.float32), [(pad, pad), (pad, pad), (0, 0)])
        assert any(np.array_equal(padded[dy: dy + 28, dx: dx + 28], a)
                   for dy in range(9) for dx in range(9))


def test_rrc_flip_keeps_shape_and_range():
    d = make_data(n=32, shape=(32, 32, 3))
    x, y = take(train_dataset(d, batch_size=BATCH, seed=0, augment="rrc_flip"), 2)
    assert x.shape == (32, 32, 32, 3) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 255.0
    assert sorted(y.tolist()) == sorted(d.train.labels.tolist())


def test_eval_dataset_is_the_split_in_order(data):
    batches = list(eval_dataset(data, "val", batch_size=4))
    assert [len(b[1]) for b in batches] == [4, 4, 2]  # the last partial batch is kept
    x = np.concatenate([b[0].numpy() for b in batches])
    y = np.concatenate([b[1].numpy() for b in batches])
    assert x.dtype == np.float32
    np.testing.assert_array_equal(x, data.val.images.astype(np.float32))
    np.testing.assert_array_equal(y, data.val.labels)

    x_train, y_train = take(eval_dataset(data, "train", batch_size=BATCH), STEPS)
    np.testing.assert_array_equal(x_train, data.train.images.astype(np.float32))
    np.testing.assert_array_equal(y_train, data.train.labels)


def test_resolve_augment():
    assert resolve_augment("auto", make_data(n=4, flip_ok=False)) == "crop"
    assert resolve_augment("auto", make_data(n=4, flip_ok=True)) == "crop_flip"
    big = make_data(n=2, shape=(224, 224, 3))
    assert resolve_augment("auto", big) == "rrc_flip"
    # Large images whose labels do not survive flips (letters) get crops only.
    assert resolve_augment("auto", make_data(n=2, shape=(224, 224, 3), flip_ok=False)) == "rrc"
    for name in AUGMENTATIONS:
        assert resolve_augment(name, big) == name
    with pytest.raises(ConfigError) as e:
        resolve_augment("mixup", big)
    assert "config.data.augment" in str(e.value) and "mixup" in str(e.value)
    with pytest.raises(ConfigError, match="config.data.augment"):
        train_dataset(make_data(n=32), batch_size=BATCH, seed=0, augment="cutout")
