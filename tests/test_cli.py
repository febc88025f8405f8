"""Every bin/ script turns a user mistake into one line ``error: ...`` and exit status 2 before any
work: a missing config file, a bad flag value, an unknown config field, a bad seed, a --workdir
that is a file or on a read-only file system, a label outside the class list. The scripts run as
real subprocesses, all cases at once (each start imports TensorFlow: seconds of CPU). An unknown
config field and bad config values are covered in tests/test_train.py."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO, SUBPROCESS_TIMEOUT


def _read_only_prefix(folder):
    """A command prefix under which ``folder`` is on a read-only file system, or None.

    As root, permission bits do not stop writes, so a read-only tmpfs is mounted over the folder in
    a private mount namespace (``unshare``); otherwise the folder is made read-only by chmod."""
    os.makedirs(folder)
    if os.geteuid() != 0:
        os.chmod(folder, 0o555)
        return []
    unshare = shutil.which("unshare")
    if not unshare:
        return None
    probe = subprocess.run([unshare, "-rm", "sh", "-c", f"mount -t tmpfs -o ro tmpfs {folder} && true"],
                           capture_output=True)
    if probe.returncode != 0:
        return None
    return [unshare, "-rm", "sh", "-c", f'mount -t tmpfs -o ro tmpfs {folder} && exec "$@"', "sh"]


def _glyphs_with_a_stray_label(path):
    labels = np.repeat(np.arange(5), 4)
    labels[7] = 100000
    np.savez(path, images=np.zeros((len(labels), 28, 28), np.uint8), labels=labels,
             class_names=np.array([f"c{i}" for i in range(5)]))
    return str(path)


def _cases(tmp):
    """name -> (command, expected text in the error line, paths that must not exist afterwards)."""
    a_file = os.path.join(tmp, "a_file")
    open(a_file, "w").close()
    w = lambda name: os.path.join(tmp, name)  # noqa: E731
    script = lambda name: [sys.executable, os.path.join(REPO, "bin", name)]  # noqa: E731
    glyphs = _glyphs_with_a_stray_label(os.path.join(tmp, "glyphs.npz"))
    cases = {
        "train_missing_config": (script("train") + ["--config=configs/nonexistent.py", f"--workdir={w('t1')}"],
                                 "--config=configs/nonexistent.py: no such config file", [w("t1")]),
        "train_bad_value": (script("train") + ["--config.train.epochs=abc", f"--workdir={w('t2')}"],
                            "--config.train.epochs=abc", [w("t2")]),
        "train_negative_seed": (script("train") + ["--seed=-1", f"--workdir={w('t4')}"],
                                "--seed=-1: expected an integer seed", [w("t4")]),
        "train_workdir_is_a_file": (script("train") + [f"--workdir={a_file}"],
                                    f"--workdir={a_file} is a file", []),
        "train_label_outside_class_names": (
            script("train") + ["--config.data.name=glyphs", f"--config.data.data_dir={glyphs}", f"--workdir={w('t5')}"],
            "label 100000 (row 7", [w("t5")]),
        "tune_missing_config": (script("tune") + ["--config=configs/nonexistent.py", f"--workdir={w('u1')}"],
                                "no such config file", [w("u1")]),
        "tune_negative_seed": (script("tune") + ["--seed=-1", f"--workdir={w('u2')}"],
                               "--seed=-1: expected an integer seed", [w("u2")]),
        "evaluate_negative_seed": (script("evaluate") + [f"--workdir={w('e1')}", "--seed=-1"],
                                   "--seed=-1: expected an integer seed", []),
        "extract_output_is_a_file": (script("extract_features") + [f"--workdir={w('x1')}", f"--output={a_file}"],
                                     f"--output={a_file} is a file", []),
        "export_bad_flag_value": (script("export") + [f"--workdir={w('p1')}", "--top_k=many"],
                                  "--top_k=many", [w("p1")]),
    }
    read_only = w("read_only")
    prefix = _read_only_prefix(read_only)
    if prefix is not None:
        cases["train_read_only_workdir"] = (prefix + script("train") + [f"--workdir={read_only}/run"],
                                            "read-only file system", [])
    return cases


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Runs the cases a few at a time (each process holds ~0.7 GB once TensorFlow is imported)."""
    tmp = str(tmp_path_factory.mktemp("cli"))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    cases = list(_cases(tmp).items())
    at_once = max(2, os.cpu_count() or 1)
    out = {}
    for start in range(0, len(cases), at_once):
        wave = {name: (subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True), expected, absent)
                for name, (cmd, expected, absent) in cases[start:start + at_once]}
        for name, (proc, expected, absent) in wave.items():
            out[name] = (proc.communicate(timeout=SUBPROCESS_TIMEOUT), proc.returncode, expected, absent)
    return out


