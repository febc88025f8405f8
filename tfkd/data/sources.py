"""Image-classification data sources, by name.

Local sources (registered in ``DATASETS``) read files directly; any other name is treated as a
TFDS dataset. Every source returns a :class:`ClassificationData` with train / val / test splits.
The validation split is always carved from the training data, deterministically (``split_seed``),
so model selection never looks at test data.
"""
import dataclasses
import fractions
import gzip
import math
import os
import zlib
from typing import Optional, Tuple, Union

import numpy as np

from tfkd.errors import DataError
from tfkd.registry import DATASETS


@dataclasses.dataclass
class ArraySplit:
    """An in-memory split: uint8 images (N, H, W, C) and int32 labels (N,)."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self):
        return len(self.labels)


@dataclasses.dataclass
class StreamSplit:
    """A split too large for memory: a tf.data.Dataset of (uint8 image of any size, label)."""

    dataset: object
    num_examples: int

    def __len__(self):
        return self.num_examples


Split = Union[ArraySplit, StreamSplit]


@dataclasses.dataclass
class ClassificationData:
    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    image_shape: Tuple[int, int, int]  # model input (H, W, C)
    mean: Tuple[float, ...]  # per channel, on the 0..255 scale
    std: Tuple[float, ...]
    class_names: Optional[Tuple[str, ...]] = None
    flip_ok: bool = True  # horizontal flips keep the label (False for glyphs: letters)
    # Few-shot (config.data.class_split): the class ids (original numbering) of every split, and
    # every image of the dataset with its original label (train and test files together), so
    # validation / novel classes can be embedded by the same run.
    class_split: Optional[dict] = None
    all_images: Optional[ArraySplit] = None
    class_groups: Optional[np.ndarray] = None  # (original classes,) e.g. the alphabet of each glyph
    all_class_names: Optional[Tuple[str, ...]] = None  # (original classes,)


# ---------------------------------------------------------------- helpers


def stratified_holdout(labels, fraction, seed):
    """Indices (keep, holdout): ``fraction`` of every class held out, chosen by ``seed``."""
    if not 0.0 <= fraction < 1.0:
        raise DataError(f"config.data.val_fraction must be in [0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    keep, hold = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        n_hold = int(round(fraction * len(idx)))
        if fraction > 0 and len(idx) > 1:
            n_hold = max(1, min(n_hold, len(idx) - 1))
        hold.append(idx[:n_hold])
        keep.append(idx[n_hold:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(hold))


def subsample(split: ArraySplit, max_examples, seed):
    """A deterministic, roughly class-balanced subset (for tests and quick runs)."""
    if not max_examples or max_examples >= len(split):
        return split
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(split))
    # Round-robin over classes so small subsets still contain every class.
    labels = split.labels[order]
    rank = np.zeros(len(order), np.int64)
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        rank[where] = np.arange(len(where))
    chosen = np.sort(order[np.lexsort((labels, rank))[:max_examples]])
    return ArraySplit(split.images[chosen], split.labels[chosen])


def channel_stats(images, chunk=4096):
    """Per-channel mean and std of NHWC images (std floored at 1e-3).

    uint8 images are summed exactly in integers, a chunk at a time: a float64 copy of the
    Fashion-MNIST training set is 376 MB plus a second one for the std, which took 3-8 s of every
    run's start (and of every test that trains) on a 2-core VM; the integer sums take ~0.1 s and
    give the same float64 values, rounded once from the exact ones."""
    images = np.asarray(images)
    channels = images.shape[-1]
    if images.dtype != np.uint8:
        x = images.astype(np.float64)
        mean, std = x.mean(axis=(0, 1, 2)), x.std(axis=(0, 1, 2))
        return tuple(float(v) for v in mean), tuple(float(max(v, 1e-3)) for v in std)
    total = np.zeros(channels, np.int64)
    squares = np.zeros(channels, np.int64)
    for start in range(0, len(images), chunk):
        part = images[start:start + chunk].reshape(-1, channels)
        total += part.sum(axis=0, dtype=np.int64)
        wide = part.astype(np.int32)
        squares += (wide * wide).sum(axis=0, dtype=np.int64)
    n = images.size // channels
    mean = tuple(float(fractions.Fraction(int(s), n)) for s in total)
    # Population variance (numpy's std default): (n * sum(x^2) - sum(x)^2) / n^2, exact.
    std = tuple(math.sqrt(fractions.Fraction(n * int(q) - int(s) ** 2, n * n)) for s, q in zip(total, squares))
    return mean, tuple(float(max(v, 1e-3)) for v in std)


def check_labels(labels, num_classes, where, what="class ids"):
    """Every label must index the dataset's classes: one stray label would otherwise silently
    change the number of classes (the model's head size) or wrap around as a negative index."""
    labels = np.asarray(labels)
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(bad):
        raise DataError(f"{where}: label {labels[bad[0]]} (row {bad[0]}; {len(bad)} bad label(s)) is outside "
                        f"[0, {num_classes}); expected {what} 0..{num_classes - 1}")


def _as_nhwc(images, where):
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise DataError(f"{where}: expected images of shape (N, H, W) or (N, H, W, C), got {images.shape}")
    if images.dtype != np.uint8:
        raise DataError(f"{where}: expected uint8 images, got dtype {images.dtype}")
    return images


def default_split_file(dataset_name):
    """configs/splits/<dataset>.json (glyphs: by alphabet; fashion_mnist: by class name)."""
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    name = "glyphs_alphabets" if dataset_name == "glyphs" else dataset_name
    return os.path.join(repo, "configs", "splits", f"{name}.json")


def class_keys(num_classes, class_names=None, class_groups=None):
    """What a split file lists for each class: its group (glyphs: alphabet) when the dataset has
    groups, else its class name, else its class id."""
    if class_groups is not None:
        return np.asarray(class_groups).astype(str)
    if class_names is not None:
        return np.asarray(class_names).astype(str)
    return np.arange(num_classes).astype(str)


def apply_class_split(train_full, test, num_classes, cfg, dataset_name, class_names=None, class_groups=None):
    """Keeps the classes of split ``cfg.class_split``, relabelled 0..n-1 (original ids kept in
    ClassificationData.class_split)."""
    from tfkd.data.episodes import load_class_split

    path = cfg.class_split_file or default_split_file(dataset_name)
    if not os.path.exists(path):
        raise DataError(f"config.data.class_split={cfg.class_split!r} needs a split file for {dataset_name!r}: "
                        f"{path} does not exist (set config.data.class_split_file)")
    split = load_class_split(path, class_keys(num_classes, class_names, class_groups))
    if cfg.class_split not in split:
        raise DataError(f"config.data.class_split={cfg.class_split!r}: expected one of {sorted(split)}")
    keep = split[cfg.class_split]
    relabel = -np.ones(int(num_classes), np.int32)
    relabel[keep] = np.arange(len(keep))

    def select(part):
        chosen = relabel[part.labels] >= 0
        return ArraySplit(part.images[chosen], relabel[part.labels[chosen]])

    names = tuple(str(n) for n in np.asarray(class_names)[keep]) if class_names is not None else None
    return select(train_full), select(test), len(keep), names, split


def _finish(name, train_full, test, num_classes, cfg, flip_ok=True, class_names=None, mean=None, std=None,
            class_groups=None):
    """Apply the class split, carve validation from train, apply subset limits, compute
    normalisation from train."""
    split, all_images = None, None
    all_names = tuple(str(n) for n in class_names) if class_names is not None else None
    if cfg.class_split:
        all_images = ArraySplit(np.concatenate([train_full.images, test.images]),
                                np.concatenate([train_full.labels, test.labels]))
        train_full, test, num_classes, class_names, split = apply_class_split(
            train_full, test, num_classes, cfg, name, class_names, class_groups)
    keep, hold = stratified_holdout(train_full.labels, cfg.val_fraction, cfg.split_seed)
    train = ArraySplit(train_full.images[keep], train_full.labels[keep])
    val = ArraySplit(train_full.images[hold], train_full.labels[hold])
    if mean is None:
        mean, std = channel_stats(train.images)  # before subsetting: stable statistics
    train = subsample(train, cfg.max_train_examples, cfg.split_seed)
    val = subsample(val, cfg.max_eval_examples, cfg.split_seed + 1)
    test = subsample(test, cfg.max_eval_examples, cfg.split_seed + 2)
    return ClassificationData(
        name=name,
        train=train,
        val=val,
        test=test,
        num_classes=int(num_classes),
        image_shape=tuple(int(s) for s in train.images.shape[1:]),
        mean=tuple(mean),
        std=tuple(std),
        class_names=tuple(class_names) if class_names is not None else None,
        flip_ok=flip_ok,
        class_split=split,
        all_images=all_images,
        class_groups=np.asarray(class_groups).astype(str) if class_groups is not None else None,
        all_class_names=all_names,
    )


# ---------------------------------------------------------------- Fashion-MNIST (IDX files)

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)


