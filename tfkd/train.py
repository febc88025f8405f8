"""Training driver behind ``bin/train``: workdir handling, resume, checkpoints, logs, evaluation,
export.

Workdir layout::

    config.json          resolved config (the run refuses to continue with a different one)
    run_info.json        seed, git revision, command, versions, devices -- one entry per start
    network.json         how to rebuild the network without loading data (for bin/export)
    checkpoints/epoch_NNNN/{model.weights.h5,network.weights.h5,state.json}   last ``keep_checkpoints``
                         epochs (model = method + network + optimizer; network = what exports need)
    checkpoints/best/{model.weights.h5,state.json}          best epoch on the validation metric
    logs/                TensorBoard (train/, validation/)
    history.csv          one row per epoch (rewritten atomically from the checkpoint state)
    export/              SavedModel of the best checkpoint (inference path only)
    metrics.json         final validation and test metrics; its presence marks a finished run

Every file is written atomically; killing the process at any point leaves the last completed
epoch intact, and re-running the same command resumes from it.
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

from tfkd import data as data_lib
from tfkd import export as export_lib
from tfkd import io
from tfkd.config import validate
from tfkd.distribute import barrier, get_strategy, is_chief
from tfkd.errors import ConfigError, WorkdirError
from tfkd.methods import build_method, resolve_method_config
from tfkd.models import build_backbone
from tfkd.registry import BACKBONES, METHODS

CHECKPOINTS = "checkpoints"
WEIGHTS = "model.weights.h5"
NETWORK_WEIGHTS = "network.weights.h5"  # the network alone, for export / feature extraction / teachers


# ---------------------------------------------------------------------- config


def resolve(config, method=None, seed=None):
    """Applies flag overrides (--method, --seed), validates, and returns a new resolved config."""
    config = ml_collections.ConfigDict(config.to_dict())  # an unlocked copy
    if method:
        config.method = method
    if seed is not None:
        config.seed = int(seed)
    validate(config)
    # Only the chosen method's section is kept: it is what the run used.
    method_cfg = resolve_method_config(METHODS.get(config.method), config.get(config.method), config.method)
    for name in METHODS.names():
        if name in config and name != config.method:
            del config[name]
    config[config.method] = method_cfg
    return config


def config_json(config):
    return json.loads(config.to_json_best_effort(sort_keys=True))


# ---------------------------------------------------------------------- workdir


def prepare_workdir(workdir, config, overwrite=False, may_contain=()):
    """Returns True when resuming. Never silently overwrites a finished or different run.
    ``may_contain``: entries a new run's folder may already hold (an ensemble's members/)."""
    cfg_path = os.path.join(workdir, "config.json")
    if os.path.exists(os.path.join(workdir, "metrics.json")) and not overwrite:
        raise WorkdirError(f"--workdir={workdir} holds a finished run (metrics.json); "
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
        raise WorkdirError(f"--workdir={workdir} exists, is not empty and holds no tfkd run (config.json)")
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
    io.write_json_atomic(os.path.join(workdir, "config.json"), config_json(config))
    io.write_json_atomic(os.path.join(workdir, "network.json"), network_info)
    info_path = os.path.join(workdir, "run_info.json")
    starts = []
    if os.path.exists(info_path):
        with open(info_path) as f:
            starts = json.load(f)
    starts.append(io.run_info(config.seed, start_info))
    io.write_json_atomic(info_path, starts)


def latest_checkpoint(workdir):
    root = os.path.join(workdir, CHECKPOINTS)
    if not os.path.isdir(root):
        return None
    epochs = sorted(d for d in os.listdir(root) if d.startswith("epoch_") and
                    os.path.exists(os.path.join(root, d, "state.json")))
    return os.path.join(root, epochs[-1]) if epochs else None


def read_state(checkpoint_dir):
    with open(os.path.join(checkpoint_dir, "state.json")) as f:
        return json.load(f)


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
            io.write_json_atomic(os.path.join(epoch_tmp, "state.json"), state)
            if improved:  # best lands first: if killed before the epoch folder, the epoch re-runs
                with io.atomic_directory(os.path.join(root, "best")) as best_tmp:
                    for name in (WEIGHTS, NETWORK_WEIGHTS):
                        if os.path.exists(os.path.join(epoch_tmp, name)):
                            shutil.copy2(os.path.join(epoch_tmp, name), os.path.join(best_tmp, name))
                    io.write_json_atomic(os.path.join(best_tmp, "state.json"), state)
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
        io.write_text_atomic(os.path.join(self.workdir, "history.csv"), buf.getvalue())


class LearningRateLogger(keras.callbacks.Callback):
    """Adds the current learning rate to the epoch logs (TensorBoard, history.csv)."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


