"""tf.data pipelines: augmentation, batching, and a training stream that is a pure function of
(seed, epoch).

The training order and every random crop/flip are drawn from stateless RNGs keyed by
``(seed, epoch, position)``, so a run resumed at epoch ``e`` sees exactly the batches an
uninterrupted run would have seen. Images leave the pipeline as float32 on the 0..255 scale;
normalisation lives inside the model so that exported SavedModels take raw uint8 images.
"""
import tensorflow as tf

from tfkd.data.sources import ArraySplit, ClassificationData, StreamSplit
from tfkd.errors import ConfigError

AUGMENTATIONS = ("none", "crop", "crop_flip", "rrc", "rrc_flip")
AUTOTUNE = tf.data.AUTOTUNE


def resolve_augment(name, data: ClassificationData):
    """'auto' -> the standard augmentation for the image size (and flips only where they keep labels)."""
    if name == "auto":
        if data.image_shape[0] >= 128:
            return "rrc_flip" if data.flip_ok else "rrc"
        return "crop_flip" if data.flip_ok else "crop"
    if name not in AUGMENTATIONS:
        raise ConfigError(f"config.data.augment={name!r}; expected 'auto' or one of {AUGMENTATIONS}")
    return name


def _pad_crop(image, seed, pad):
    h, w = image.shape[0], image.shape[1]
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    return tf.image.stateless_random_crop(padded, [h, w, image.shape[2]], seed=seed)


def _random_resized_crop(image, seed, size, channels):
    """Inception-style crop: 8%-100% of the area, aspect 3/4..4/3, resized to ``size``."""
    begin, extent, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=seed,
        min_object_covered=0.0,
        aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(0.08, 1.0),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    crop = tf.slice(image, begin, extent)
    crop = tf.image.resize(tf.cast(crop, tf.float32), [size, size], method="bilinear")
    crop.set_shape([size, size, channels])
    return crop


def _center_crop(image, size, channels, crop_fraction=0.875):
    """Resize the shorter side to size / 0.875, then take the central size x size crop."""
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = (size / crop_fraction) / tf.reduce_min(shape)
    new = tf.cast(tf.round(shape * scale), tf.int32)
    image = tf.image.resize(tf.cast(image, tf.float32), new, method="bilinear")
    top = (new[0] - size) // 2
    left = (new[1] - size) // 2
    image = image[top: top + size, left: left + size]
    image.set_shape([size, size, channels])
    return image


def augment_one(image, seed, augment, image_shape):
    """One example: uint8 image -> float32 (H, W, C) on the 0..255 scale, randomness from ``seed``."""
    size, channels = image_shape[0], image_shape[2]
    seeds = tf.random.experimental.stateless_split(seed, num=2)
    if augment in ("rrc", "rrc_flip"):
        image = _random_resized_crop(image, seeds[0], size, channels)
    else:
        image = tf.cast(image, tf.float32)
        if image.shape[0] != size:  # streamed images of varying size
            image = _center_crop(image, size, channels)
        if augment in ("crop", "crop_flip"):
            image = _pad_crop(image, seeds[0], pad=4)
    if augment in ("crop_flip", "rrc_flip"):
        image = tf.image.stateless_random_flip_left_right(image, seeds[1])
    return image