CASES = ["train_missing_config", "train_bad_value", "train_negative_seed",
         "train_workdir_is_a_file", "train_read_only_workdir", "train_label_outside_class_names",
         "tune_missing_config", "tune_negative_seed", "evaluate_negative_seed", "extract_output_is_a_file",
         "export_bad_flag_value"]


@pytest.mark.parametrize("case", CASES)
def test_user_mistake_is_one_error_line_and_exit_2(results, case):
    if case not in results:
        pytest.skip("no way to mount a read-only file system here (needs unshare, or a non-root user)")
    (out, err), rc, expected, absent = results[case]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 2, err[-3000:]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]), err[-3000:]
    assert expected.lower() in errors[0].lower(), errors[0]
    assert "Traceback" not in err and "Epoch" not in out
    for path in absent:
        assert not os.path.exists(path), f"{path} was written"


def _no_tensorflow(tmp):
    """A PYTHONPATH entry whose ``tensorflow`` and ``keras`` fail to import: a script that still
    reports the user's mistake as its one error line checked it before importing them."""
    for name in ("tensorflow", "keras"):
        os.makedirs(os.path.join(tmp, name), exist_ok=True)
        with open(os.path.join(tmp, name, "__init__.py"), "w") as f:
            f.write(f"raise ImportError('{name} was imported before the request was checked')\n")
    return tmp


