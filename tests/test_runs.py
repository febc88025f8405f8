"""The run folder (tfkd.runs): verified checkpoints and their fallbacks, disk-full errors, stale
temporaries, the workdir lock, and file modes."""
import errno
import hashlib
import json
import os
import socket
import stat
import subprocess
import sys
from collections import namedtuple

import keras
import numpy as np
import pytest

from tests.conftest import REPO, SUBPROCESS_TIMEOUT
from tfkd import io, runs
from tfkd.errors import DiskFullError, WorkdirError


# ---------------------------------------------------------------------- helpers


def tiny_model():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model


def write_epochs(workdir, values, keep=3):
    """Checkpoints as bin/train writes them, for epochs with these validation accuracies."""
    model = tiny_model()
    callback = runs.EpochCheckpoint(str(workdir), "val_final_accuracy", keep, {})
    callback.set_model(model)
    for epoch, value in enumerate(values):
        model.layers[0].kernel.assign(np.full((4, 3), epoch + 1.0, np.float32))  # tells epochs apart
        callback.on_epoch_end(epoch, {"val_final_accuracy": value})
    return model


def epoch_dir(workdir, epoch):
    return os.path.join(str(workdir), runs.CHECKPOINTS, f"epoch_{epoch:04d}")


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def truncate_half(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def garble_middle(path):
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.seek(size // 2)
        f.write(np.random.default_rng(0).integers(0, 256, 256, dtype=np.uint8).tobytes())


def empty(path):
    open(path, "w").close()


CORRUPTIONS = {
    "truncated h5": (runs.WEIGHTS, truncate_half),
    "random bytes in h5": (runs.WEIGHTS, garble_middle),
    "zero-byte h5": (runs.WEIGHTS, empty),
    "garbage state.json": (runs.STATE, lambda p: open(p, "w").write("{not json")),
}


def warnings_in(capsys):
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


# ---------------------------------------------------------------------- verified checkpoints


def test_checkpoints_carry_a_manifest_of_checksums(tmp_path):
    write_epochs(tmp_path, [0.5, 0.7])
    for folder in (epoch_dir(tmp_path, 1), epoch_dir(tmp_path, 2), runs.best_checkpoint(str(tmp_path))):
        with open(os.path.join(folder, runs.MANIFEST)) as f:
            files = json.load(f)["files"]
        assert set(files) == {runs.WEIGHTS, runs.STATE}
        for name, entry in files.items():
            assert entry["sha256"] == sha(os.path.join(folder, name))
        assert runs.checkpoint_problem(folder) is None


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_a_corrupt_newest_checkpoint_is_reported_once_and_skipped(tmp_path, capsys, kind):
    write_epochs(tmp_path, [0.5, 0.7, 0.6])
    name, corrupt = CORRUPTIONS[kind]
    corrupt(os.path.join(epoch_dir(tmp_path, 3), name))
    capsys.readouterr()
    assert runs.latest_checkpoint(str(tmp_path)) == epoch_dir(tmp_path, 2)
    lines = warnings_in(capsys)
    assert len(lines) == 1 and "epoch_0003" in lines[0] and name in lines[0], lines
    model = tiny_model()
    model.load_weights(os.path.join(epoch_dir(tmp_path, 2), runs.WEIGHTS))  # the fallback is usable
    assert float(model.layers[0].kernel.numpy()[0, 0]) == 2.0


def test_checkpoints_without_a_manifest_are_still_checked(tmp_path, capsys):
    """Checkpoints written before manifests existed: truncation and bad JSON are still caught."""
    write_epochs(tmp_path, [0.5, 0.7, 0.6])
    for epoch in (1, 2, 3):
        os.remove(os.path.join(epoch_dir(tmp_path, epoch), runs.MANIFEST))
    assert runs.checkpoint_problem(epoch_dir(tmp_path, 3)) is None
    truncate_half(os.path.join(epoch_dir(tmp_path, 3), runs.WEIGHTS))
    with open(os.path.join(epoch_dir(tmp_path, 2), runs.STATE), "w") as f:
        f.write("]")
    assert runs.latest_checkpoint(str(tmp_path)) == epoch_dir(tmp_path, 1)
    assert len(warnings_in(capsys)) == 2


def test_no_intact_checkpoint_means_starting_over(tmp_path, capsys):
    write_epochs(tmp_path, [0.5], keep=1)
    empty(os.path.join(epoch_dir(tmp_path, 1), runs.WEIGHTS))
    capsys.readouterr()
    assert runs.latest_checkpoint(str(tmp_path)) is None
    lines = warnings_in(capsys)
    assert len(lines) == 2 and "epoch_0001" in lines[0] and "from the first epoch" in lines[1]


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_a_bad_best_is_rebuilt_from_its_epoch_checkpoint(tmp_path, capsys, kind):
    write_epochs(tmp_path, [0.5, 0.7, 0.6])
    best = runs.best_checkpoint(str(tmp_path))
    name, corrupt = CORRUPTIONS[kind]
    corrupt(os.path.join(best, name))
    capsys.readouterr()
    assert runs.verified_best(str(tmp_path)) == best
    lines = warnings_in(capsys)
    assert len(lines) == 1 and "best" in lines[0] and "epoch_0002" in lines[0], lines
    assert runs.checkpoint_problem(best) is None
    assert sha(os.path.join(best, runs.WEIGHTS)) == sha(os.path.join(epoch_dir(tmp_path, 2), runs.WEIGHTS))
    assert runs.read_state(best)["best_epoch"] == 2


def test_a_bad_best_whose_epoch_is_gone_is_one_clear_error(tmp_path):
    write_epochs(tmp_path, [0.7, 0.5, 0.6], keep=2)  # best = epoch 1, no longer kept
    empty(os.path.join(runs.best_checkpoint(str(tmp_path)), runs.WEIGHTS))
    with pytest.raises(WorkdirError) as info:
        runs.verified_best(str(tmp_path))
    message = str(info.value)
    assert "\n" not in message and "best" in message and "epoch 1" in message and runs.WEIGHTS in message
    with pytest.raises(WorkdirError, match="is empty"):  # bin/export, teachers, extraction: same check
        runs.resolve_checkpoint(str(tmp_path), "best")


def test_resume_skips_a_corrupt_checkpoint_and_rebuilds_best_end_to_end(tmp_path, capsys):
    """bin/train's driver: the newest checkpoint and best are both broken; the run resumes from the
    good epoch, retrains the lost one and finishes; a killed export's temp folder is cleaned."""
    from tests.conftest import tiny_config
    from tfkd import train

    config = tiny_config(method="baseline", epochs=2, train_examples=300, eval_examples=100)
    config.model.width = 0.0625
    config.export.enabled = False
    workdir = str(tmp_path / "run")
    first = train.run(config, workdir)
    os.remove(os.path.join(workdir, runs.METRICS))  # as if killed before the end
    garble_middle(os.path.join(epoch_dir(workdir, 2), runs.WEIGHTS))
    empty(os.path.join(runs.best_checkpoint(workdir), runs.NETWORK_WEIGHTS))
    os.mkdir(os.path.join(workdir, ".tmp-export-killed"))
    capsys.readouterr()
    second = train.run(config, workdir)
    captured = capsys.readouterr()
    assert "Resuming from" in captured.out and "epoch_0001" in captured.out
    assert "epoch_0002" in captured.err and "Traceback" not in captured.err
    assert not os.path.exists(os.path.join(workdir, ".tmp-export-killed"))
    assert runs.checkpoint_problem(epoch_dir(workdir, 2)) is None
    assert runs.checkpoint_problem(runs.best_checkpoint(workdir)) is None
    assert second["best_epoch"] == first["best_epoch"]
    for key, value in first["test"].items():
        assert second["test"][key] == pytest.approx(value, abs=1e-4)


# ---------------------------------------------------------------------- disk full


def test_enospc_in_an_atomic_write_is_one_line_and_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "history.csv"
    path.write_text("old\n")

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io.os, "fsync", no_space)
    with pytest.raises(DiskFullError) as info:
        io.write_text_atomic(str(path), "new\n")
    assert str(info.value).startswith(f"no space left on device while writing {path}")
    assert "\n" not in str(info.value)
    assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["history.csv"]  # no temp file left


def test_enospc_inside_an_atomic_directory_names_the_final_path(tmp_path):
    target = tmp_path / "export"
    with pytest.raises(DiskFullError, match=f"while writing {target}"):
        with io.atomic_directory(str(target)) as tmp:
            raise OSError(errno.ENOSPC, "No space left on device", os.path.join(tmp, "variables.data"))
    with pytest.raises(DiskFullError, match=f"while writing {target}"):  # as TensorFlow reports it
        with io.atomic_directory(str(target)):
            raise RuntimeError("UNKNOWN: ...variables.data-00000-of-00001; No space left on device")
    assert os.listdir(tmp_path) == []


def fake_disk(free):
    usage = namedtuple("usage", "total used free")
    return lambda path: usage(10 ** 12, 10 ** 12 - free, free)


def test_a_checkpoint_that_cannot_fit_is_refused_before_h5py_writes(tmp_path, monkeypatch):
    write_epochs(tmp_path, [0.5, 0.7])
    model = tiny_model()
    callback = runs.EpochCheckpoint(str(tmp_path), "val_final_accuracy", 3, runs.read_state(epoch_dir(tmp_path, 2)))
    callback.set_model(model)
    saved = []
    monkeypatch.setattr(model, "save_weights", lambda path: saved.append(path))
    monkeypatch.setattr(io.shutil, "disk_usage", fake_disk(free=1000))
    with pytest.raises(DiskFullError) as info:
        callback.on_epoch_end(2, {"val_final_accuracy": 0.9})
    assert f"while writing {epoch_dir(tmp_path, 3)}" in str(info.value) and "1 kB free" in str(info.value)
    assert saved == []  # h5py never saw the full disk
    assert sorted(os.listdir(os.path.join(tmp_path, runs.CHECKPOINTS))) == ["best", "epoch_0001", "epoch_0002"]
    assert runs.read_state(runs.best_checkpoint(str(tmp_path)))["best_epoch"] == 2


def test_disk_full_during_training_is_one_line_from_bin_train(tmp_path):
    """A real bin/train process whose disk reports 1 kB free: one line, non-zero exit, no checkpoint."""
    workdir = tmp_path / "run"
    script = (
        "import collections, runpy, shutil, sys\n"
        "usage = collections.namedtuple('usage', 'total used free')\n"
        "shutil.disk_usage = lambda path: usage(10 ** 12, 10 ** 12 - 1000, 1000)\n"
        f"sys.argv = ['bin/train', '--method=baseline', '--workdir={workdir}', '--config.train.epochs=1',\n"
        "            '--config.data.max_train_examples=200', '--config.data.max_eval_examples=100',\n"
        "            '--config.model.width=0.0625', '--config.train.verbose=0', '--config.export.enabled=False']\n"
        f"runpy.run_path({os.path.join(REPO, 'bin', 'train')!r}, run_name='__main__')\n")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=SUBPROCESS_TIMEOUT)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    assert errors[0].startswith(f"error: no space left on device while writing {workdir}/checkpoints/epoch_0001: "
                                f"1 kB free")
    assert "Traceback" not in proc.stderr and "Segmentation" not in proc.stderr
    assert not os.path.exists(workdir / "checkpoints" / "epoch_0001")
    assert not [n for n in os.listdir(workdir / "checkpoints") if n.startswith(".tmp-")]


