"""Training driver behind ``bin/train``: builds the data, network, method and optimizer, trains (or
resumes) in a run folder, selects the best epoch on validation, evaluates it on test, exports it.
Episodic few-shot methods are dispatched to tfkd.train_fewshot.

The run folder (layout, checkpoints, resume state, history, metrics) is tfkd.runs; teachers of
teacher-student methods are loaded by tfkd.teachers and injected into the method here.
Layer: a driver (imports runs, export, teachers; nothing below imports it).
"""
import os

import keras

from tfkd import config as config_lib
from tfkd import data as data_lib
from tfkd import export as export_lib
from tfkd import io
from tfkd import runs
from tfkd import train_fewshot
from tfkd.config import config_json
from tfkd.distribute import barrier, get_strategy, is_chief, mixed_precision_policy, set_thread_counts
from tfkd.errors import ConfigError
from tfkd.evaluation import ValidationClassEpisodes, validation_class_images
from tfkd.methods import build_method, build_optimizer
from tfkd.models import build_backbone
from tfkd.progress import RunProgress, bar_verbosity, print_run_paths
from tfkd.registry import BACKBONES, METHODS
from tfkd.teachers import teacher_kwargs


# ---------------------------------------------------------------------- building


def resolve(config, method=None, seed=None):
    """tfkd.config.resolve (flag overrides, checks that need no TensorFlow), then the check that
    needs the registered backbones: ``config.model.arch``."""
    config = config_lib.resolve(config, method=method, seed=seed)
    if config.model.arch not in BACKBONES:
        raise ConfigError(f"config.model.arch={config.model.arch!r}: expected one of {BACKBONES.names()}")
    return config


def build_network(config, data):
    stem = config.model.stem
    if stem == "auto":
        stem = "imagenet" if data.image_shape[0] >= 128 else "cifar"
    kwargs = {"num_classes": data.num_classes, "width": config.model.width, "input_shape": data.image_shape,
              "mean": data.mean, "std": data.std, "stem": stem, "sync_bn": config.model.sync_bn,
              "head": config.model.head}
    if config.model.exit_head != "auto":
        kwargs["exit_style"] = config.model.exit_head
    for option in getattr(BACKBONES.get(config.model.arch), "options", ()):  # e.g. keras_application's
        kwargs[option] = config.model[option]
    return build_backbone(config.model.arch, **kwargs), kwargs


def build_method_model(config, network):
    """The method of ``config`` around ``network``, with its frozen teacher loaded when it has one."""
    return build_method(config.method, network, config[config.method], weight_decay=config.train.weight_decay,
                        name=config.method, **teacher_kwargs(config.method, config[config.method]))


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


def phase_header(phase, start, end, config, meta_split):
    """The line announcing a run of epochs of one phase (None for single-phase methods)."""
    if phase is None:
        return None
    header = f"{str(phase).capitalize()} phase, epochs {start + 1}-{end} of {config.train.epochs}"
    if meta_split:
        header += f" (D_train/D_test halves drawn with seed ({config.seed}, epoch))"
    return header


def run(config, workdir, *, strategy="default", overwrite=False):
    """Trains (or resumes) the run in ``workdir``; returns the final metrics dict."""
    config = resolve(config)
    set_thread_counts(config.train.intra_op_threads, config.train.inter_op_threads)
    if METHODS.get(config.method).task == "fewshot":  # episodic methods train on feature files
        return train_fewshot.run(config, workdir, strategy=strategy, overwrite=overwrite)
    with runs.locked(workdir):  # a second process training in this workdir stops here
        return _start(config, workdir, strategy, overwrite)


def _start(config, workdir, strategy, overwrite):
    # Under multi_worker every worker runs this; only the chief deletes or writes files.
    resuming = runs.prepare_workdir(workdir, config, overwrite and is_chief())
    data = data_lib.load_dataset(config.data)  # data errors surface before any file is written
    data_lib.resolve_augment(config.data.augment, data)
    strategy_obj = get_strategy(strategy)
    if config.train.batch_size % strategy_obj.num_replicas_in_sync:
        raise ConfigError(f"config.train.batch_size={config.train.batch_size} must be divisible by the "
                          f"{strategy_obj.num_replicas_in_sync} replicas of --strategy={strategy}")

    if not config.train.mixed_precision:
        return _run(config, workdir, data, strategy_obj, strategy, resuming)
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(mixed_precision_policy())
    try:
        return _run(config, workdir, data, strategy_obj, strategy, resuming)
    finally:
        keras.mixed_precision.set_global_policy(policy)


