"""bin/train end to end: resume after kill -9, workdir protection, clear errors on bad input."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, SUBPROCESS_TIMEOUT

TINY_FLAGS = [
    "--config.data.max_train_examples=1500",
    "--config.data.max_eval_examples=300",
    "--config.model.arch=resnet10",  # ResNet18's stages and exits, half its blocks: what these tests check is bin/train
    "--config.model.width=0.125",
    "--config.train.batch_size=64",
    "--config.train.learning_rate=0.1",
    "--config.train.lr_boundaries=(2,)",
    "--config.train.verbose=2",
]


def bin_train(*args, **kwargs):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.Popen([sys.executable, os.path.join(REPO, "bin", "train"), *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def run_to_end(*args, timeout=SUBPROCESS_TIMEOUT):
    proc = bin_train(*args)
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


# One intra-op thread: the config's thread pools reach the run (provenance test) and resuming with
# them is the same config (resume test).
RUN_ARGS = ["--method=self_distill", "--config.train.epochs=3", "--seed=7", "--config.train.intra_op_threads=1",
            *TINY_FLAGS]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """One uninterrupted bin/train run, shared: the reference of the resume test, and the run whose
    files and console output the provenance test reads (each bin/train start costs seconds of CPU)."""
    workdir = tmp_path_factory.mktemp("train") / "straight"
    rc, out = run_to_end(f"--workdir={workdir}", *RUN_ARGS)
    assert rc == 0, out
    return workdir, out


def test_resume_after_kill_matches_uninterrupted_run(tmp_path, straight_run):
    args = RUN_ARGS
    straight, _ = straight_run
    killed = tmp_path / "killed"
    proc = bin_train(f"--workdir={killed}", *args)
    first = killed / "checkpoints" / "epoch_0001" / "state.json"
    deadline = time.time() + 240
    while not first.exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "epoch 1 never finished"
        time.sleep(0.2)
    time.sleep(1.0)  # into epoch 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "metrics.json").exists()
    assert not (killed / "checkpoints" / "epoch_0003").exists()

    rc, out = run_to_end(f"--workdir={killed}", *args)
    assert rc == 0, out
    assert "Resuming from" in out
    a = json.loads((straight / "metrics.json").read_text())
    b = json.loads((killed / "metrics.json").read_text())
    assert a["best_epoch"] == b["best_epoch"]
    for split in ("val", "test"):
        for key, value in a[split].items():
            assert b[split][key] == pytest.approx(value, abs=1e-4), (split, key)
    starts = json.loads((killed / "run_info.json").read_text())
    assert [s["resumed"] for s in starts] == [False, True]
    history = (killed / "history.csv").read_text().strip().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == ["1", "2", "3"]

    # A finished run is never silently overwritten: same command again -> refused, untouched.
    before = (killed / "metrics.json").stat().st_mtime_ns
    rc, out = run_to_end(f"--workdir={killed}", *args)
    assert rc == 2 and "finished run" in out
    assert (killed / "metrics.json").stat().st_mtime_ns == before
    # A different config in the same workdir is refused too (after --overwrite it would restart).
    (killed / "metrics.json").rename(killed / "metrics.bak")
    rc, out = run_to_end(f"--workdir={killed}", *args, "--config.self_distill.alpha=0.3")
    assert rc == 2 and "different config" in out and "alpha" in out


def test_run_writes_provenance_and_logs(straight_run):
    workdir, out = straight_run
    config = json.loads((workdir / "config.json").read_text())
    assert config["method"] == "self_distill" and config["seed"] == 7  # --method, --seed over the config file's
    assert "metadistiller" not in config and "dsn" not in config  # only the chosen method's section is recorded
    info = json.loads((workdir / "run_info.json").read_text())[0]
    assert info["seed"] == 7 and info["git_revision"]
    # The numbers depend on TensorFlow's thread counts: recorded as the environment set them.
    assert info["threads"] == {"intra_op": 1,  # --config.train.intra_op_threads=1 over the environment's
                               "inter_op": int(os.environ.get("TF_NUM_INTEROP_THREADS") or 0),
                               "cpu_count": os.cpu_count()}, info
    # ... and on the CPU's instruction set (oneDNN's kernels), so the model name is recorded too.
    with open("/proc/cpuinfo") as f:
        models = {line.split(":", 1)[1].strip() for line in f if line.startswith("model name")}
    assert info["cpu"] in models, info
    events = [f for _, _, files in os.walk(workdir / "logs") for f in files if "tfevents" in f]
    assert len(events) >= 2  # train and validation curves
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert set(metrics["test"]) >= {"final_accuracy", "ensemble_accuracy", "exit_1_accuracy", "loss"}
    assert (workdir / "export" / "saved_model.pb").exists()
    # The per-epoch progress line, then the per-exit table.
    assert "val_final_accuracy" in out and "ensemble" in out and "exit_3" in out


@pytest.mark.parametrize("flags,expected", [
    (["--method=nope"], "config.method='nope': expected one of ['at', 'baseline', 'cosine', 'dist', 'dml', 'dsn'"),
    (["--config.data.data_dir=/nonexistent/fmnist"], "/nonexistent/fmnist"),
    (["--config.train.select_metric=test_final_accuracy"], "config.train.select_metric"),
    (["--config.train.epochs=0"], "config.train.epochs"),
    (["--config.model.arch=resnet7"], "config.model.arch"),
    (["--method=self_distill", "--config.self_distill.alpha=1.5"], "config.self_distill.alpha"),
    (["--config.metadistiller.outer_outputs=exits"], "config.metadistiller.outer_outputs"),
    (["--config.model.exit_head=residual"], "config.model.exit_head='residual': expected 'auto', 'bottleneck'"),
    (["--config.data.name=glyphz"], "glyphz"),
    (["--config.train.intra_op_threads=-1"], "config.train.intra_op_threads=-1: expected 0"),
])
def test_bad_input_fails_fast_with_clear_error(tmp_path, flags, expected):
    workdir = tmp_path / "w"
    start = time.time()
    rc, out = run_to_end(f"--workdir={workdir}", *flags, timeout=SUBPROCESS_TIMEOUT)
    assert rc == 2
    assert expected in out, out[-2000:]
    assert "Traceback" not in out
    assert time.time() - start < 60
    assert not workdir.exists()  # nothing half-written


def test_unknown_config_field_is_rejected(tmp_path):
    rc, out = run_to_end(f"--workdir={tmp_path / 'w'}", "--config.train.epochz=3", timeout=SUBPROCESS_TIMEOUT)
    assert rc == 2 and "Traceback" not in out, out[-2000:]
    assert "error: --config.train.epochz=3: the config has no field 'epochz'; did you mean 'epochs'?" in out
    assert not (tmp_path / "w").exists()


def test_thread_pools_once_started_keep_their_counts_and_a_change_is_warned_about():
    """TensorFlow fixes its thread pools when its runtime starts (this test process has started it):
    asking for the counts it already has is silent, another count is one warning, not ignored."""
    import warnings

    import tensorflow as tf

    from tfkd import io
    from tfkd.distribute import set_thread_counts

    tf.constant(1.0) + 1.0  # the runtime has started
    current = io.thread_counts()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        set_thread_counts(0, 0)
        set_thread_counts(current["intra_op"], current["inter_op"])
    with pytest.warns(RuntimeWarning, match=r"config.train.intra_op_threads=\d+ not applied: TensorFlow already"):
        set_thread_counts(current["intra_op"] + 1, 0)
    with pytest.warns(RuntimeWarning, match=r"config.train.inter_op_threads=\d+ not applied"):
        set_thread_counts(0, current["inter_op"] + 1)
    assert io.thread_counts() == current
