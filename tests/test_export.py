"""SavedModel export: fresh-process reload gives the in-memory outputs; bad requests are rejected."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import REPO, SUBPROCESS_TIMEOUT
from tfkd import export, train
from tfkd import io as tfkd_io
from tfkd.errors import WorkdirError


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    from tests.conftest import tiny_config

    workdir = str(tmp_path_factory.mktemp("export") / "run")
    train.run(tiny_config(method="self_distill", epochs=1, train_examples=1000, eval_examples=200,
                          learning_rate=0.03), workdir)
    return workdir


def test_export_reloads_in_fresh_process_with_same_outputs(finished_run):
    network, config, class_names, _ = export.restore_network(finished_run, "best")
    path = os.path.join(finished_run, "export")
    diff = export.check_export(network, path, num_images=6)
    assert diff < 1e-5
    meta = export.load_metadata(path)
    assert meta["method"] == "self_distill" and meta["num_classes"] == 10 and meta["input_shape"] == [28, 28, 1]
    assert meta["class_names"][0] == "T-shirt/top" and meta["git_revision"]


def test_export_has_no_exit_heads_and_serves_dynamic_batches(finished_run):
    path = os.path.join(finished_run, "export")
    loaded = tf.saved_model.load(path)
    serve = loaded.signatures["serving_default"]
    network, *_ = export.restore_network(finished_run, "best")
    # Exactly the inference path's parameters are saved: no exit heads.
    reader = tf.train.load_checkpoint(os.path.join(path, "variables", "variables"))
    saved = sum(int(np.prod(shape)) for name, shape in reader.get_variable_to_shape_map().items()
                if name.endswith("VARIABLE_VALUE"))
    inference = sum(int(np.prod(v.shape)) for v in network.inference_variables())
    exits = sum(int(np.prod(v.shape)) for h in network.exit_heads for v in h.variables)
    assert saved == inference and exits > 0
    rng = np.random.default_rng(1)
    for batch in (1, 5):
        images = rng.integers(0, 256, (batch, 28, 28, 1), dtype=np.uint8)
        out = serve(images=tf.constant(images))
        want = tf.nn.softmax(network.predict_final(tf.cast(images, tf.float32))).numpy()
        np.testing.assert_allclose(out["probabilities"].numpy(), want, atol=1e-5)
        np.testing.assert_array_equal(out["top_k_classes"].numpy()[:, 0], want.argmax(-1))
        assert out["top_k_classes"].shape == (batch, 5)
    logits = loaded.signatures["logits"](images=tf.constant(images))["logits"]
    np.testing.assert_allclose(tf.nn.softmax(logits).numpy(), want, atol=1e-5)


@pytest.mark.parametrize("bad", [
    np.zeros((2, 28, 28, 3), np.uint8),   # wrong channels
    np.zeros((2, 32, 32, 1), np.uint8),   # wrong size
    np.zeros((28, 28, 1), np.uint8),      # wrong rank
    np.zeros((2, 28, 28, 1), np.float32),  # wrong dtype
])
def test_bad_requests_are_rejected(finished_run, bad):
    serve = tf.saved_model.load(os.path.join(finished_run, "export")).signatures["serving_default"]
    with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError)) as e:
        serve(images=tf.constant(bad))
    assert "images must be uint8 of shape [batch, 28, 28, 1]" in str(e.value) or "uint8" in str(e.value)


def test_bin_export_refuses_then_replaces_atomically(finished_run, tmp_path):
    out_dir = tmp_path / "exported"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    # No --check: its reload in a fresh process (one more TensorFlow start) is checked by
    # test_export_reloads_in_fresh_process_with_same_outputs and by the README chain's bin/export --check.
    cmd = [sys.executable, os.path.join(REPO, "bin", "export"), f"--workdir={finished_run}", f"--output={out_dir}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=SUBPROCESS_TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out_dir / "saved_model.pb").exists()
    # An existing export is not replaced silently: one line, exit 2, the export untouched.
    before = {f: os.path.getmtime(os.path.join(out_dir, f)) for f in os.listdir(out_dir)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=SUBPROCESS_TIMEOUT)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert [line for line in proc.stderr.splitlines() if line.startswith("error:")] == [
        f"error: --output={out_dir} already exists (an earlier export?); pass --overwrite to replace it, or choose "
        f"another --output"]
    assert {f: os.path.getmtime(os.path.join(out_dir, f)) for f in os.listdir(out_dir)} == before
    # --overwrite replaces the folder whole; no temp folders are left beside it.
    proc = subprocess.run(cmd + ["--overwrite"], capture_output=True, text=True, env=env,
                          timeout=SUBPROCESS_TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(os.listdir(tmp_path)) == ["exported"]
    assert {f: os.path.getmtime(os.path.join(out_dir, f)) for f in os.listdir(out_dir)} != before  # replaced
    # A folder that is not a run gives a clear error and writes nothing.
    proc = subprocess.run([sys.executable, os.path.join(REPO, "bin", "export"), f"--workdir={tmp_path}/nope"],
                          capture_output=True, text=True, env=env, timeout=SUBPROCESS_TIMEOUT)
    assert proc.returncode == 2 and "config.json" in proc.stderr and "Traceback" not in proc.stderr


def test_a_concurrent_export_to_the_same_folder_is_refused_at_once(finished_run, tmp_path):
    """Two exports to one new folder would both pass the 'already exists' check, write for a minute,
    and the later one would replace the other's export without --overwrite."""
    import socket

    out_dir = tmp_path / "exported"
    with tfkd_io.sole_writer(str(out_dir), "--output"):  # as a running bin/export holds it
        proc = subprocess.run([sys.executable, os.path.join(REPO, "bin", "export"), f"--workdir={finished_run}",
                               f"--output={out_dir}"], capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT,
                              env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert [line for line in proc.stderr.splitlines() if line.startswith("error:")] == [
        f"error: --output={out_dir} is being written by pid {os.getpid()} on {socket.gethostname()}; wait for it "
        f"to finish, or choose another --output"]
    assert os.listdir(tmp_path) == []  # nothing written, and the holder's lock file is gone with it


def test_a_lock_left_by_a_killed_export_does_not_block_the_next(tmp_path):
    """The lock is the OS's (flock): a lock file whose writer was killed holds no lock."""
    out_dir = str(tmp_path / "exported")
    (tmp_path / ".exported.lock").write_text("pid 999999 on elsewhere")
    with tfkd_io.sole_writer(out_dir, "--output"):
        with pytest.raises(WorkdirError, match="is being written by pid"):
            with tfkd_io.sole_writer(out_dir, "--output"):  # a second writer, while the first is inside
                pass
    assert os.listdir(tmp_path) == []


def test_check_export_catches_a_tampered_export(finished_run, tmp_path):
    network, *_ = export.restore_network(finished_run, "best")
    path = str(tmp_path / "tampered")
    export.export_saved_model(network, path)
    # The same architecture with a changed final classifier stands in for a tampered export.
    other, *_ = export.restore_network(finished_run, "best")
    other.classifier.kernel.assign(-other.classifier.kernel)
    export.export_saved_model(other, path)
    with pytest.raises(RuntimeError, match="disagrees"):
        export.check_export(network, path)


def test_failed_export_leaves_previous_export_intact(finished_run, tmp_path, monkeypatch):
    network, *_ = export.restore_network(finished_run, "best")
    path = str(tmp_path / "export")
    export.export_saved_model(network, path)
    before = sorted(os.listdir(path))

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tf.saved_model, "save", boom)
    with pytest.raises(OSError):
        export.export_saved_model(network, path)
    assert sorted(os.listdir(path)) == before
    assert sorted(os.listdir(tmp_path)) == ["export"]
    assert json.load(open(os.path.join(path, export.METADATA_FILE)))["num_classes"] == 10