def _run(config, workdir, data, strategy, strategy_name, resuming):
    keras.utils.set_random_seed(config.seed)
    method, net_kwargs, steps = build_all(config, data, strategy)
    chief = is_chief()
    runs.write_run_files(workdir, config,
                         {"arch": config.model.arch, "kwargs": net_kwargs, "class_names": data.class_names},
                         {"strategy": strategy_name, "replicas": strategy.num_replicas_in_sync, "resumed": resuming,
                          "dtype_policy": keras.mixed_precision.global_policy().name})

    state, initial_epoch = runs.resume_latest(workdir, method, config.train.epochs)

    if initial_epoch < config.train.epochs:
        val_ds = data_lib.eval_dataset(data, "val", batch_size=config.train.eval_batch_size)
        progress = RunProgress(config.train.epochs)  # "Epoch k/N" of the run, first-step tracing timed
        callbacks = [progress, runs.LearningRateLogger()]
        if config.fewshot_val.episodes:
            images, labels = validation_class_images(data, config.fewshot_val.max_images, config.data.split_seed)
            callbacks.append(ValidationClassEpisodes(images, labels, config.fewshot_val, seed=config.data.split_seed))
        callbacks += [
            runs.EpochCheckpoint(workdir, config.train.select_metric, config.train.keep_checkpoints, state),
        ]
        if chief:
            callbacks.append(keras.callbacks.TensorBoard(os.path.join(workdir, runs.LOGS), update_freq="epoch"))
        for start, end, phase in phase_segments(method, initial_epoch, config.train.epochs):
            method.set_phase(phase)
            meta_split = method.phase_needs_meta_split(phase)
            progress.start_fit(f"{phase} step" if phase else "training step",
                               phase_header(phase, start, end, config, meta_split))
            train_ds = data_lib.train_dataset(data, batch_size=config.train.batch_size, seed=config.seed,
                                              augment=config.data.augment, initial_epoch=start, end_epoch=end,
                                              meta_split=meta_split)
            method.fit(train_ds, epochs=end, initial_epoch=start, steps_per_epoch=steps,
                       validation_data=val_ds, callbacks=callbacks, verbose=bar_verbosity(config.train.verbose),
                       shuffle=False)  # order comes from the stateless pipeline
        state = runs.read_state(runs.latest_checkpoint(workdir)) if chief else state

    # Model selection on validation only: the best epoch's weights are evaluated on test. Other
    # workers wait for the chief to have written the best checkpoint.
    barrier(strategy)
    best_dir = runs.verified_best(workdir)  # a damaged best is rebuilt from its epoch's checkpoint
    method.load_weights(os.path.join(best_dir, runs.WEIGHTS))
    best_state = runs.read_state(best_dir)
    evaluate = lambda split: method.evaluate(  # noqa: E731
        data_lib.eval_dataset(data, split, batch_size=config.train.eval_batch_size), verbose=0, return_dict=True)
    val_metrics = evaluate("val")
    test_metrics = evaluate("test") if config.train.evaluate_test else {}
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
            export_lib.export_saved_model(method.network, runs.export_dir(workdir), meta, top_k=config.export.top_k)
        runs.write_metrics(workdir, metrics)  # last: marks the run finished
    print_summary(metrics, run_title(config))
    print_run_paths(workdir, best_dir, best_state["best_epoch"],
                    runs.export_dir(workdir) if config.export.enabled else None)
    return metrics


def run_title(config):
    """What the run is, as the summary names it: a class-split run trains a few-shot backbone."""
    if config.data.class_split:
        return (f"few-shot backbone ({config.method}) on the {config.data.class_split} classes of "
                f"{config.data.name}")
    return f"{config.method} on {config.data.name}"


def print_summary(metrics, title):
    heads = [k[: -len("_accuracy")] for k in metrics["val"] if k.endswith("_accuracy")]
    # The ensemble averages the network's exits with its final head: without exits it is the final
    # head itself (baseline, KD, DML, whose "peer" is another network, not an exit).
    if "ensemble" in heads and not any(h.startswith("exit_") for h in heads):
        heads.remove("ensemble")
    print(f"\n{title} (best epoch {metrics['best_epoch']} by {metrics['select_metric']})")
    print(f"{'head':<10} {'val acc':>8} {'test acc':>9}")
    for h in heads:
        test = metrics["test"].get(h + "_accuracy")
        print(f"{h:<10} {metrics['val'][h + '_accuracy']:>8.4f} {'not run' if test is None else f'{test:.4f}':>9}")