# ---------------------------------------------------------------------- building


def build_network(config, data):
    stem = config.model.stem
    if stem == "auto":
        stem = "imagenet" if data.image_shape[0] >= 128 else "cifar"
    kwargs = {"num_classes": data.num_classes, "width": config.model.width, "input_shape": data.image_shape,
              "mean": data.mean, "std": data.std, "stem": stem, "sync_bn": config.model.sync_bn,
              "head": config.model.head}
    for option in getattr(BACKBONES.get(config.model.arch), "options", ()):  # e.g. keras_application's
        kwargs[option] = config.model[option]
    return build_backbone(config.model.arch, **kwargs), kwargs


def learning_rate(train_cfg, steps):
    lr = train_cfg.learning_rate
    if train_cfg.lr_schedule == "constant":
        return lr
    if train_cfg.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(lr, decay_steps=train_cfg.epochs * steps)
    bounds = [int(b) * steps for b in train_cfg.lr_boundaries if b < train_cfg.epochs]
    values = [lr * train_cfg.lr_decay ** i for i in range(len(bounds) + 1)]
    return keras.optimizers.schedules.PiecewiseConstantDecay(bounds, values) if bounds else lr


def build_optimizer(train_cfg, steps):
    lr = learning_rate(train_cfg, steps)
    # Weight decay is added to the loss by the method (coupled L2, as in the papers' PyTorch code).
    if train_cfg.optimizer == "sgd":
        return keras.optimizers.SGD(lr, momentum=train_cfg.momentum, nesterov=train_cfg.nesterov)
    return keras.optimizers.Adam(lr)


def build_method_model(config, network):
    method = build_method(config.method, network, config[config.method],
                          weight_decay=config.train.weight_decay, name=config.method)
    return method


def build_all(config, data, strategy):
    """Network, method and optimizer, created inside the strategy's scope."""
    steps = data_lib.pipeline.steps_per_epoch(data, config.train.batch_size)
    with strategy.scope():
        network, net_kwargs = build_network(config, data)
        network.ensure_built()
        method = build_method_model(config, network)
        method(keras.ops.zeros((1,) + tuple(data.image_shape)), training=False)  # builds the wrapper
        method.compile(optimizer=build_optimizer(config.train, steps), jit_compile=config.train.jit_compile,
                       steps_per_execution=config.train.steps_per_execution)
        method.build_state()
    return method, net_kwargs, steps


# ---------------------------------------------------------------------- run


def phase_segments(method, start, end):
    """[(first, last + 1, phase)] for runs of consecutive epochs with the same phase."""
    segments = []
    for epoch in range(start, end):
        phase = method.epoch_phase(epoch)
        if segments and segments[-1][2] == phase:
            segments[-1][1] = epoch + 1
        else:
            segments.append([epoch, epoch + 1, phase])
    return [tuple(s) for s in segments]


def run(config, workdir, *, strategy="default", overwrite=False):
    """Trains (or resumes) the run in ``workdir``; returns the final metrics dict."""
    config = resolve(config)
    if METHODS.get(config.method).task == "fewshot":  # episodic methods train on feature files
        from tfkd import train_fewshot

        return train_fewshot.run(config, workdir, strategy=strategy, overwrite=overwrite)
    # Under multi_worker every worker runs this; only the chief deletes or writes files.
    resuming = prepare_workdir(workdir, config, overwrite and is_chief())
    data = data_lib.load_dataset(config.data)  # data errors surface before any file is written
    data_lib.resolve_augment(config.data.augment, data)
    strategy_obj = get_strategy(strategy)
    if config.train.batch_size % strategy_obj.num_replicas_in_sync:
        raise ConfigError(f"config.train.batch_size={config.train.batch_size} must be divisible by the "
                          f"{strategy_obj.num_replicas_in_sync} replicas of --strategy={strategy}")

    if not config.train.mixed_precision:
        return _run(config, workdir, data, strategy_obj, strategy, resuming)
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        return _run(config, workdir, data, strategy_obj, strategy, resuming)
    finally:
        keras.mixed_precision.set_global_policy(policy)


