"""The run folder (``--workdir``): its layout, provenance files, checkpoints, snapshots, history, and
rebuilding a run's network or few-shot method from it. Both training drivers, bin/export,
bin/extract_features, bin/evaluate and teachers read and write run folders only through here.

Layer: above methods, models and config; below export, teachers, extract and the drivers (train,
train_fewshot, tuning), which it never imports.

Layout::

    config.json          resolved config (the run refuses to continue with a different one)
    run_info.json        seed, git revision, command, versions, devices -- one entry per start
    network.json         how to rebuild the network without loading data (for bin/export)
    checkpoints/epoch_NNNN/{model.weights.h5,network.weights.h5,state.json}   last ``keep_checkpoints``
                         epochs (model = method + network + optimizer; network = what exports need)
    checkpoints/best/    the same files, of the best epoch on the validation metric
    snapshots/k_NNN/     progressive weakening: the model when k_train first reached NNN
    members/member_i/    ensembles: one run folder per member
    logs/                TensorBoard (train/, validation/)
    history.csv          one row per epoch (rewritten atomically from the checkpoint state)
    evaluation.json      few-shot runs: every evaluation protocol
    export/              SavedModel of the best checkpoint (inference path only)
    metrics.json         final validation and test metrics; its presence marks a finished run

Every file is written atomically (tfkd.io); killing the process at any point leaves the last
completed epoch intact, and re-running the same command resumes from it.
"""
import csv
import io as _stdio
import json
import os
import shutil

import keras
import ml_collections
import numpy as np
import tensorflow as tf

from tfkd import io
from tfkd.config import config_json
from tfkd.distribute import is_chief
from tfkd.errors import ConfigError, WorkdirError
from tfkd.methods import build_fewshot_method, build_method, build_optimizer
from tfkd.models import build_backbone
from tfkd.registry import METHODS

CONFIG = "config.json"
RUN_INFO = "run_info.json"
NETWORK = "network.json"
CHECKPOINTS = "checkpoints"
BEST = "best"
WEIGHTS = "model.weights.h5"
NETWORK_WEIGHTS = "network.weights.h5"  # the network alone, for export / feature extraction / teachers
STATE = "state.json"
SNAPSHOTS = "snapshots"
HISTORY = "history.csv"
METRICS = "metrics.json"
EVALUATION = "evaluation.json"
EXPORT = "export"
LOGS = "logs"
# Metadata an export carries beside its SavedModel (method, config, class names, ...).
METADATA_FILE = os.path.join("assets.extra", "tfkd.json")


def best_checkpoint(workdir):
    return os.path.join(workdir, CHECKPOINTS, BEST)


def export_dir(workdir):
    return os.path.join(workdir, EXPORT)


def is_finished(workdir):
    return os.path.exists(os.path.join(workdir, METRICS))


def write_metrics(workdir, metrics):
    """metrics.json, written last: it marks the run finished."""
    io.write_json_atomic(os.path.join(workdir, METRICS), metrics)


def read_config(workdir):
    """The run's resolved config (config.json) as a ConfigDict."""
    path = os.path.join(workdir, CONFIG)
    if not os.path.exists(path):
        raise WorkdirError(f"--workdir={workdir} has no {CONFIG}: not a tfkd run folder")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def read_network_info(workdir):
    path = os.path.join(workdir, NETWORK)
    if not os.path.exists(path):
        raise WorkdirError(f"--workdir={workdir} has no {NETWORK}: not a tfkd run folder")
    with open(path) as f:
        return json.load(f)


def load_metadata(export_path):
    """The metadata (assets.extra/tfkd.json) of a SavedModel written by tfkd.export."""
    with open(os.path.join(export_path, METADATA_FILE)) as f:
        return json.load(f)


# ---------------------------------------------------------------------- starting a run


def prepare_workdir(workdir, config, overwrite=False, may_contain=()):
    """Returns True when resuming. Never silently overwrites a finished or different run.
    ``may_contain``: entries a new run's folder may already hold (an ensemble's members/)."""
    io.check_output_folder(workdir, "--workdir")  # a file or a read-only folder fails now, not at the first write
    cfg_path = os.path.join(workdir, CONFIG)
    if is_finished(workdir) and not overwrite:
        raise WorkdirError(f"--workdir={workdir} holds a finished run ({METRICS}); "
                           f"use a new --workdir or pass --overwrite to discard it")
    if overwrite and os.path.exists(workdir):
        shutil.rmtree(workdir)
    if os.path.exists(cfg_path):
        with open(cfg_path) as f:
            old = json.load(f)
        new = config_json(config)
        if old != new:
            diffs = _diff(old, new)
            raise WorkdirError(f"--workdir={workdir} was started with a different config "
                               f"({'; '.join(diffs[:5])}); use a new --workdir, or --overwrite to discard it")
        return True
    if os.path.isdir(workdir) and set(os.listdir(workdir)) - set(may_contain):
        raise WorkdirError(f"--workdir={workdir} exists, is not empty and holds no tfkd run ({CONFIG})")
    return False