def read_idx(path):
    """Reads an IDX file (optionally gzipped): magic 0x0801 (labels) or 0x0803 (images)."""
    if not os.path.exists(path):
        raise DataError(
            f"missing data file {path}; for Fashion-MNIST run `apt-get install -y dataset-fashion-mnist` "
            f"or set --config.data.data_dir to a folder with the four IDX .gz files"
        )
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read IDX file {path}: {e}") from None
    if len(raw) < 8 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an IDX file of uint8 data (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims)) if dims else 0
    if len(raw) - header != expected:
        raise DataError(f"{path}: header says shape {dims} ({expected} bytes) but holds {len(raw) - header}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


@DATASETS.register("fashion_mnist")
def load_fashion_mnist(cfg):
    root = cfg.data_dir or FASHION_MNIST_DIR
    def pair(prefix):
        images = read_idx(os.path.join(root, f"{prefix}-images-idx3-ubyte.gz"))
        labels_file = os.path.join(root, f"{prefix}-labels-idx1-ubyte.gz")
        labels = read_idx(labels_file).astype(np.int32)
        check_labels(labels, len(FASHION_MNIST_CLASSES), labels_file, "Fashion-MNIST classes")
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f"{root}/{prefix}-*: expected (N, 28, 28) images and N labels, "
                            f"got {images.shape} and {labels.shape}")
        return ArraySplit(_as_nhwc(images, root), labels)
    train, test = pair("train"), pair("t10k")
    return _finish("fashion_mnist", train, test, 10, cfg, flip_ok=True, class_names=FASHION_MNIST_CLASSES)