def _run(config, workdir, data, strategy, strategy_name, resuming):
    keras.utils.set_random_seed(config.seed)
    method, net_kwargs, steps = build_all(config, data, strategy)
    chief = is_chief()
    write_run_files(workdir, config, {"arch": config.model.arch, "kwargs": net_kwargs, "class_names": data.class_names},
                    {"strategy": strategy_name, "replicas": strategy.num_replicas_in_sync, "resumed": resuming})

    state, initial_epoch = {}, 0
    latest = latest_checkpoint(workdir)
    if latest:
        state = read_state(latest)
        method.load_weights(os.path.join(latest, WEIGHTS))
        initial_epoch = state["epoch"]
        print(f"Resuming from {latest} (epoch {initial_epoch} of {config.train.epochs})", flush=True)

    if initial_epoch < config.train.epochs:
        val_ds = data_lib.eval_dataset(data, "val", batch_size=config.train.eval_batch_size)
        callbacks = [LearningRateLogger()]
        if config.fewshot_val.episodes:
            from tfkd.evaluation import ValidationClassEpisodes, validation_class_images

            images, labels = validation_class_images(data, config.fewshot_val.max_images, config.data.split_seed)
            callbacks.append(ValidationClassEpisodes(images, labels, config.fewshot_val, seed=config.data.split_seed))
        callbacks += [
            EpochCheckpoint(workdir, config.train.select_metric, config.train.keep_checkpoints, state),
        ]
        if chief:
            callbacks.append(keras.callbacks.TensorBoard(os.path.join(workdir, "logs"), update_freq="epoch"))
        for start, end, phase in phase_segments(method, initial_epoch, config.train.epochs):
            method.set_phase(phase)
            meta_split = method.phase_needs_meta_split(phase)
            if meta_split:
                print(f"Meta phase, epochs {start + 1}-{end}: D_train/D_test halves drawn with seed "
                      f"({config.seed}, epoch)", flush=True)
            train_ds = data_lib.train_dataset(data, batch_size=config.train.batch_size, seed=config.seed,
                                              augment=config.data.augment, initial_epoch=start, end_epoch=end,
                                              meta_split=meta_split)
            method.fit(train_ds, epochs=end, initial_epoch=start, steps_per_epoch=steps,
                       validation_data=val_ds, callbacks=callbacks, verbose=config.train.verbose,
                       shuffle=False)  # order comes from the stateless pipeline
        state = read_state(latest_checkpoint(workdir)) if chief else state

    # Model selection on validation only: the best epoch's weights are evaluated on test. Other
    # workers wait for the chief to have written the best checkpoint.
    barrier(strategy)
    best_dir = os.path.join(workdir, CHECKPOINTS, "best")
    method.load_weights(os.path.join(best_dir, WEIGHTS))
    best_state = read_state(best_dir)
    evaluate = lambda split: method.evaluate(  # noqa: E731
        data_lib.eval_dataset(data, split, batch_size=config.train.eval_batch_size), verbose=0, return_dict=True)
    val_metrics, test_metrics = evaluate("val"), evaluate("test")
    metrics = {
        "method": config.method,
        "dataset": config.data.name,
        "arch": config.model.arch,
        "seed": config.seed,
        "epochs": config.train.epochs,
        "select_metric": config.train.select_metric,
        "best_epoch": best_state["best_epoch"],
        "val": {k: float(v) for k, v in val_metrics.items()},
        "test": {k: float(v) for k, v in test_metrics.items()},
        "num_train_examples": len(data.train),
        "num_val_examples": len(data.val),
        "num_test_examples": len(data.test),
    }
    if chief:
        if config.export.enabled:
            meta = {"method": config.method, "config": config_json(config), "git_revision": io.git_revision(),
                    "class_names": list(data.class_names) if data.class_names is not None else None,
                    "best_epoch": best_state["best_epoch"]}
            export_lib.export_saved_model(method.network, os.path.join(workdir, "export"), meta,
                                          top_k=config.export.top_k)
        io.write_json_atomic(os.path.join(workdir, "metrics.json"), metrics)  # last: marks the run finished
    print_summary(metrics)
    return metrics


def print_summary(metrics):
    heads = [k[: -len("_accuracy")] for k in metrics["test"] if k.endswith("_accuracy")]
    print(f"\n{metrics['method']} on {metrics['dataset']} (best epoch {metrics['best_epoch']} "
          f"by {metrics['select_metric']})")
    print(f"{'head':<10} {'val acc':>8} {'test acc':>9}")
    for h in heads:
        print(f"{h:<10} {metrics['val'][h + '_accuracy']:>8.4f} {metrics['test'][h + '_accuracy']:>9.4f}")