def test_stale_temporaries_are_cleaned_and_an_interrupted_swap_is_undone(tmp_path, capsys):
    write_epochs(tmp_path, [0.5, 0.7])
    root = os.path.join(tmp_path, runs.CHECKPOINTS)
    os.mkdir(os.path.join(tmp_path, ".tmp-export-abc"))
    os.mkdir(os.path.join(root, ".tmp-epoch_0003-xyz"))
    open(os.path.join(tmp_path, ".tmp-history.csvq1w2"), "w").close()
    # Killed between moving best aside and moving the new one in: the old best comes back.
    os.rename(os.path.join(root, "best"), os.path.join(root, ".old-best-k9"))
    capsys.readouterr()
    removed = runs.clean_stale_temporaries(str(tmp_path))
    assert sorted(removed) == [".tmp-export-abc", ".tmp-history.csvq1w2",
                               os.path.join(runs.CHECKPOINTS, ".tmp-epoch_0003-xyz")]
    assert sorted(os.listdir(root)) == ["best", "epoch_0001", "epoch_0002"]
    assert runs.checkpoint_problem(os.path.join(root, "best")) is None
    assert len(warnings_in(capsys)) == 1


# ---------------------------------------------------------------------- the workdir lock


def write_lock(workdir, pid, host=None):
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, runs.LOCK), "w") as f:
        json.dump({"pid": pid, "host": host or socket.gethostname(), "started_utc": "2024-01-01T00:00:00Z"}, f)