# ---------------------------------------------------------------- glyphs (.npz)

GLYPHS_FILE = "glyphs_background.npz"


def default_glyphs_path():
    """$TFKD_GLYPHS, else shared/data/ inside or beside the checkout, else the current folder."""
    if os.environ.get("TFKD_GLYPHS"):
        return os.environ["TFKD_GLYPHS"]
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for candidate in (os.path.join(repo, "shared", "data", GLYPHS_FILE),
                      os.path.join(repo, "..", "shared", "data", GLYPHS_FILE)):
        if os.path.exists(candidate):
            return os.path.abspath(candidate)
    return os.path.abspath(GLYPHS_FILE)


def read_npz(path, required):
    if not os.path.exists(path):
        hint = " or the TFKD_GLYPHS environment variable" if os.path.basename(path) == GLYPHS_FILE else ""
        raise DataError(f"missing data file {path} (set --config.data.data_dir{hint} to the .npz file)")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as e:  # zipfile/pickle errors carry no path
        raise DataError(f"cannot read {path} as an .npz archive: {e}") from None
    missing = [k for k in required if k not in data.files]
    if missing:
        raise DataError(f"{path}: missing array(s) {missing}; expected {list(required)} (found {data.files})")
    return data


def font_family_split(labels, groups, test_fraction=0.2):
    """Per class, sends whole font families (``groups``) to test so test fonts are unseen designs.

    Families are ordered by a stable hash, so the split does not depend on file order or on
    Python's hash seed. Every class with at least two families keeps one in train and one in test.
    """
    is_test = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        families = sorted(set(groups[idx]), key=lambda g: (zlib.crc32(str(g).encode()), str(g)))
        if len(families) < 2:
            continue
        n_test = min(len(families) - 1, max(1, int(round(test_fraction * len(families)))))
        test_families = set(families[:n_test])
        is_test[idx] = np.isin(groups[idx], list(test_families))
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


