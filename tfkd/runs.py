"""The run folder (``--workdir``): its layout, provenance files, checkpoints, snapshots, history, and
rebuilding a run's network or few-shot method from it. Both training drivers, bin/export,
bin/extract_features, bin/evaluate and teachers read and write run folders only through here (the
file names live in tfkd.layout, so the bin/ scripts can check a --workdir before importing TensorFlow).

Layer: above methods, models and config; below export, teachers, extract and the drivers (train,
train_fewshot, tuning), which it never imports.

Layout::

    config.json          resolved config (the run refuses to continue with a different one)
    run_info.json        seed, git revision, command, versions, devices -- one entry per start
    network.json         how to rebuild the network without loading data (for bin/export)
    checkpoints/epoch_NNNN/{model.weights.h5,network.weights.h5,state.json}   last ``keep_checkpoints``
                         epochs (model = method + network + optimizer; network = what exports need)
    checkpoints/best/    the same files, of the best epoch on the validation metric
    checkpoints/*/manifest.json   size and sha256 of every file of the checkpoint
    run.lock             pid and host of the process training in this folder
    snapshots/k_NNN/     progressive weakening: the model after the last step with k_train >= NNN
    members/member_i/    ensembles: one run folder per member
    logs/                TensorBoard (train/, validation/)
    history.csv          one row per epoch (rewritten atomically from the checkpoint state)
    evaluation.json      few-shot runs: every evaluation protocol
    export/              SavedModel of the best checkpoint (inference path only)
    metrics.json         final validation and test metrics; its presence marks a finished run

Every file is written atomically (tfkd.io); killing the process at any point leaves the last
completed epoch intact, and re-running the same command resumes from it.

Faults are caught, not crashed on: a checkpoint whose files do not match its manifest (truncated,
overwritten, garbage) is reported in one line and skipped for the previous intact one, and a bad
``best`` is rebuilt from its epoch's checkpoint; a checkpoint that would not fit on the disk is
refused before it is written; a second training process on the same folder is refused at once
(``run.lock``; a lock left by a dead process on this host is taken over); temp files left by a
killed process are removed at the next start.
"""
import contextlib
import csv
import errno
import io as _stdio
import json
import os
import shutil
import socket
import sys
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from tfkd import io, layout
from tfkd.config import config_json, default_config_json
from tfkd.distribute import is_chief
from tfkd.errors import ConfigError, WorkdirError
from tfkd.layout import (BEST, CHECKPOINTS, CONFIG, EVALUATION, EXPORT, HISTORY, LOCK, LOGS,  # noqa: F401
                         MANIFEST, METADATA_FILE, METRICS, NETWORK, NETWORK_WEIGHTS, RUN_INFO, SNAPSHOTS, STATE,
                         WEIGHTS, file_sha256, checkpoint_problem, read_config, read_network_info, read_run_json,
                         require_run_file)
from tfkd.method_config import METHOD_CONFIGS
from tfkd.methods import build_fewshot_method, build_method, build_optimizer
from tfkd.models import build_backbone


def best_checkpoint(workdir):
    return os.path.join(workdir, CHECKPOINTS, BEST)


def export_dir(workdir):
    return os.path.join(workdir, EXPORT)


def write_metrics(workdir, metrics):
    """metrics.json, written last: it marks the run finished."""
    io.write_json_atomic(os.path.join(workdir, METRICS), metrics)


def load_metadata(export_path):
    """The metadata (assets.extra/tfkd.json) of a SavedModel written by tfkd.export."""
    with open(os.path.join(export_path, METADATA_FILE)) as f:
        return json.load(f)