def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_held_lock_refuses_at_once_naming_the_owner(tmp_path):
    workdir = str(tmp_path / "run")
    write_lock(workdir, os.getppid())  # a live process on this host
    with pytest.raises(WorkdirError) as info:
        with runs.locked(workdir):
            pass
    message = str(info.value)
    assert f"pid {os.getppid()} on {socket.gethostname()}" in message and "\n" not in message
    assert os.listdir(workdir) == [runs.LOCK]  # left as it was
    write_lock(workdir, 1, host="elsewhere.example")  # another host: cannot tell, so refused too
    with pytest.raises(WorkdirError, match="pid 1 on elsewhere.example"):
        with runs.locked(workdir):
            pass


def test_a_stale_lock_is_taken_over_and_released(tmp_path, capsys):
    workdir = str(tmp_path / "run")
    stale = dead_pid()
    write_lock(workdir, stale)
    with runs.locked(workdir):
        with open(os.path.join(workdir, runs.LOCK)) as f:
            assert json.load(f)["pid"] == os.getpid()
    assert not os.path.exists(os.path.join(workdir, runs.LOCK))
    lines = warnings_in(capsys)
    assert len(lines) == 1 and f"pid {stale}" in lines[0]


def test_the_lock_works_without_hard_links(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(runs.os, "link", no_links)
    workdir = str(tmp_path / "run")
    with runs.locked(workdir):
        with open(os.path.join(workdir, runs.LOCK)) as f:
            assert json.load(f)["pid"] == os.getpid()
        with pytest.raises(WorkdirError, match=f"pid {os.getpid()} on"):  # a second holder is refused
            with runs.locked(workdir):
                pass
    assert not os.path.exists(workdir)  # created for the lock only, so removed with it


def test_workers_share_the_workdir_only_the_chief_locks(tmp_path, monkeypatch):
    workdir = str(tmp_path / "run")
    write_lock(workdir, os.getppid())  # held (e.g. by the chief)
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:2"]},
                                                "task": {"type": "worker", "index": 1}}))
    with runs.locked(workdir):
        pass
    assert os.path.exists(os.path.join(workdir, runs.LOCK))