@DATASETS.register("glyphs")
def load_glyphs(cfg):
    path = os.path.abspath(cfg.data_dir or default_glyphs_path())
    data = read_npz(path, ("images", "labels"))
    images = _as_nhwc(data["images"], f"{path}['images']")
    labels = data["labels"]
    if labels.ndim != 1 or len(labels) != len(images) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}['labels']: expected {len(images)} integer labels, got {labels.shape} {labels.dtype}")
    labels = labels.astype(np.int32)
    names = data["class_names"] if "class_names" in data.files else None
    # Font families group the images for the train/test split (each image alone if absent).
    groups = data["font_families"] if "font_families" in data.files else np.arange(len(labels)).astype(str)
    alphabets = data["alphabets"] if "alphabets" in data.files else None
    if cfg.class_split and alphabets is None:
        raise DataError(f"{path}: config.data.class_split needs an 'alphabets' array (class -> group)")
    if names is not None:
        num_classes = len(names)
        check_labels(labels, num_classes, f"{path}['labels']", f"indices into its {num_classes} class_names")
    else:
        check_labels(labels, int(labels.max()) + 1, f"{path}['labels']")  # negative ids
        num_classes = int(labels.max()) + 1
    if alphabets is not None and alphabets.shape != (num_classes,):
        raise DataError(f"{path}['alphabets']: expected one group per class, shape ({num_classes},), "
                        f"got {alphabets.shape}")
    train_idx, test_idx = font_family_split(labels, groups)
    return _finish(
        "glyphs",
        ArraySplit(images[train_idx], labels[train_idx]),
        ArraySplit(images[test_idx], labels[test_idx]),
        num_classes,
        cfg,
        flip_ok=False,
        class_names=names,
        class_groups=alphabets,
    )


# ---------------------------------------------------------------- TFDS

# Normalisation for streamed datasets, where statistics cannot be computed up front.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def _tfds_builder(cfg):
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(cfg.name, data_dir=cfg.data_dir or None)
    except Exception as e:  # DatasetNotFoundError and friends
        local = [n for n in DATASETS.names() if n != "tfds"]
        raise DataError(f"config.data.name={cfg.name!r} is neither a local dataset "
                        f"({', '.join(local)}) nor a TFDS dataset: {e}") from None
    if not builder.is_prepared():
        if not cfg.allow_download:
            raise DataError(
                f"TFDS dataset {cfg.name!r} is not prepared in {builder.data_dir}. Prepare it first "
                f"(`tfds build {cfg.name} --data_dir=DIR`, or place the files there) or pass "
                f"--config.data.allow_download=True (needs internet; imagenet2012 needs its manual files)."
            )
        builder.download_and_prepare()
    return builder


def _tfds_keys(builder, name):
    features = builder.info.features
    image_key = "image" if "image" in features else None
    label_key = "label" if "label" in features else None
    if image_key is None or label_key is None:
        raise DataError(f"TFDS dataset {name!r} has features {list(features)}; expected 'image' and 'label'")
    return image_key, label_key


