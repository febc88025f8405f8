"""The run folder's file names (documented in tfkd.runs) and a check that a folder is a run.

Free of TensorFlow, so the bin/ scripts can refuse a --workdir that is not a run before they spend
seconds importing it. Layer: base (imports only tfkd.errors).
"""
import os

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


def require_run_file(workdir, name, flag="--workdir"):
    """The path of ``name`` in ``workdir``; a WorkdirError if the folder lacks it (not a run)."""
    path = os.path.join(workdir, name)
    if not os.path.exists(path):
        raise WorkdirError(f"{flag}={workdir} has no {name}: not a tfkd run folder")
    return path


def require_run_folder(workdir, flag="--workdir"):
    """What every reader of a finished or running run needs first: its config and network files."""
    for name in (CONFIG, NETWORK):
        require_run_file(workdir, name, flag)