def report(message):
    """One warning line on stderr (a fault tfkd worked around)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def variables_nbytes(variables):
    """Bytes the values of these variables take (what their weights file needs, roughly)."""
    total = 0
    for v in variables:
        dtype = getattr(v.dtype, "as_numpy_dtype", v.dtype)
        total += int(np.prod(v.shape)) * np.dtype(dtype).itemsize
    return total


def folder_nbytes(folder):
    return sum(os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder)
               if os.path.isfile(os.path.join(folder, n)))


# ---------------------------------------------------------------------- starting a run


def _is_temporary(name):
    return name.startswith(".tmp-") or name.startswith(".old-")


def prepare_workdir(workdir, config, overwrite=False, may_contain=()):
    """Returns True when resuming. Never silently overwrites a finished or different run.
    ``may_contain``: entries a new run's folder may already hold (an ensemble's members/)."""
    io.check_output_folder(workdir, "--workdir")  # a file or a read-only folder fails now, not at the first write
    cfg_path = os.path.join(workdir, CONFIG)
    if not overwrite:
        layout.refuse_finished_run(workdir)
    if overwrite and os.path.isdir(workdir):
        for name in os.listdir(workdir):
            if name != LOCK:  # this process's own lock stays
                path = os.path.join(workdir, name)
                shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)
    resuming = os.path.exists(cfg_path)
    if resuming:
        old = read_run_json(cfg_path)
        new = config_json(config)
        diffs = [] if old == new else _diff(old, new, defaults=default_config_json())
        if diffs:
            raise WorkdirError(f"--workdir={workdir} was started with a different config "
                               f"({'; '.join(diffs[:5])}); use a new --workdir, or --overwrite to discard it")
    elif os.path.isdir(workdir) and {n for n in os.listdir(workdir) if n != LOCK and not _is_temporary(n)} - set(
            may_contain):
        raise WorkdirError(f"--workdir={workdir} exists, is not empty and holds no tfkd run ({CONFIG})")
    if is_chief():
        clean_stale_temporaries(workdir)
    return resuming


def clean_stale_temporaries(workdir):
    """Removes the temp files and folders (``.tmp-*``) a killed process left in the run folder, and
    undoes a folder swap it interrupted (``.old-X-*`` whose X is missing is put back). Call only
    while holding the lock: a live writer's temp files look the same. Returns what was removed."""
    removed, restored = [], []
    for sub in ("", CHECKPOINTS, SNAPSHOTS):
        folder = os.path.join(workdir, sub)
        if not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            if name.startswith(".old-"):
                original = os.path.join(folder, name[len(".old-"):].rsplit("-", 1)[0])
                if not os.path.exists(original):
                    os.replace(path, original)
                    restored.append(os.path.join(sub, os.path.basename(original)))
                    continue
            elif not name.startswith(".tmp-"):
                continue
            shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)
            removed.append(os.path.join(sub, name))
    if removed or restored:
        parts = [f"removed {', '.join(removed)}"] if removed else []
        parts += [f"put back {', '.join(restored)}"] if restored else []
        report(f"cleaned up after an interrupted process in {workdir}: {'; '.join(parts)}")
    return removed


def _diff(old, new, prefix="", defaults=None):
    """The differences between two config JSONs as "key: old -> new". A key absent from ``old`` whose
    new value is its default (in ``defaults``) is no difference: the field was added by a newer
    tfkd, and its default is the behaviour the run had."""
    out, defaults = [], defaults if isinstance(defaults, dict) else {}
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{key}.", defaults.get(key))
        elif key not in old and key in defaults and b == defaults[key]:
            continue
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
        starts = read_run_json(info_path, kind=list)
    starts.append(io.run_info(config.seed, start_info))
    io.write_json_atomic(info_path, starts)


# ---------------------------------------------------------------------- checkpoints


def write_manifest(folder):
    """manifest.json: size and sha256 of every file of a checkpoint folder (written last)."""
    files = {n: {"size": os.path.getsize(os.path.join(folder, n)), "sha256": file_sha256(os.path.join(folder, n))}
             for n in sorted(os.listdir(folder)) if n != MANIFEST and os.path.isfile(os.path.join(folder, n))}
    io.write_json_atomic(os.path.join(folder, MANIFEST), {"files": files})


def _epoch_dirs(workdir):
    root = os.path.join(workdir, CHECKPOINTS)
    if not os.path.isdir(root):
        return []
    return [os.path.join(root, d) for d in sorted(os.listdir(root)) if d.startswith("epoch_")]