@DATASETS.register("tfds")
def load_tfds(cfg):
    """Any TFDS image-classification dataset with 'image' and 'label' features."""
    import tensorflow_datasets as tfds

    builder = _tfds_builder(cfg)
    image_key, label_key = _tfds_keys(builder, cfg.name)
    label_feature = builder.info.features[label_key]
    num_classes = getattr(label_feature, "num_classes", None)
    if not num_classes:
        raise DataError(f"TFDS dataset {cfg.name!r}: its {label_key!r} feature has no class count "
                        f"(not a ClassLabel); expected an image-classification dataset")
    names = tuple(label_feature.names) if getattr(label_feature, "names", None) else None
    test_split = cfg.test_split or ("test" if "test" in builder.info.splits else "validation")
    flip_ok = cfg.name not in ("mnist", "emnist", "omniglot", "kmnist")

    if cfg.in_memory:
        if None in builder.info.features[image_key].shape[:2]:
            raise DataError(f"TFDS dataset {cfg.name!r} has images of varying size and cannot be held in "
                            f"memory as one array; set --config.data.in_memory=False (streams them, "
                            f"center-cropped/resized to config.data.image_size)")

        def arrays(split):
            # Batched reads, not batch_size=-1: the latter needs split sizes in the metadata and
            # aborts the process without them.
            chunks = list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False).batch(4096)))
            if not chunks:
                raise DataError(f"TFDS dataset {cfg.name!r}: split {split!r} is empty")
            images = np.concatenate([c[image_key] for c in chunks])
            labels = np.concatenate([c[label_key] for c in chunks]).astype(np.int64)
            check_labels(labels, num_classes, f"TFDS dataset {cfg.name!r} split {split!r}",
                         f"ids of its {num_classes} classes (features['{label_key}'].num_classes)")
            labels = labels.astype(np.int32)
            return ArraySplit(_as_nhwc(images, f"tfds:{cfg.name}/{split}"), labels)
        return _finish(cfg.name, arrays(cfg.train_split), arrays(test_split), num_classes, cfg,
                       flip_ok=flip_ok, class_names=names)

    # Streaming (e.g. imagenet2012): validation is the tail of the train split, by TFDS slicing,
    # which is deterministic.
    if cfg.class_split:
        raise DataError(f"config.data.class_split={cfg.class_split!r} needs config.data.in_memory=True "
                        f"(streamed TFDS datasets are not class-split)")
    pct = int(round(100 * cfg.val_fraction))
    def stream(split):
        ds = builder.as_dataset(split=split, shuffle_files=False)
        ds = ds.map(lambda ex: (ex[image_key], checked_label(ex[label_key], num_classes, f"{cfg.name}/{split}")))
        n = builder.info.splits[split].num_examples
        return StreamSplit(ds, int(n))
    train_name = cfg.train_split if pct == 0 else f"{cfg.train_split}[:{100 - pct}%]"
    val_name = f"{cfg.train_split}[{100 - pct}%:]" if pct else test_split
    size = cfg.image_size or 224
    channels = builder.info.features[image_key].shape[-1] or 3
    mean = tuple(cfg.mean) if cfg.mean else IMAGENET_MEAN[:channels]
    std = tuple(cfg.std) if cfg.std else IMAGENET_STD[:channels]
    return ClassificationData(
        name=cfg.name, train=stream(train_name), val=stream(val_name), test=stream(test_split),
        num_classes=int(num_classes), image_shape=(size, size, int(channels)), mean=mean, std=std,
        class_names=names, flip_ok=flip_ok,
    )


def checked_label(label, num_classes, where):
    """A streamed label as int32, checked as it is read (a stream cannot be checked up front)."""
    import tensorflow as tf

    check = tf.debugging.assert_less(label, tf.cast(num_classes, label.dtype),
                                     message=f"TFDS {where}: a label is outside [0, {num_classes})")
    with tf.control_dependencies([check, tf.debugging.assert_non_negative(label)]):
        return tf.cast(label, tf.int32)


def load_dataset(cfg) -> ClassificationData:
    """Loads ``cfg.name`` (a ConfigDict like ``config.data``)."""
    loader = DATASETS.get(cfg.name) if cfg.name in DATASETS and cfg.name != "tfds" else load_tfds
    data = loader(cfg)
    if cfg.mean and isinstance(data.train, ArraySplit):
        data.mean, data.std = tuple(cfg.mean), tuple(cfg.std)
    for split_name in ("train", "val", "test"):
        split = getattr(data, split_name)
        if len(split) == 0:
            raise DataError(f"dataset {cfg.name!r}: the {split_name} split is empty "
                            f"(check config.data.val_fraction / max_*_examples)")
        if isinstance(split, ArraySplit):
            bad = (split.labels < 0) | (split.labels >= data.num_classes)
            if bad.any():
                raise DataError(f"dataset {cfg.name!r}: {split_name} labels outside [0, {data.num_classes})")
    return data
