"""The run folder's file names (documented in tfkd.runs) and a check that a folder is a run.

Free of TensorFlow, so the bin/ scripts can refuse a --workdir that is not a run before they spend
seconds importing it: besides the names, the readers of a run's config and network files and the
integrity check of a checkpoint folder live here (tfkd.runs re-exports them). Layer: base
(imports only tfkd.errors and tfkd.io).
"""
import hashlib
import json
import os

import h5py
import ml_collections

from tfkd import io
from tfkd.errors import WorkdirError

CONFIG = "config.json"
RUN_INFO = "run_info.json"
NETWORK = "network.json"
CHECKPOINTS = "checkpoints"
BEST = "best"
WEIGHTS = "model.weights.h5"
NETWORK_WEIGHTS = "network.weights.h5"  # the network alone, for export / feature extraction / teachers
STATE = "state.json"
MANIFEST = "manifest.json"
LOCK = "run.lock"
SNAPSHOTS = "snapshots"
HISTORY = "history.csv"
METRICS = "metrics.json"
EVALUATION = "evaluation.json"
EXPORT = "export"
LOGS = "logs"
# Metadata an export carries beside its SavedModel (method, config, class names, ...).
METADATA_FILE = os.path.join("assets.extra", "tfkd.json")


RUN_FILE_EXPECTED = "the file as tfkd wrote it (restore it, or start over with --overwrite or a new --workdir)"


def refuse_finished_run(workdir):
    """A WorkdirError when ``workdir`` holds a finished run (its metrics.json): bin/train never
    overwrites one silently. TensorFlow-free, so a re-run of a finished command is refused at once."""
    if os.path.exists(os.path.join(workdir, METRICS)):
        raise WorkdirError(f"--workdir={workdir} holds a finished run ({METRICS}); "
                           f"use a new --workdir or pass --overwrite to discard it")


def require_run_file(workdir, name, flag="--workdir"):
    """The path of ``name`` in ``workdir``; a WorkdirError if the folder lacks it (not a run)."""
    path = os.path.join(workdir, name)
    if not os.path.exists(path):
        raise WorkdirError(f"{flag}={workdir} has no {name}: not a tfkd run folder")
    return path


def require_run_folder(workdir, flag="--workdir"):
    """What every reader of a finished or running run needs first: its config and network files,
    each a JSON object (checked here, before a bin/ script spends seconds importing TensorFlow)."""
    for name in (CONFIG, NETWORK):
        read_run_json(require_run_file(workdir, name, flag))


def read_config(workdir):
    """The run's resolved config (config.json) as a ConfigDict."""
    return ml_collections.ConfigDict(read_run_json(require_run_file(workdir, CONFIG)))


def read_network_info(workdir):
    return read_run_json(require_run_file(workdir, NETWORK))


def read_run_json(path, kind=dict):
    """A JSON file tfkd wrote into a run folder (config, network, metrics: objects; run_info: a list).
    A damaged one is a WorkdirError naming it, never a traceback."""
    value = io.read_json(path, expected=RUN_FILE_EXPECTED)
    if not isinstance(value, kind):
        raise WorkdirError(f"{path} holds a JSON {type(value).__name__}, not a JSON "
                           f"{'object' if kind is dict else 'array'}; expected {RUN_FILE_EXPECTED}")
    return value


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _h5_problem(path):
    if os.path.getsize(path) == 0:
        return "is empty"
    try:
        with h5py.File(path, "r"):
            pass
    except Exception:  # noqa: BLE001  (h5py raises OSError / RuntimeError on damaged files)
        return "cannot be read as HDF5 (truncated or damaged)"
    return None


def checkpoint_problem(folder):
    """None when a checkpoint folder is intact, else what is wrong with it (a short phrase)."""
    if not os.path.isdir(folder):
        return "it is missing"
    manifest = os.path.join(folder, MANIFEST)
    if os.path.exists(manifest):
        try:
            with open(manifest) as f:
                files = json.load(f)["files"]
            entries = [(name, int(e["size"]), str(e["sha256"])) for name, e in sorted(files.items())]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return f"{MANIFEST} is unreadable"
        if STATE not in files:
            return f"{MANIFEST} lists no {STATE}"
        for name, size, digest in entries:
            path = os.path.join(folder, name)
            if not os.path.isfile(path):
                return f"{name} is missing"
            actual = os.path.getsize(path)
            if actual != size:
                return (f"{name} is empty" if actual == 0 else
                        f"{name} is truncated ({actual} of {size} bytes)" if actual < size else
                        f"{name} has {actual} bytes, {size} expected")
            if file_sha256(path) != digest:
                return f"{name} does not match its checksum"
        return None
    # Checkpoints written before manifests existed: what can be checked without one.
    try:
        with open(os.path.join(folder, STATE)) as f:
            if not isinstance(json.load(f), dict):
                raise ValueError
    except FileNotFoundError:
        return f"{STATE} is missing"
    except (OSError, ValueError):
        return f"{STATE} is not valid JSON"
    if not os.path.exists(os.path.join(folder, WEIGHTS)):
        return f"{WEIGHTS} is missing"
    for name in (WEIGHTS, NETWORK_WEIGHTS):
        if os.path.exists(os.path.join(folder, name)):
            problem = _h5_problem(os.path.join(folder, name))
            if problem:
                return f"{name} {problem}"
    return None