def train_dataset(data: ClassificationData, *, batch_size, seed, augment="auto", initial_epoch=0,
                  end_epoch=None, meta_split=False, shuffle_buffer=10_000):
    """Stream of augmented training batches for epochs ``initial_epoch .. end_epoch - 1``
    (``end_epoch=None``: endless).

    Use with ``fit(steps_per_epoch=steps_per_epoch(...))``; incomplete last batches are dropped so
    shapes are static (needed by XLA and for equal per-replica batches).

    With ``meta_split`` (MetaDistiller, Algorithm 1) each epoch also splits the training set in two
    random halves D_train / D_test (keyed by ``(seed, epoch)``) and every element becomes
    ``{"main": (x, y), "meta_train": (x, y), "meta_test": (x, y)}``: a batch of the full data for the
    main update plus one batch from each half for the meta step.
    """
    augment = resolve_augment(augment, data)
    split = data.train
    shape = data.image_shape
    steps = steps_per_epoch(data, batch_size)
    seed = tf.constant(int(seed), tf.int64)
    last = 2**62 if end_epoch is None else int(end_epoch)

    if isinstance(split, ArraySplit):
        images = tf.constant(split.images)
        labels = tf.constant(split.labels)
        n = len(split)
        count = steps * batch_size

        def stream(order, epoch, stream_id):
            def example(position, index):
                key = tf.stack([seed + 1_000_003 * stream_id, epoch * n + position])
                return augment_one(tf.gather(images, index), key, augment, shape), tf.gather(labels, index)

            return tf.data.Dataset.from_tensor_slices(order).enumerate().map(
                example, num_parallel_calls=AUTOTUNE, deterministic=True)

        def shuffled(indices, epoch, salt):
            key = tf.stack([seed + salt, epoch])
            return tf.random.experimental.stateless_shuffle(indices, seed=key)

        def one_epoch(epoch):
            order = shuffled(tf.range(n, dtype=tf.int64), epoch, 0)[:count]
            main = stream(order, epoch, 0)
            if not meta_split:
                return main
            halves = shuffled(tf.range(n, dtype=tf.int64), epoch, 1)
            d_train, d_test = halves[: n // 2], halves[n // 2:]

            def cycle(half, salt):  # each half holds n/2 examples but must fill a whole epoch
                reps = -(-count // (n // 2)) + 1
                return tf.concat([shuffled(half, epoch, salt + r) for r in range(reps)], 0)[:count]

            meta_train = stream(cycle(d_train, 100), epoch, 1)
            meta_test = stream(cycle(d_test, 200), epoch, 2)
            return tf.data.Dataset.zip(main, meta_train, meta_test)

        ds = tf.data.Dataset.range(initial_epoch, last).flat_map(one_epoch)
        if meta_split:
            ds = ds.batch(batch_size, drop_remainder=True).map(
                lambda main, a, b: {"main": main, "meta_train": a, "meta_test": b})
            return ds.prefetch(AUTOTUNE)
    elif isinstance(split, StreamSplit):
        if meta_split:
            raise ConfigError("MetaDistiller's D_train/D_test split needs an in-memory dataset "
                              "(config.data.in_memory=True)")
        # Streams cannot be indexed: shuffle with a buffer, seeded by the starting epoch. Resume
        # is exact only for in-memory data (documented in the README).
        stream_ds = split.dataset.shuffle(shuffle_buffer, seed=int(seed) + 7919 * initial_epoch,
                                          reshuffle_each_iteration=True).repeat()

        def example(position, ex):
            image, label = ex
            return augment_one(image, tf.stack([seed, position + initial_epoch * 2**32]), augment, shape), label

        ds = stream_ds.enumerate().map(example, num_parallel_calls=AUTOTUNE, deterministic=True)
        if end_epoch is not None:
            ds = ds.take((int(end_epoch) - initial_epoch) * steps * batch_size)
    else:
        raise TypeError(f"unsupported split type {type(split)}")
    return ds.batch(batch_size, drop_remainder=True).prefetch(AUTOTUNE)


def steps_per_epoch(data: ClassificationData, batch_size):
    steps = len(data.train) // batch_size
    if steps == 0:
        raise ConfigError(
            f"config.train.batch_size={batch_size} is larger than the training split ({len(data.train)} examples)")
    return steps


def eval_dataset(data: ClassificationData, split_name, *, batch_size):
    """Un-augmented batches of one split ('train', 'val' or 'test'), in file order."""
    split = getattr(data, split_name)
    shape = data.image_shape
    if isinstance(split, ArraySplit):
        ds = tf.data.Dataset.from_tensor_slices((split.images, split.labels))
    else:
        ds = split.dataset

    def prepare(image, label):
        image = tf.cast(image, tf.float32)
        if image.shape[0] != shape[0]:
            image = _center_crop(image, shape[0], shape[2])
        return image, label

    return ds.map(prepare, num_parallel_calls=AUTOTUNE).batch(batch_size).prefetch(AUTOTUNE)