def latest_checkpoint(workdir, quiet=False):
    """The newest intact epoch checkpoint, or None. A damaged newer one is reported in one line
    and skipped (its epoch is trained again)."""
    damaged = False
    for folder in reversed(_epoch_dirs(workdir)):
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder
        damaged = True
        if not quiet:
            report(f"{folder} is unusable ({problem}); falling back to the previous checkpoint")
    if damaged and not quiet:
        report(f"no intact epoch checkpoint in {os.path.join(workdir, CHECKPOINTS)}; training starts from the "
               f"first epoch")
    return None


def read_state(checkpoint_dir):
    with open(os.path.join(checkpoint_dir, STATE)) as f:
        return json.load(f)


def resume_latest(workdir, model, total_epochs):
    """Loads the newest intact checkpoint into ``model``; returns (its state, the epoch to start at).
    ({}, 0) when the run has none yet."""
    latest = latest_checkpoint(workdir)
    if not latest:
        return {}, 0
    state = read_state(latest)
    model.load_weights(os.path.join(latest, WEIGHTS))
    print(f"Resuming from {latest} (epoch {state['epoch']} of {total_epochs})", flush=True)
    return state, state["epoch"]


def verified_best(workdir):
    """checkpoints/best, checked against its manifest. A damaged one is rebuilt from the checkpoint
    of its epoch (reported in one line); when that is no longer kept, WorkdirError (exit 2)."""
    best = best_checkpoint(workdir)
    problem = checkpoint_problem(best)
    if problem is None:
        return best
    latest = latest_checkpoint(workdir, quiet=True)
    epoch = read_state(latest)["best_epoch"] if latest else None
    source = os.path.join(workdir, CHECKPOINTS, f"epoch_{epoch:04d}") if epoch else None
    if source is None or checkpoint_problem(source) is not None:
        known = (f"the checkpoint of its epoch {epoch} is no longer kept" if epoch else
                 "no intact epoch checkpoint says which epoch it was")
        raise WorkdirError(f"{best} is unusable ({problem}) and {known}; restore {best}, or train again with "
                           f"--overwrite")
    if not is_chief():
        return source  # only the chief writes; workers read the epoch's copy
    with io.atomic_directory(best) as tmp:
        for name in os.listdir(source):
            if name != MANIFEST:
                shutil.copy2(os.path.join(source, name), os.path.join(tmp, name))
        write_manifest(tmp)
    report(f"{best} was unusable ({problem}); rebuilt from {source}")
    return best


