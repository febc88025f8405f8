"""Datasets by name (local files and TFDS) and deterministic, resumable tf.data pipelines."""
from tfkd.data.sources import ArraySplit, ClassificationData, load_dataset, StreamSplit
from tfkd.data.pipeline import eval_dataset, resolve_augment, steps_per_epoch, train_dataset

__all__ = [
    "ArraySplit",
    "StreamSplit",
    "ClassificationData",
    "load_dataset",
    "train_dataset",
    "steps_per_epoch",
    "eval_dataset",
    "resolve_augment",
]
