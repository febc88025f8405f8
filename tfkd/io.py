"""Atomic file writes, run provenance (resolved config, seed, git revision), and checks of a
user-given output path or seed that need no TensorFlow (the bin/ scripts run them first).

Atomic writes give their files and folders the modes of an ordinary ``open``/``mkdir`` under the
process umask (0644 / 0755 under umask 022), not the owner-only modes of ``tempfile``, so a model
server running as another user can read an export. Running out of disk space while writing is a
one-line DiskFullError naming the file, and never leaves a half-written file behind.
"""
import contextlib
import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from tfkd.errors import ConfigError, DiskFullError, WorkdirError


def umask():
    """The process umask, read without changing it where /proc tells it (os.umask can only swap)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode():
    return 0o666 & ~umask()


def folder_mode():
    return 0o777 & ~umask()


def is_disk_full(error):
    """ENOSPC, as an OSError or inside the message of a TensorFlow / h5py error."""
    return getattr(error, "errno", None) == errno.ENOSPC or "No space left on device" in str(error)


def _megabytes(n):
    return f"{n / 1e6:.0f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


def disk_full_error(path, free=None, needed=None):
    space = f": {_megabytes(free)} free, about {_megabytes(needed)} needed" if free is not None else ""
    return DiskFullError(f"no space left on device while writing {path}{space}; free some space and run the "
                         f"command again (a training run resumes from its last checkpoint)", path)


def ensure_free_space(path, needed_bytes):
    """Raises DiskFullError when the file system that will hold ``path`` has less than
    ``needed_bytes`` free: checked before writing, because h5py crashes the process once it hits
    a full disk instead of raising."""
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.isdir(folder):
        folder = os.path.dirname(folder)
    free = shutil.disk_usage(folder).free
    if free < needed_bytes:
        raise disk_full_error(path, free, needed_bytes)


@contextlib.contextmanager
def disk_full_reported(path, inside=None):
    """Turns running out of space in the block into DiskFullError naming ``path``; one raised for a
    file inside the temp folder ``inside`` is renamed to ``path`` (the user never sees temp names)."""
    try:
        yield
    except DiskFullError as e:
        if inside and e.path and os.path.abspath(e.path).startswith(os.path.abspath(inside) + os.sep):
            raise disk_full_error(path) from None
        raise
    except Exception as e:  # noqa: BLE001  (OSError, tf.errors.OpError, h5py's RuntimeError ...)
        if is_disk_full(e):
            raise disk_full_error(path) from None
        raise


def write_text_atomic(path, text):
    """Writes via a temp file in the same folder and os.replace: readers never see half a file."""
    _write_atomic(path, text, "w")


def write_bytes_atomic(path, data):
    """``write_text_atomic`` for bytes."""
    _write_atomic(path, data, "wb")


def _write_atomic(path, data, mode):
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with disk_full_reported(path):
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-" + os.path.basename(path))
        try:
            os.fchmod(fd, file_mode())  # mkstemp's 0600 would hide the file from other users
            with os.fdopen(fd, mode) as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
            raise


def write_json_atomic(path, obj):
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


def read_json(path, error=WorkdirError, expected="the file as tfkd wrote it"):
    """The JSON value of ``path``. A file that is not valid JSON (a disk fault, an edit) is an
    ``error`` naming the file, instead of a traceback; ``expected`` says what would fix it."""
    try:
        with open(path) as f:
            return json.load(f)
    except UnicodeDecodeError as e:
        raise error(f"{path} is not valid JSON (not UTF-8 text: {e.reason}); expected {expected}") from None
    except json.JSONDecodeError as e:
        raise error(f"{path} is not valid JSON ({e}); expected {expected}") from None


def _jsonable(x):
    if hasattr(x, "item"):
        return x.item()
    if isinstance(x, (tuple, set)):
        return list(x)
    return str(x)


@contextlib.contextmanager
def atomic_directory(path, needed_bytes=0):
    """Yields a temp folder beside ``path``; on success it replaces ``path`` (old one removed only
    after the new one is in place); on failure it is deleted and ``path`` is untouched.
    ``needed_bytes``: refuse with DiskFullError before anything is written when less is free."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    if needed_bytes:
        ensure_free_space(path, needed_bytes)
    with disk_full_reported(path):
        tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp-" + os.path.basename(path) + "-")
        os.chmod(tmp, folder_mode())  # mkdtemp's 0700 would hide the folder from other users
    try:
        with disk_full_reported(path, inside=tmp):
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