def resolve_checkpoint(workdir, checkpoint):
    """'best', 'latest' or a checkpoint folder -> the intact folder holding model.weights.h5."""
    if checkpoint == "best":
        return verified_best(workdir)
    ckpt = latest_checkpoint(workdir) if checkpoint == "latest" else checkpoint
    if not ckpt or not os.path.exists(os.path.join(ckpt, WEIGHTS)):
        raise WorkdirError(f"--checkpoint={checkpoint}: no {WEIGHTS} found in {ckpt or workdir}")
    problem = checkpoint_problem(ckpt)
    if problem:
        raise WorkdirError(f"--checkpoint={checkpoint}: {ckpt} is unusable ({problem})")
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
        # Checked up front: h5py crashes the process on a full disk instead of raising.
        needed = self._checkpoint_nbytes() * (2 if improved else 1)
        with io.atomic_directory(os.path.join(root, f"epoch_{done:04d}"), needed_bytes=needed) as epoch_tmp:
            self.model.save_weights(os.path.join(epoch_tmp, WEIGHTS))
            network = getattr(self.model, "network", None)
            if network is not None:
                network.save_weights(os.path.join(epoch_tmp, NETWORK_WEIGHTS))
            io.write_json_atomic(os.path.join(epoch_tmp, STATE), state)
            write_manifest(epoch_tmp)
            if improved:  # best lands first: if killed before the epoch folder, the epoch re-runs
                with io.atomic_directory(os.path.join(root, BEST)) as best_tmp:
                    for name in os.listdir(epoch_tmp):
                        shutil.copy2(os.path.join(epoch_tmp, name), os.path.join(best_tmp, name))
        self._write_history()
        old = sorted(d for d in os.listdir(root) if d.startswith("epoch_"))[:-self.keep]
        for d in old:
            shutil.rmtree(os.path.join(root, d), ignore_errors=True)

    def _checkpoint_nbytes(self):
        """The size of the newest checkpoint, or an estimate from the variables before the first."""
        newest = _epoch_dirs(self.workdir)
        if newest:
            return folder_nbytes(newest[-1]) + (1 << 20)
        optimizer = getattr(self.model, "optimizer", None)
        network = getattr(self.model, "network", None)
        return (variables_nbytes(self.model.weights) + variables_nbytes(getattr(optimizer, "variables", []))
                + (variables_nbytes(network.weights) if network is not None else 0) + (1 << 20))

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
    """Progressive distillation (weaken): saves the model once for each value k of ``save_at_k``
    (the method's ``snapshot_at_k()``), after the last step trained with k_train >= k, i.e. when
    the next step's scheduled k (the model's ``k_now``) falls below k; testing at k shots uses the
    snapshot with the largest saved k <= k, else the best checkpoint. Written atomically; existing
    snapshots are kept on resume."""

    def __init__(self, workdir, save_at_k):
        super().__init__()
        self.root = os.path.join(workdir, SNAPSHOTS)
        self.pending = sorted(set(int(k) for k in save_at_k), reverse=True)

    def on_train_batch_end(self, batch, logs=None):
        if not self.pending:  # every snapshot taken: no device-to-host read per step
            return
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        k_next = self.model.k_now(step)  # what the next step trains with
        for k in [k for k in self.pending if k_next < k]:
            self.pending.remove(k)
            path = os.path.join(self.root, f"k_{k:03d}")
            if (os.path.exists(path) and checkpoint_problem(path) is None) or not is_chief():
                continue
            k_train = int(keras.ops.convert_to_numpy(self.model.k_train))
            needed = variables_nbytes(self.model.weights) + variables_nbytes(self.model.optimizer.variables) + (1 << 20)
            with io.atomic_directory(path, needed_bytes=needed) as tmp:
                self.model.save_weights(os.path.join(tmp, WEIGHTS))
                io.write_json_atomic(os.path.join(tmp, STATE), {"k_train": k_train, "saved_for_k": k, "step": step})
                write_manifest(tmp)


def snapshot_dirs(workdir):
    """{k_train: folder} of the run's intact snapshots (a damaged one is reported and left out)."""
    root = os.path.join(workdir, SNAPSHOTS)
    if not os.path.isdir(root):
        return {}
    found = {}
    for d in sorted(os.listdir(root)):
        if d.startswith("k_"):
            problem = checkpoint_problem(os.path.join(root, d))
            if problem:
                report(f"{os.path.join(root, d)} is unusable ({problem}); left out")
            else:
                found[int(d[2:])] = os.path.join(root, d)
    return found


def snapshot_for_shot(workdir, k):
    """The snapshot folder whose k_train is the largest saved value <= k, or None."""
    saved = snapshot_dirs(workdir)
    usable = [s for s in saved if s <= k]
    return saved[max(usable)] if usable else None


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
    if METHOD_CONFIGS.get(config.method).needs_teacher:
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
    if config.method not in METHOD_CONFIGS or METHOD_CONFIGS.get(config.method).task != "fewshot":
        fewshot = [m for m in METHOD_CONFIGS.names() if METHOD_CONFIGS.get(m).task == "fewshot"]
        raise WorkdirError(f"--workdir={workdir} holds a {config.method!r} run, not a few-shot method "
                           f"(expected one of {fewshot})")
    feature_dim = read_network_info(workdir)["feature_dim"]
    method = build_fewshot_method(config, feature_dim, tf.distribute.get_strategy(), steps=1)
    if config[config.method].get("ensemble_size", 1) > 1:
        return method, config  # an ensemble's parent: the members hold the weights
    method.load_weights(os.path.join(resolve_checkpoint(workdir, checkpoint), WEIGHTS))
    return method, config


