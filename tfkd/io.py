"""Atomic file writes and run provenance (resolved config, seed, git revision)."""
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time


def write_text_atomic(path, text):
    """Writes via a temp file in the same folder and os.replace: readers never see half a file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-" + os.path.basename(path))
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_json_atomic(path, obj):
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


def _jsonable(x):
    if hasattr(x, "item"):
        return x.item()
    if isinstance(x, (tuple, set)):
        return list(x)
    return str(x)


@contextlib.contextmanager
def atomic_directory(path):
    """Yields a temp folder beside ``path``; on success it replaces ``path`` (old one removed only
    after the new one is in place); on failure it is deleted and ``path`` is untouched."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp-" + os.path.basename(path) + "-")
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if os.path.exists(path):
        old = tempfile.mkdtemp(dir=parent, prefix=".old-" + os.path.basename(path) + "-")
        os.rmdir(old)
        os.replace(path, old)
    os.replace(tmp, path)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def git_revision():
    """'<sha>[+dirty]' of the tfkd source tree, or 'unknown' outside a git checkout."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha + ("+dirty" if dirty else "")) if sha else "unknown"


def run_info(seed, extra=None):
    import keras
    import tensorflow as tf

    import tfkd

    info = {
        "seed": seed,
        "git_revision": git_revision(),
        "command": " ".join(sys.argv),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": socket.gethostname(),
        "tfkd_version": tfkd.__version__,
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "devices": [d.name for d in tf.config.list_logical_devices()],
    }
    info.update(extra or {})
    return info