def test_saved_model_cli_shows_the_documented_signatures(finished_run):
    """The serving contract as TensorFlow's own tool reads it."""
    import shutil
    import subprocess

    workdir = finished_run
    cli = shutil.which("saved_model_cli")
    if cli is None:
        pytest.skip("saved_model_cli is not on PATH")
    out = subprocess.run([cli, "show", "--all", "--dir", os.path.join(workdir, "export")], capture_output=True,
                         text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert out.returncode == 0, out.stderr[-2000:]
    for text in ("signature_def['serving_default']", "signature_def['logits']", "inputs['images']",
                 "DT_UINT8", "outputs['probabilities']", "outputs['top_k_classes']", "(-1, 28, 28, 1)"):
        assert text in out.stdout, text


def test_large_batches_are_served_slice_by_slice_with_one_pass_answers(finished_run):
    """A request larger than SERVING_CHUNK runs through the network in slices (4096 28x28 images in
    one pass peaked at 1 GB), with the answers of one pass; empty and partial slices included."""
    loaded = tf.saved_model.load(os.path.join(finished_run, "export"))
    network, *_ = export.restore_network(finished_run, "best")
    images = np.random.default_rng(2).integers(0, 256, (export.SERVING_CHUNK + 37, 28, 28, 1), dtype=np.uint8)
    out = loaded.signatures["serving_default"](images=tf.constant(images))["probabilities"].numpy()
    want = tf.nn.softmax(network.predict_final(tf.cast(images, tf.float32))).numpy()
    assert out.shape == (len(images), 10)
    np.testing.assert_allclose(out, want, atol=1e-5)
    empty = loaded.signatures["logits"](images=tf.zeros((0, 28, 28, 1), tf.uint8))["logits"]
    assert empty.shape == (0, 10)
    logits = lambda x: network.predict_final(tf.cast(x, tf.float32))  # noqa: E731
    np.testing.assert_allclose(export.in_chunks(logits, tf.constant(images[:8]), 10, chunk=3).numpy(),
                               logits(images[:8]).numpy(), atol=1e-5)