@contextlib.contextmanager
def sole_writer(path, flag):
    """Holds ``.<name>.lock`` beside ``path`` while this process writes ``path`` (an export): a
    second process aiming at the same path is refused at once with a WorkdirError naming the
    holder, instead of both writing for minutes and the later one silently replacing the other's
    result. An OS lock (flock): a killed holder never blocks the next writer; the file is removed
    when the holder is done."""
    import fcntl

    parent = os.path.dirname(os.path.abspath(path))
    lock = os.path.join(parent, f".{os.path.basename(os.path.abspath(path))}.lock")
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise WorkdirError(f"{flag}={path} cannot be created ({e.strerror})") from None
    while True:
        f = open(lock, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                break  # a file system without flock (some network mounts): write unguarded, as before
            f.seek(0)
            owner = f.read().strip() or "another process"
            f.close()
            raise WorkdirError(f"{flag}={path} is being written by {owner}; wait for it to finish, or choose "
                               f"another {flag}") from None
        # The holder before us may have removed the file between our open and our lock: then this
        # lock guards a name nobody else sees, so take the lock again on the file now there.
        try:
            same = os.path.samestat(os.fstat(f.fileno()), os.stat(lock))
        except FileNotFoundError:
            same = False
        if same:
            break
        f.close()
    try:
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}")
        f.flush()
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(lock)  # while still holding it, so nobody else is inside
        f.close()


def git_revision(root=None):
    """'<sha>[+dirty]' of the tfkd source tree (or of the checkout at ``root``), or 'unknown'
    outside a git checkout."""
    root = root or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha + ("+dirty" if dirty else "")) if sha else "unknown"


def cpu_model():
    """The CPU's model name ("" when unknown): oneDNN picks its kernels, so the float results, by
    the instruction set (one command gave different numbers on an Intel and an AMD machine)."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or ""


# TensorFlow's environment variables for its thread pools (read when its runtime starts).
THREAD_ENVIRONMENT = {"intra_op": "TF_NUM_INTRAOP_THREADS", "inter_op": "TF_NUM_INTEROP_THREADS"}


def thread_environment(intra_op, inter_op):
    """The environment entries that give a child process these thread counts (0: none, its default)."""
    return {THREAD_ENVIRONMENT[key]: str(count) for key, count in (("intra_op", intra_op), ("inter_op", inter_op))
            if count}


def thread_counts():
    """TensorFlow's intra-/inter-op thread counts (0 = its default, one per core) and the core count:
    float sums, so the numbers a run computes, depend on them."""
    import tensorflow as tf

    return {"intra_op": (tf.config.threading.get_intra_op_parallelism_threads()
                         or int(os.environ.get(THREAD_ENVIRONMENT["intra_op"]) or 0)),
            "inter_op": (tf.config.threading.get_inter_op_parallelism_threads()
                         or int(os.environ.get(THREAD_ENVIRONMENT["inter_op"]) or 0)),
            "cpu_count": os.cpu_count()}


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
        "cpu": cpu_model(),
        "threads": thread_counts(),
    }
    info.update(extra or {})
    return info


def check_output_folder(path, flag):
    """Raises WorkdirError unless ``path`` is a folder this process can write in, or can create:
    checked before any work, so a run never dies at its first write (a regular file in the way, a
    read-only file system, no permission). Writes nothing."""
    path = os.path.abspath(path)
    if os.path.lexists(path) and not os.path.isdir(path):
        raise WorkdirError(f"{flag}={path} is a file, not a folder; expected a new or existing folder")
    existing = path
    while not os.path.isdir(existing):
        if os.path.lexists(existing):
            raise WorkdirError(f"{flag}={path}: {existing} is a file, so the folder cannot be created there")
        existing = os.path.dirname(existing)
    if not os.access(existing, os.W_OK | os.X_OK):
        why = ("is on a read-only file system" if os.statvfs(existing).f_flag & os.ST_RDONLY
               else "is not writable by this user")
        where = existing if existing == path else f"{existing} (where it would be created)"
        raise WorkdirError(f"{flag}={path}: {where} {why}; expected a writable folder")


def check_output_file(path, flag):
    """check_output_folder for a file's folder; the file itself must not be a folder."""
    if os.path.isdir(path):
        raise WorkdirError(f"{flag}={path} is a folder; expected a file name")
    check_output_folder(os.path.dirname(os.path.abspath(path)), flag)


# Seeds are offset per ensemble member, split and generator, and some become int32 tensors: the
# bound leaves room for the offsets (and numpy / Keras refuse negative seeds).
SEED_LIMIT = 2 ** 30


def check_seed(value, name):
    """Raises ConfigError unless ``value`` is a seed in [0, SEED_LIMIT)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < SEED_LIMIT:
        raise ConfigError(f"{name}={value!r}: expected an integer seed in [0, {SEED_LIMIT})")