def test_a_second_bin_train_on_a_locked_workdir_exits_2_before_any_work(tmp_path):
    workdir = tmp_path / "run"
    write_lock(str(workdir), os.getppid())
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, os.path.join(REPO, "bin", "train"), f"--workdir={workdir}",
                           "--method=baseline"], cwd=REPO, env=env, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"pid {os.getppid()} on {socket.gethostname()}" in errors[0]
    assert os.listdir(workdir) == [runs.LOCK]


# ---------------------------------------------------------------------- file modes


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.mark.parametrize("mask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_atomic_writes_follow_the_umask(tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    io.write_text_atomic(str(tmp_path / "a.json"), "{}")
    with io.atomic_directory(str(tmp_path / "folder")) as tmp:
        io.write_text_atomic(os.path.join(tmp, "b.json"), "{}")
    assert stat.S_IMODE(os.stat(tmp_path / "a.json").st_mode) == file_mode
    assert stat.S_IMODE(os.stat(tmp_path / "folder").st_mode) == dir_mode
    assert stat.S_IMODE(os.stat(tmp_path / "folder" / "b.json").st_mode) == file_mode


def test_exports_are_readable_by_other_users(tmp_path, umask):
    from tfkd import export
    from tfkd.models import build_backbone

    umask(0o022)
    network = build_backbone("resnet18", num_classes=3, width=0.0625, input_shape=(8, 8, 1))
    network.ensure_built()
    path = export.export_saved_model(network, str(tmp_path / "export"))
    modes = {}
    for folder, dirs, files in os.walk(path):
        modes[folder] = stat.S_IMODE(os.stat(folder).st_mode)
        for name in files:
            modes[os.path.join(folder, name)] = stat.S_IMODE(os.stat(os.path.join(folder, name)).st_mode)
    assert {p: m for p, m in modes.items() if m not in (0o644, 0o755)} == {}
    assert modes[path] == 0o755 and modes[os.path.join(path, export.METADATA_FILE)] == 0o644


# ---------------------------------------------------------------------- resuming across tfkd versions


def test_resume_accepts_fields_a_newer_tfkd_added_at_their_defaults(tmp_path):
    """A run folder written before a config field existed resumes when the field has its default
    (the behaviour the run had), and is refused when the field is set to something else."""
    from tfkd.config import base_config, config_json, resolve

    config = resolve(base_config(), method="self_distill")
    old = config_json(config)
    del old["fewshot"]["val_way"], old["self_distill"]["tau"]  # as if written before both fields existed
    io.write_json_atomic(str(tmp_path / runs.CONFIG), old)
    assert runs.prepare_workdir(str(tmp_path), config) is True

    changed = resolve(base_config(), method="self_distill")
    changed.self_distill.tau = config.self_distill.tau + 1.0
    with pytest.raises(WorkdirError, match=r"different config \(self_distill\.tau: '<absent>' -> "):
        runs.prepare_workdir(str(tmp_path), changed)


DAMAGE = {"truncated": b'{"method": "baseline", "tra', "not_utf8": b"\xff\xfe\x00{", "wrong_type": b"[1, 2]\n"}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_config_json_is_one_clear_error_when_resuming(tmp_path, damage):
    """Resuming reads the folder's config.json to compare it with the new config: a damaged file
    (disk fault, hand edit) names itself and the way out; --overwrite still starts over."""
    from tfkd.config import base_config, resolve

    config = resolve(base_config(), method="baseline")
    (tmp_path / runs.CONFIG).write_bytes(DAMAGE[damage])
    with pytest.raises(WorkdirError, match=rf"{runs.CONFIG} (is not valid JSON|holds a JSON list).*--overwrite"):
        runs.prepare_workdir(str(tmp_path), config)
    assert (tmp_path / runs.CONFIG).read_bytes() == DAMAGE[damage]  # nothing replaced by the refusal
    assert runs.prepare_workdir(str(tmp_path), config, overwrite=True) is False


def test_a_damaged_run_info_is_refused_instead_of_replaced(tmp_path):
    """run_info.json holds every start's seed and revision: a damaged one must not be silently
    rewritten with the new start alone."""
    from tfkd.config import base_config, resolve

    config = resolve(base_config(), method="baseline")
    (tmp_path / runs.RUN_INFO).write_bytes(DAMAGE["truncated"])
    with pytest.raises(WorkdirError, match=rf"{runs.RUN_INFO} is not valid JSON"):
        runs.write_run_files(str(tmp_path), config, {"arch": "resnet18"}, {})
    assert (tmp_path / runs.RUN_INFO).read_bytes() == DAMAGE["truncated"]