def _diff(old, new, prefix=""):
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def write_run_files(workdir, config, network_info, start_info):
    """config.json, network.json (how to rebuild the model) and one more run_info.json entry
    (seed, git revision, ``start_info``); on the chief only."""
    if not is_chief():
        return
    os.makedirs(workdir, exist_ok=True)
    io.write_json_atomic(os.path.join(workdir, CONFIG), config_json(config))
    io.write_json_atomic(os.path.join(workdir, NETWORK), network_info)
    info_path = os.path.join(workdir, RUN_INFO)
    starts = []
    if os.path.exists(info_path):
        with open(info_path) as f:
            starts = json.load(f)
    starts.append(io.run_info(config.seed, start_info))
    io.write_json_atomic(info_path, starts)


# ---------------------------------------------------------------------- checkpoints


def latest_checkpoint(workdir):
    root = os.path.join(workdir, CHECKPOINTS)
    if not os.path.isdir(root):
        return None
    epochs = sorted(d for d in os.listdir(root) if d.startswith("epoch_") and
                    os.path.exists(os.path.join(root, d, STATE)))
    return os.path.join(root, epochs[-1]) if epochs else None


def read_state(checkpoint_dir):
    with open(os.path.join(checkpoint_dir, STATE)) as f:
        return json.load(f)


def resolve_checkpoint(workdir, checkpoint):
    """'best', 'latest' or a checkpoint folder -> the folder holding model.weights.h5."""
    if checkpoint == "best":
        ckpt = best_checkpoint(workdir)
    elif checkpoint == "latest":
        ckpt = latest_checkpoint(workdir)
    else:
        ckpt = checkpoint
    if not ckpt or not os.path.exists(os.path.join(ckpt, WEIGHTS)):
        raise WorkdirError(f"--checkpoint={checkpoint}: no {WEIGHTS} found in {ckpt or workdir}")
    return ckpt


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves weights + optimizer state each epoch, tracks the best validation epoch, writes the
    history; all atomically, and only on the chief."""

    def __init__(self, workdir, monitor, keep, state):
        super().__init__()
        self.workdir, self.monitor, self.keep = workdir, monitor, keep
        self.history = list(state.get("history", []))
        self.best_value = state.get("best_value", -np.inf)
        self.best_epoch = state.get("best_epoch", 0)

    def on_epoch_end(self, epoch, logs=None):
        logs = {k: float(v) for k, v in (logs or {}).items()}
        if self.monitor not in logs:
            raise ConfigError(f"config.train.select_metric={self.monitor!r} is not among the logged "
                              f"metrics {sorted(logs)}")
        done = epoch + 1
        self.history = [h for h in self.history if h["epoch"] < done] + [{"epoch": done, **logs}]
        improved = logs[self.monitor] > self.best_value
        if improved:
            self.best_value, self.best_epoch = logs[self.monitor], done
        state = {"epoch": done, "best_epoch": self.best_epoch, "best_value": self.best_value,
                 "monitor": self.monitor, "history": self.history}
        if not is_chief():
            return
        root = os.path.join(self.workdir, CHECKPOINTS)
        with io.atomic_directory(os.path.join(root, f"epoch_{done:04d}")) as epoch_tmp:
            self.model.save_weights(os.path.join(epoch_tmp, WEIGHTS))
            network = getattr(self.model, "network", None)
            if network is not None:
                network.save_weights(os.path.join(epoch_tmp, NETWORK_WEIGHTS))
            io.write_json_atomic(os.path.join(epoch_tmp, STATE), state)
            if improved:  # best lands first: if killed before the epoch folder, the epoch re-runs
                with io.atomic_directory(os.path.join(root, BEST)) as best_tmp:
                    for name in (WEIGHTS, NETWORK_WEIGHTS):
                        if os.path.exists(os.path.join(epoch_tmp, name)):
                            shutil.copy2(os.path.join(epoch_tmp, name), os.path.join(best_tmp, name))
                    io.write_json_atomic(os.path.join(best_tmp, STATE), state)
        self._write_history()
        old = sorted(d for d in os.listdir(root) if d.startswith("epoch_"))[:-self.keep]
        for d in old:
            shutil.rmtree(os.path.join(root, d), ignore_errors=True)

    def _write_history(self):
        keys = sorted({k for h in self.history for k in h} - {"epoch"})
        buf = _stdio.StringIO()
        writer = csv.DictWriter(buf, fieldnames=["epoch"] + keys)
        writer.writeheader()
        writer.writerows(self.history)
        io.write_text_atomic(os.path.join(self.workdir, HISTORY), buf.getvalue())


class LearningRateLogger(keras.callbacks.Callback):
    """Adds the current learning rate to the epoch logs (TensorBoard, history.csv)."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