@pytest.mark.parametrize("script,args,expected", [
    ("evaluate", ["--workdir={tmp}/nope"], "has no config.json: not a tfkd run folder"),
    ("evaluate", ["--workdir={tmp}/nope", "--seed=-1"], "--seed=-1: expected an integer seed"),
    ("evaluate", ["--workdir={tmp}/nope", "--output={tmp}"], "is a folder; expected a file name"),
    ("export", ["--workdir={tmp}/nope"], "has no config.json: not a tfkd run folder"),
    ("export", ["--workdir={tmp}/nope", "--output={tmp}"], "already exists (an earlier export?)"),
    ("extract_features", ["--workdir={tmp}/nope", "--output={tmp}/features"], "not a tfkd run folder"),
    ("extract_features", ["--workdir={tmp}/nope", "--output={tmp}/a_file"], "is a file, not a folder"),
    # Config mistakes: tfkd.config and every method's section (tfkd.method_config) need no TensorFlow.
    ("train", ["--workdir={tmp}/w", "--method=self_distill", "--config.self_distill.alpha=1.5"],
     "config.self_distill.alpha must be in [0, 1]"),
    ("train", ["--workdir={tmp}/w", "--method=nope"], "config.method='nope': expected one of"),
    ("train", ["--workdir={tmp}/w", "--config.train.epochs=0"], "config.train.epochs=0: expected a positive"),
    ("train", ["--workdir={tmp}/w", "--method=progressive", "--config.fewshot.features_dir={tmp}",
               "--config.progressive.direction=up"],
     "direction='up': expected one of"),
    ("train", ["--workdir={tmp}/w", "--config=configs/nonexistent.py"], "no such config file"),
    ("train", ["--workdir={tmp}/a_file"], "--workdir={tmp}/a_file is a file, not a folder"),
    ("train", ["--workdir={tmp}/finished"], "--workdir={tmp}/finished holds a finished run (metrics.json); use a new"),
    ("tune", ["--workdir={tmp}/w", "--method=metadistiller", "--config.metadistiller.tau=0"],
     "config.metadistiller.tau=0.0: expected > 0"),
    ("visualize", ["--output={tmp}/figures"], "nothing to draw: pass --workdir=RUN"),
    ("visualize", ["--workdir={tmp}/nope", "--output={tmp}/figures"], "--workdir={tmp}/nope is not a folder"),
    ("visualize", ["--workdir={tmp}", "--output={tmp}/figures"], "has no config.json: not a tfkd run folder"),
    ("visualize", ["--results={tmp}/a_file", "--output={tmp}/figures"], "is not valid JSON"),
    ("visualize", ["--output={tmp}/figures", "--dpi=sharp"], "--dpi=sharp"),
    # A stray positional argument (e.g. a config path without --config=) instead of absl's usage text.
    *[(script, required + ["configs/fashion_mnist_resnet18.py"],
       "unexpected argument(s) configs/fashion_mnist_resnet18.py: expected only --flag=value settings")
      for script, required in [("train", ["--workdir={tmp}/w"]), ("tune", ["--workdir={tmp}/w"]),
                               ("evaluate", ["--workdir={tmp}/w"]), ("export", ["--workdir={tmp}/w"]),
                               ("extract_features", ["--workdir={tmp}/w", "--output={tmp}/out"]),
                               ("visualize", ["--output={tmp}/out"])]],
])
def test_scripts_refuse_a_bad_request_before_importing_tensorflow(tmp_path, script, args, expected):
    tmp = str(tmp_path)
    open(os.path.join(tmp, "a_file"), "w").close()
    os.makedirs(os.path.join(tmp, "finished"))
    open(os.path.join(tmp, "finished", "metrics.json"), "w").close()
    env = dict(os.environ, PYTHONPATH=_no_tensorflow(os.path.join(tmp, "stubs")))
    proc = subprocess.run([sys.executable, os.path.join(REPO, "bin", script), *[a.format(tmp=tmp) for a in args]],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-3000:]
    assert expected.format(tmp=tmp) in errors[0], errors[0]


@pytest.mark.parametrize("script", ["evaluate", "export", "extract_features", "visualize"])
@pytest.mark.parametrize("name,content,expected", [
    ("config.json", b'{"method": "base', "config.json is not valid JSON"),
    ("network.json", b"\xff\xfe{}", "network.json is not valid JSON (not UTF-8 text"),
    ("network.json", b"[]", "network.json holds a JSON list, not a JSON object"),
])
def test_a_damaged_run_file_is_one_error_line_before_importing_tensorflow(tmp_path, script, name, content,
                                                                          expected):
    """A run folder's config.json / network.json damaged on disk (or edited by hand) was a
    JSONDecodeError traceback: now every reader names the file and what would fix it."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"method": "baseline"}')
    (run / "network.json").write_text('{"arch": "resnet18"}')
    (run / name).write_bytes(content)
    args = {"visualize": [f"--workdir={run}", f"--output={tmp_path}/figures"],
            "extract_features": [f"--workdir={run}", f"--output={tmp_path}/features"]}.get(script, [f"--workdir={run}"])
    env = dict(os.environ, PYTHONPATH=_no_tensorflow(str(tmp_path / "stubs")))
    proc = subprocess.run([sys.executable, os.path.join(REPO, "bin", script), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-3000:]
    assert expected in errors[0] and "--overwrite or a new --workdir" in errors[0], errors[0]
    assert not os.path.exists(tmp_path / "figures") and not os.path.exists(tmp_path / "features")