def fewshot_features_dir(workdir, config):
    """The absolute feature folder of a few-shot run. config.json holds it absolute
    (tfkd.config.resolve); runs written before held it relative to where bin/train ran, so then the
    absolute file paths in network.json (or, for an ensemble's parent, the current folder) are used."""
    folder = config.fewshot.features_dir
    if os.path.isabs(folder):
        return folder
    files = read_network_info(workdir).get("features") or {}
    return os.path.dirname(next(iter(files.values()))) if files else os.path.abspath(folder)


# ---------------------------------------------------------------------- the lock


def _read_lock(path):
    try:
        with open(path) as f:
            owner = json.load(f)
        return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else None
    except (OSError, ValueError):
        return None


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _create_exclusively(tmp, lock, text):
    """Puts the finished file ``tmp`` at ``lock`` unless something is there (FileExistsError)."""
    try:
        os.link(tmp, lock)
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK):
            raise
        # No hard links on this file system: exclusive create, then write (a reader may briefly
        # see it empty, and is then told the lock is unreadable).
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, io.file_mode())
        with os.fdopen(fd, "w") as f:
            f.write(text)


def _acquire(workdir):
    """Creates WORKDIR/run.lock (pid, host, start time) or raises WorkdirError naming its owner."""
    lock = os.path.join(workdir, LOCK)
    host = socket.gethostname()
    mine = {"pid": os.getpid(), "host": host, "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": " ".join(sys.argv)}
    # Written whole to a private name, then hard-linked into place: the link fails when a lock
    # exists, so two processes can never both create it, and a reader never sees half of one.
    fd, tmp = tempfile.mkstemp(dir=workdir, prefix=f".{LOCK}-")
    try:
        os.fchmod(fd, io.file_mode())
        with os.fdopen(fd, "w") as f:
            json.dump(mine, f)
        for _ in range(3):
            try:
                _create_exclusively(tmp, lock, json.dumps(mine))
                return
            except FileExistsError:
                owner = _read_lock(lock)
            if owner is None:
                raise WorkdirError(f"--workdir={workdir} has an unreadable lock file {lock}; delete it if no other "
                                   f"run uses this folder")
            if owner.get("host") == host and owner["pid"] != os.getpid() and not _alive(owner["pid"]):
                report(f"took over the lock of pid {owner['pid']} on {host}, which is no longer running")
                with contextlib.suppress(FileNotFoundError):
                    os.remove(lock)
                continue
            raise WorkdirError(f"--workdir={workdir} is in use by another run (pid {owner['pid']} on "
                               f"{owner.get('host')}, since {owner.get('started_utc', '?')}); wait for it to end, or "
                               f"delete {lock} if that process is gone")
        raise WorkdirError(f"--workdir={workdir}: could not take the lock {lock}")
    except OSError as e:
        if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise WorkdirError(f"--workdir={workdir} is not writable ({e.strerror})") from None
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


@contextlib.contextmanager
def locked(workdir):
    """Holds WORKDIR/run.lock while a run trains there: a second process on the same folder is
    refused at once (WorkdirError naming the owner's pid and host), a lock left by a dead process
    on this host is taken over. Under multi_worker the workers share the folder: only the chief
    takes the lock. A folder created only for the lock is removed again if the run wrote nothing."""
    if not is_chief():
        yield
        return
    if os.path.lexists(workdir) and not os.path.isdir(workdir):
        raise WorkdirError(f"--workdir={workdir} is a file, not a folder; expected a new or existing folder")
    created = not os.path.exists(workdir)
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        raise WorkdirError(f"--workdir={workdir} cannot be created ({e.strerror})") from None
    try:
        _acquire(workdir)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(workdir)
        raise
    lock = os.path.join(workdir, LOCK)
    try:
        yield
    finally:
        owner = _read_lock(lock)
        if owner and owner["pid"] == os.getpid() and owner.get("host") == socket.gethostname():
            with contextlib.suppress(FileNotFoundError):
                os.remove(lock)
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(workdir)  # only when empty: a refused or failed start leaves nothing