# ---------------------------------------------------------------------- snapshots


class KSnapshots(keras.callbacks.Callback):
    """Progressive distillation (weaken): saves the model once when k_train first takes each value
    of ``save_at_k`` (paper: 16, 8, 4, 2, 1; the method's ``snapshot_at_k()``); testing at k shots
    uses the snapshot with the largest saved k_train <= k. Written atomically; existing snapshots
    are kept on resume."""

    def __init__(self, workdir, save_at_k):
        super().__init__()
        self.root = os.path.join(workdir, SNAPSHOTS)
        self.pending = sorted(set(int(k) for k in save_at_k), reverse=True)

    def on_train_batch_end(self, batch, logs=None):
        k_train = int(keras.ops.convert_to_numpy(self.model.k_train))
        for k in [k for k in self.pending if k_train <= k]:
            self.pending.remove(k)
            path = os.path.join(self.root, f"k_{k:03d}")
            if os.path.exists(path) or not is_chief():
                continue
            step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
            with io.atomic_directory(path) as tmp:
                self.model.save_weights(os.path.join(tmp, WEIGHTS))
                io.write_json_atomic(os.path.join(tmp, STATE), {"k_train": k_train, "saved_for_k": k, "step": step})


def snapshot_dirs(workdir):
    """{k_train: folder} of the run's saved snapshots."""
    root = os.path.join(workdir, SNAPSHOTS)
    if not os.path.isdir(root):
        return {}
    return {int(d[2:]): os.path.join(root, d) for d in sorted(os.listdir(root))
            if d.startswith("k_") and os.path.exists(os.path.join(root, d, WEIGHTS))}


def snapshot_for_shot(workdir, k):
    """The snapshot folder whose k_train is the largest saved value <= k, or None."""
    usable = [s for s in snapshot_dirs(workdir) if s <= k]
    return snapshot_dirs(workdir)[max(usable)] if usable else None


# ---------------------------------------------------------------------- rebuilding a run's model


def restore_network(workdir, checkpoint="best", load_teacher=None):
    """Rebuilds a run's network from its workdir (no data needed) and loads a checkpoint:
    'best', 'latest', or the path of a checkpoint folder. Returns (network, config, class_names,
    checkpoint folder).

    Checkpoints hold the network alone (network.weights.h5). Older ones hold only the whole method;
    rebuilding a teacher-student method for them needs its teacher: ``load_teacher(path, field)``
    (tfkd.teachers.Teacher)."""
    config = read_config(workdir)
    net = read_network_info(workdir)
    ckpt = resolve_checkpoint(workdir, checkpoint)
    kwargs = dict(net["kwargs"])
    kwargs["input_shape"] = tuple(kwargs["input_shape"])
    network = build_backbone(net["arch"], **kwargs)
    network.ensure_built()
    network_weights = os.path.join(ckpt, NETWORK_WEIGHTS)
    if os.path.exists(network_weights):  # the network alone: no method (nor teacher) to rebuild
        network.load_weights(network_weights)
        return network, config, net.get("class_names"), ckpt
    extra = {}
    if getattr(METHODS.get(config.method), "needs_teacher", False):
        field = f"config.{config.method}.teacher"
        if load_teacher is None:
            raise WorkdirError(f"{ckpt} has no {NETWORK_WEIGHTS}; rebuilding its {config.method} model needs the "
                               f"teacher ({field}): use tfkd.export.restore_network")
        extra["teacher"] = load_teacher(config[config.method].teacher, field)
    method = build_method(config.method, network, config[config.method], weight_decay=0.0, **extra)
    method(tf.zeros((1,) + tuple(network.image_shape)), training=False)
    method.compile(optimizer=build_optimizer(config.train, steps=1))
    method.build_state()
    method.load_weights(os.path.join(ckpt, WEIGHTS))
    return network, config, net.get("class_names"), ckpt


def restore_fewshot_method(workdir, checkpoint="best"):
    """(method, config) of a finished or running few-shot run, with ``checkpoint`` loaded."""
    config = read_config(workdir)
    if config.method not in METHODS or METHODS.get(config.method).task != "fewshot":
        raise WorkdirError(f"--workdir={workdir} holds a {config.method!r} run, not a few-shot method "
                           f"(expected one of {[m for m in METHODS.names() if METHODS.get(m).task == 'fewshot']})")
    feature_dim = read_network_info(workdir)["feature_dim"]
    method = build_fewshot_method(config, feature_dim, tf.distribute.get_strategy(), steps=1)
    if config[config.method].get("ensemble_size", 1) > 1:
        return method, config  # an ensemble's parent: the members hold the weights
    method.load_weights(os.path.join(resolve_checkpoint(workdir, checkpoint), WEIGHTS))
    return method, config
