"""Benchmarks that train for hours refuse a request they cannot honour before any training: the
PyTorch reference only reproduces some regimes, and a gamma sweep needs its table's features."""
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, SUBPROCESS_TIMEOUT


def run_benchmark(script, *args):
    proc = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", script), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    return proc.returncode, proc.stderr


def assert_one_error_line(rc, err, expected):
    """The contract of bin/ (tests/test_cli.py) holds for benchmarks too: exit status 2, one line."""
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 2 and len(errors) == 1 and expected in errors[0], err[-2000:]
    assert "Traceback" not in err and "USAGE" not in err, err[-2000:]


@pytest.mark.parametrize("script,args,expected", [
    ("self_boosting_table.py", ["--regime=converge", "--runs_dir={tmp}/runs", "glyphs"],
     "unexpected argument(s) glyphs"),
    ("self_boosting_table.py", ["--regime=small_data", "--runs_dir={tmp}/runs", "--name=never_written"],
     "--datasets=glyphs: the small_data regime has no config configs/bench_glyphs_small_data.py; "
     "expected one of ['fashion_mnist']"),
    ("step_cost.py", ["--repeats=many"], "--repeats=many"),
    ("first_step.py", ["--against={tmp}", "--against_grappler_off", "--name=never_written"],
     "--against and --against_grappler_off: expected at most one of them"),
    ("metadistiller_targets.py", [], "no --workdir given"),
    ("serving.py", ["--name=never_written"], "--workdir (a classification run) or --fewshot_workdir"),
    ("serving.py", ["--fewshot_workdir={tmp}", "--fewshot_ways=5,many", "--name=never_written"],
     "--fewshot_ways=5,many: expected class counts of at least 2, or all"),
    ("fewshot_table.py", ["--runs_dir={tmp}/runs", "--name=never_written", "--row_override=dist.gamma=5"],
     "expected ROW:field=value"),
    ("fewshot_table.py", ["--runs_dir={tmp}/runs", "--name=never_written", "--row_override=distill:dist.gamma=5"],
     "expected ROW:field=value with ROW one of cosine"),
    ("fewshot_table.py", ["--runs_dir={tmp}/runs", "--name=never_written", "--tune_as=dist_down:dist_down_ensemble"],
     "--tune_as=dist_down:dist_down_ensemble: expected ROW:SOURCE"),
    ("fewshot_table.py", ["--runs_dir={tmp}/runs", "--name=never_written", "--methods=cosine,dist_down",
                          "--tune_as=dist_down:dist"], "expected dist among --methods=cosine,dist_down"),
    ("fewshot_table.py", ["--runs_dir={tmp}/runs", "--name=never_written", "--reuse_searches_from=no_such_table"],
     "--reuse_searches_from=no_such_table: expected the name of a results file"),
    ("fewshot_base_holdout.py", ["--runs_dir={tmp}/runs", "--holdout=2"], "--holdout=2: expected >= 3"),
    ("fewshot_base_holdout.py", ["--runs_dir={tmp}/runs", "--gammas=0.5,5"], "expected 0 (the reference)"),
    ("fewshot_base_holdout.py", ["--runs_dir={tmp}/runs", "--table=fewshot_table_glyphs"], "has no tuned gen row"),
    ("fewshot_base_holdout.py", ["--runs_dir={tmp}/runs", "--student=embedding_units=none"],
     "expected dist.FIELD=VALUE"),
    ("fewshot_base_holdout.py", ["--runs_dir={tmp}/runs", "--method=progressive", "--student=gen.num_generated=2"],
     "expected dist.FIELD=VALUE or progressive.FIELD=VALUE"),
])
def test_benchmarks_refuse_bad_flags_in_one_line(tmp_path, script, args, expected):
    """absl alone prints the whole usage text and exits 1 on a stray argument or a bad value."""
    rc, err = run_benchmark(script, *[a.format(tmp=tmp_path) for a in args])
    assert_one_error_line(rc, err, expected)
    assert not os.path.exists(tmp_path / "runs")


def _reference_dir(tmp_path):
    """A stand-in for ../shared/reference (absent outside this checkout's workspace): the checks under
    test refuse before the reference script would run."""
    folder = tmp_path / "reference"
    folder.mkdir(exist_ok=True)
    (folder / "byot_train.py").write_text("raise SystemExit('the reference must not run in this test')\n")
    return str(folder)


def _config_file(tmp_path, line):
    """The convergent Fashion-MNIST regime with ``line`` applied to it."""
    base = os.path.join(REPO, "configs", "bench_fashion_mnist_converge.py")
    path = tmp_path / "regime.py"
    path.write_text("import importlib.util\n\n\ndef get_config():\n"
                    f"    spec = importlib.util.spec_from_file_location('c', {base!r})\n"
                    "    module = importlib.util.module_from_spec(spec)\n"
                    "    spec.loader.exec_module(module)\n"
                    "    c = module.get_config()\n"
                    f"    {line}\n"
                    "    return c\n")
    return str(path)


@pytest.mark.parametrize("line,expected", [
    ("c.data.name = 'glyphs'", "data.name='glyphs', but the reference only runs data.name='fashion_mnist'"),
    ("c.train.weight_decay = 1e-4", "train.weight_decay=0.0001, but the reference only runs"),
    ("c.train.lr_schedule = 'cosine'", "train.lr_schedule='cosine', but the reference only runs"),
    ("c.metadistiller.meta_every_steps = 4", "metadistiller.meta_every_steps=4"),
    ("c.self_distill.alpha = 0.3", "one --alpha/--tau for SD and MetaDistiller"),
])
def test_reference_table_refuses_a_regime_the_reference_cannot_run(tmp_path, line, expected):
    rc, err = run_benchmark("reference_table.py", f"--reference_python={sys.executable}",
                            f"--reference_dir={_reference_dir(tmp_path)}",
                            f"--config={_config_file(tmp_path, line)}", f"--runs_dir={tmp_path}/runs",
                            "--name=never_written")
    assert_one_error_line(rc, err, expected)
    assert not os.path.exists(os.path.join(REPO, "benchmarks", "results", "never_written.json"))
    assert not os.path.exists(tmp_path / "runs")


def test_gamma_sweep_refuses_without_the_tables_features(tmp_path):
    rc, err = run_benchmark("fewshot_gamma_sweep.py", f"--runs_dir={tmp_path}", "--name=never_written")
    assert_one_error_line(rc, err, "holds no extracted features")
    assert not os.path.exists(os.path.join(REPO, "benchmarks", "results", "never_written.json"))


@pytest.mark.parametrize("flag", ["--teacher=dist.gamma=3", "--teacher=dist.teacher_embedding_units"])
def test_gamma_sweep_refuses_a_teacher_flag_that_is_not_a_teacher_setting(tmp_path, flag):
    features = tmp_path / "glyphs" / "features"
    features.mkdir(parents=True)
    (features / "features.json").write_text("{}")
    rc, err = run_benchmark("fewshot_gamma_sweep.py", f"--runs_dir={tmp_path}", "--name=never_written", flag)
    assert_one_error_line(rc, err, f"{flag}: expected dist.teacher_FIELD=VALUE")
    assert not os.path.exists(os.path.join(REPO, "benchmarks", "results", "never_written.json"))
    assert sorted(os.listdir(tmp_path / "glyphs")) == ["features"]  # no run folder started


def test_a_second_invocation_on_the_same_results_file_is_refused(tmp_path):
    """Two invocations rewriting one results file would drop each other's finished runs."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_common", os.path.join(REPO, "benchmarks", "common.py"))
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)
    name = f"lock_test_{os.getpid()}"
    lock = os.path.join(REPO, "benchmarks", "results", f".{name}.lock")
    try:
        common.hold_results(name)  # as a running invocation does
        rc, err = run_benchmark("reference_table.py", f"--reference_python={sys.executable}", f"--name={name}",
                                f"--reference_dir={_reference_dir(tmp_path)}",
                                f"--runs_dir={tmp_path}/runs")
        assert rc == 2 and f"benchmarks/results/{name}.json is being written by pid {os.getpid()}" in err, err[-2000:]
        assert not os.path.exists(os.path.join(REPO, "benchmarks", "results", f"{name}.json"))
        # With --reference_edits: the running invocation's edited copy of the reference is not rewritten.
        reference, python = _fake_reference(tmp_path)
        edits = _edits_file(tmp_path, 'BORDERS = "grey"\n')
        rc, err = run_benchmark("reference_table.py", f"--reference_python={python}", f"--name={name}",
                                f"--reference_dir={reference}", f"--runs_dir={tmp_path}/runs",
                                f"--reference_edits={edits}")
        assert rc == 2 and "is being written by pid" in err, err[-2000:]
        assert not os.path.exists(tmp_path / "runs")
    finally:
        common._HELD_LOCKS.pop(name).close()
        os.remove(lock)


@pytest.mark.parametrize("args,expected", [
    (["--tune_override=train.epochs=10"], "--tune_override sets the searches' proxy regime; expected --tune_trials"),
    (["--tune_trials=4"], "--tune_trials trains tuned runs; expected a --name"),
])
def test_self_boosting_table_refuses_an_incomplete_tuning_request(tmp_path, args, expected):
    """A search's proxy without a search, or tuned runs that would land in the default-knob table."""
    rc, err = run_benchmark("self_boosting_table.py", "--regime=converge", f"--runs_dir={tmp_path}/runs", *args)
    assert_one_error_line(rc, err, expected)
    assert not os.path.exists(tmp_path / "runs")


@pytest.mark.parametrize("case", ["no_script", "no_torch"])
def test_step_cost_refuses_a_reference_it_cannot_run_before_timing(tmp_path, case):
    """The reference is timed after all of tfkd's tracing (minutes): a wrong folder or a Python
    without PyTorch must fail at once, not after that work."""
    if case == "no_script":
        args = [f"--reference_python={sys.executable}", f"--reference_dir={tmp_path}"]
        expected = "has no byot_bench.py"
    else:
        (tmp_path / "byot_bench.py").write_text("raise SystemExit('must not run')\n")
        fake = tmp_path / "python"
        fake.write_text("#!/bin/sh\nexit 1\n")
        fake.chmod(0o755)
        args = [f"--reference_python={fake}", f"--reference_dir={tmp_path}"]
        expected = "cannot import torch"
    rc, err = run_benchmark("step_cost.py", *args, "--name=never_written")
    assert_one_error_line(rc, err, expected)
    assert not os.path.exists(os.path.join(REPO, "benchmarks", "results", "never_written.json"))


@pytest.mark.parametrize("content,expected", [
    ('{"benchmark": "self_boosting_table", "datasets": {', "is not valid JSON"),
    ("[1, 2]", "holds a JSON list, not a JSON object"),
])
def test_a_damaged_results_file_is_refused_and_left_as_it_is(tmp_path, content, expected):
    """A table continues from its committed results file; continuing from a damaged one would
    rewrite it without the runs it held. One error line naming the file, before any training."""
    name = f"damaged_test_{os.getpid()}"
    path = os.path.join(REPO, "benchmarks", "results", f"{name}.json")
    with open(path, "w") as f:
        f.write(content)
    try:
        rc, err = run_benchmark("self_boosting_table.py", "--regime=converge", "--datasets=fashion_mnist",
                                "--methods=baseline", "--seeds=0", f"--name={name}", f"--runs_dir={tmp_path}/runs")
        assert_one_error_line(rc, err, f"benchmarks/results/{name}.json {expected}")
        assert "git checkout" in err
        with open(path) as f:
            assert f.read() == content
        assert not os.path.exists(tmp_path / "runs")
    finally:
        os.remove(path)
        lock = os.path.join(REPO, "benchmarks", "results", f".{name}.lock")
        if os.path.exists(lock):
            os.remove(lock)


@pytest.mark.parametrize("case,expected", [
    ("empty", "has no config.json: not a tfkd run folder"),
    ("damaged_run_info", "run_info.json is not valid JSON"),
])
def test_metadistiller_targets_refuses_a_bad_run_folder_in_one_line(tmp_path, case, expected):
    """Every --workdir is checked before the first one is restored and measured."""
    folder = tmp_path / "run"
    folder.mkdir()
    if case == "damaged_run_info":
        (folder / "config.json").write_text('{"method": "metadistiller"}')
        (folder / "network.json").write_text('{"arch": "resnet18", "kwargs": {}}')
        (folder / "run_info.json").write_text('[{"git_revision": ')
    rc, err = run_benchmark("metadistiller_targets.py", f"--workdir={folder}", "--name=never_written")
    assert_one_error_line(rc, err, expected)
    assert not os.path.exists(os.path.join(REPO, "benchmarks", "results", "never_written.json"))


def _holdout_table(tmp_path, backbone_accuracy=0.5):
    """A committed-table stand-in (a tuned gen row, backbone accuracy 0.5) and a runs folder whose
    features and backbone already exist, with ``backbone_accuracy`` -> (table name, result paths)."""
    import json

    import numpy as np

    results = os.path.join(REPO, "benchmarks", "results")
    table = f"holdout_test_table_{os.getpid()}_{tmp_path.name}"
    root = tmp_path / "runs" / "glyphs"
    features = root / "features"
    features.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, classes in (("base", range(0, 4)), ("validation", range(4, 6)), ("novel", range(6, 8))):
        labels = np.repeat(np.asarray(list(classes)), 12)
        np.savez(features / f"{split}.npz", features=rng.normal(size=(len(labels), 8)).astype(np.float32),
                 labels=labels)
    (features / "features.json").write_text("{}")
    (root / "backbone").mkdir()
    (root / "backbone" / "metrics.json").write_text(json.dumps({"test": {"final_accuracy": backbone_accuracy}}))
    with open(os.path.join(results, f"{table}.json"), "w") as f:
        json.dump({"dataset": "glyphs", "backbone_config": "configs/glyphs_fewshot_backbone.py",
                   "backbone_overrides": [], "backbone": {"test_base_class_accuracy": 0.5}, "threads": 1,
                   "fewshot_config": "configs/glyphs_fewshot.py", "overrides": [],
                   "tuning": {"gen": {"best": {"values": {"gen.num_generated": 1}}}}}, f)
    return table, [os.path.join(results, f"{table}.json")]


def _remove(paths):
    for path in paths:
        if os.path.exists(path):
            os.remove(path)


def test_base_holdout_keeps_earlier_runs_when_an_invocation_dies(tmp_path):
    """A rerun writes its results file before its first training; the runs recorded by an earlier
    invocation must still be in it when this one dies (here: its first bin/train fails)."""
    import json

    table, paths = _holdout_table(tmp_path)
    name = f"{table}_base_holdout_nonexistent_1"
    results = os.path.dirname(paths[0])
    paths += [os.path.join(results, f) for f in (f"{name}.json", f".{name}.lock")]
    earlier = {"gamma": 0.0, "seed": 100, "seconds": 12.5, "val_accuracy": 0.4}
    try:
        with open(paths[1], "w") as f:
            json.dump({"runs": [earlier]}, f)
        rc, err = run_benchmark("fewshot_base_holdout.py", f"--table={table}", f"--runs_dir={tmp_path}/runs",
                                "--student=dist.nonexistent=1", "--seeds=100")
        assert rc != 0, err[-2000:]
        with open(paths[1]) as f:
            written = json.load(f)
        assert written["runs"] == [earlier], written["runs"]
        assert "teacher" in written  # it did rewrite the file before the failed training
    finally:
        _remove(paths)


def test_base_holdout_refuses_a_backbone_that_is_not_the_tables(tmp_path):
    """Rebuilt on a new machine with another thread count, the glyph backbone reached 16.0 % instead of
    the table's 22.0 %: runs on its features were about to be paired with results measured on the
    table's. One error line, and no results file written."""
    table, paths = _holdout_table(tmp_path, backbone_accuracy=0.3)
    results = os.path.dirname(paths[0])
    paths += [os.path.join(results, f) for f in (f"{table}_base_holdout.json", f".{table}_base_holdout.lock")]
    try:
        rc, err = run_benchmark("fewshot_base_holdout.py", f"--table={table}", f"--runs_dir={tmp_path}/runs",
                                "--seeds=100", "--gammas=0,0.5")
        assert_one_error_line(rc, err, "base-class test accuracy 0.3000, the table's")
        assert "1 thread(s)" in err
        assert not os.path.exists(paths[1])
    finally:
        _remove(paths)


def test_fewshot_table_refuses_to_continue_at_another_thread_count(tmp_path):
    """The committed table's runs depend on TensorFlow's thread count; continuing it at another would
    mix two sets of features in one table."""
    import json

    name = f"threads_test_table_{os.getpid()}"
    results = os.path.join(REPO, "benchmarks", "results")
    paths = [os.path.join(results, f) for f in (f"{name}.json", f".{name}.lock")]
    try:
        with open(paths[0], "w") as f:
            json.dump({"threads": 1, "methods": {}}, f)
        rc, err = run_benchmark("fewshot_table.py", f"--name={name}", "--threads=2", f"--runs_dir={tmp_path}/runs")
        assert_one_error_line(rc, err, "--threads=2: benchmarks/results/")
        assert not os.path.exists(tmp_path / "runs" / "glyphs" / "backbone")
    finally:
        _remove(paths)


def test_timing_benchmarks_time_algorithm_1_whatever_the_config_picks():
    """make train's config runs the lookahead on 32 of 128 examples; step_cost, first_step, scaling
    and batchnorm_ab start from that file, and their `metadistiller` rows stay the whole batch."""
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    import common

    config_file = os.path.join(REPO, "configs", "fashion_mnist_resnet18.py")
    config = common.load_config(config_file)
    assert config.metadistiller.meta_batch_size == 32 and config.train.intra_op_threads == 1
    # Explicit thread counts (0: TensorFlow's choice) leave this test process's pools as they are:
    # the config's one intra-op thread would stay set for every later test in this pytest worker.
    base, _ = common.timing_setup(config_file, 128, intra_op_threads=0, inter_op_threads=0)
    assert base.metadistiller.meta_batch_size == 0 and base.train.batch_size == 128
    assert base.train.intra_op_threads == 0



def test_first_step_sums_grappler_passes_over_the_step_graphs_only():
    """first_step.py reads TensorFlow's own VLOG of each Grappler pass: passes over the step's graph
    are summed per optimizer (the tfg pipelines as one), small helper graphs left out."""
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    import common

    log = "\n".join([
        "I0000 00:00:1.5 12 meta_optimizer.cc:973] remapper: Graph size after: 7353 nodes (-18), 23936 edges "
        "(-18), time = 594.8ms.",
        "I0000 00:00:1.6 12 meta_optimizer.cc:973] tfg_optimizer{any(tfg-consolidate-attrs,tfg-toposort)}: Graph "
        "size after: 9125 nodes (0), 35890 edges (0), time = 200.5ms.",
        "I0000 00:00:1.7 12 meta_optimizer.cc:973] tfg_optimizer{any(tfg-functional-to-region,symbol-dce)}: Graph "
        "size after: 6928 nodes (0), 15083 edges (0), time = 100.0ms.",
        "I0000 00:00:1.8 12 meta_optimizer.cc:973] remapper: Graph size after: 79 nodes (0), 95 edges (0), "
        "time = 6.0ms.",  # the input pipeline's: left out
        "I0000 00:00:1.9 12 meta_optimizer.cc:973] remapper: Graph size after: 6928 nodes (0), 15097 edges (0), "
        "time = 5.2ms.",
        "Optimization results for grappler item: __inference_one_step_on_data_123"])
    total, by_pass = common.grappler_seconds(log)
    assert by_pass == pytest.approx({"remapper": 0.6, "tfg_optimizer": 0.3005})
    assert list(by_pass) == ["remapper", "tfg_optimizer"] and total == pytest.approx(0.9005)
    assert common.grappler_seconds("no Grappler lines") == (0, {})

REUSE_SCRIPT = r"""
import json, os, sys
sys.path.insert(0, os.path.join(sys.argv[1], "benchmarks"))
import fewshot_table as ft
ft.FLAGS(["fewshot_table", "--dataset=glyphs", "--tune_trials=2", "--threads=1"])
space = [spec.format(m="cosine") for spec in ft.TUNE_SPACES["cosine"]]
trials = [{"trial": "00", "values": {"cosine.scale_init": 10.0}, "val_accuracy": 0.4},
          {"trial": "01", "values": {"cosine.scale_init": 30.0}, "val_accuracy": 0.5}]
plain = {"dataset": "glyphs", "backbone_overrides": ft.FLAGS.backbone_override, "threads": 1,
         "tune_seed": ft.FLAGS.tune_seed, "overrides": ft.FLAGS.override, "git_revision": "abc",
         "date_utc": "then", "tuning": {"cosine": {"command": "bin/tune ...", "seconds": 9.0, "space": space,
                                                   "trials": trials, "best": trials[1]}}}
root, cfg = sys.argv[2], os.path.join(sys.argv[1], "configs", "glyphs_fewshot.py")
row = lambda candidates: ft.tune_row("cosine", cfg, root, root, root, {}, candidates, [])
first = row([("this", {}), ("plain", plain)])
# The table continued later: its own committed file now holds the reused search.
this = {**plain, "tuning": {"cosine": first}}
again = row([("this", this), ("plain", plain)])
print(json.dumps([first["reused_search"], again["reused_search"], again["best"]]))
"""


def test_a_continued_table_keeps_naming_the_table_a_reused_search_ran_in(tmp_path):
    """Continuing a table reuses the search from its own file first: that must not rename the
    search's origin to the table itself (make_tables pairs trials with the origin's)."""
    proc = subprocess.run([sys.executable, "-c", REUSE_SCRIPT, REPO, str(tmp_path)], capture_output=True, text=True,
                          timeout=SUBPROCESS_TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, again, best = json.loads(proc.stdout.strip().splitlines()[-1])
    assert first == {"table": "plain", "git_revision": "abc", "date_utc": "then"}
    assert again == first
    assert best["trial"] == "01"


def test_serving_reports_each_measuring_process_own_peak_memory_not_its_parents():
    """The serving children are started by a parent that holds TensorFlow and a restored network;
    ru_maxrss would carry the parent's peak into every child across fork and exec."""
    import numpy as np

    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    try:
        import serving
    finally:
        sys.path.pop(0)
    ballast = np.ones(400 << 20, np.uint8)  # this process now holds 400 MB more than the child will
    child = ("import json, statistics, sys, time\nstarted = time.perf_counter()\n"
             "call, repeats, min_seconds = (lambda: None), 3, 0.0\n" + serving.TIMED)
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    result = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1][7:])
    assert ballast.sum() > 0 and 0 < result["peak_rss_mb"] < 100 and result["calls"] >= 3, proc.stderr


def test_refresh_history_rereads_the_curves_and_keeps_the_recorded_results(tmp_path):
    """A field added to the table after its runs finished (the training-batch target entropy) is
    read from the run folders that are still there; test results, command and wall time stay as
    recorded, a run without a folder is named, and nothing trains."""
    name = f"refresh_test_{os.getpid()}"
    path = os.path.join(REPO, "benchmarks", "results", f"{name}.json")

    def run(seed):
        return {"seed": seed, "best_epoch": 2, "test": {"final_accuracy": 0.5 + seed / 100}, "val": {},
                "command": f"python bin/train --seed={seed}", "seconds": 60.0 + seed,
                "target_entropy_curve": {"exit_1": [9.0]}}

    with open(path, "w") as f:
        json.dump({"benchmark": "self_boosting_table", "command": "the invocation that trained the runs",
                   "datasets": {"fashion_mnist": {"methods": {"metadistiller": {"runs": [run(0), run(1)]}}}}}, f)
    workdir = tmp_path / "runs" / name / "fashion_mnist" / "metadistiller" / "seed0"
    workdir.mkdir(parents=True)
    (workdir / "history.csv").write_text(
        "epoch,meta_loss,target_entropy_exit_1,val_final_accuracy,val_target_entropy_exit_1\n"
        "1,3.5,2.25,0.4,1.25\n2,,2.0,0.5,2.0\n")
    try:
        rc, err = run_benchmark("self_boosting_table.py", "--regime=small_data", "--datasets=fashion_mnist",
                                "--methods=metadistiller", "--seeds=0,1", f"--name={name}",
                                f"--runs_dir={tmp_path}/runs", "--refresh_history")
        assert rc == 0, err[-3000:]
        with open(path) as f:
            results = json.load(f)
        assert results["command"] == "the invocation that trained the runs"  # the table's provenance
        assert "--refresh_history" in results["history_refreshed"]["command"]
        runs = results["datasets"]["fashion_mnist"]["methods"]["metadistiller"]["runs"]
        assert runs[0]["train_target_entropy_curve"] == {"exit_1": [2.25, 2.0]}
        assert runs[0]["target_entropy_curve"] == {"exit_1": [1.25, 2.0]}
        assert runs[0]["val_curve"] == [0.4, 0.5] and runs[0]["meta_loss_first_last"] == [3.5, 3.5]
        assert runs[0]["test"] == {"final_accuracy": 0.5} and runs[0]["seconds"] == 60.0
        assert runs[1] == run(1)  # its folder is gone: left as recorded
        assert sorted(os.listdir(tmp_path / "runs" / name / "fashion_mnist" / "metadistiller")) == ["seed0"]
    finally:
        for leftover in (path, os.path.join(REPO, "benchmarks", "results", f".{name}.lock")):
            if os.path.exists(leftover):
                os.remove(leftover)


FAKE_REFERENCE = '''import json
import sys

BORDERS = "grey"
args = sys.argv[1:]
value = {name: args[args.index(name) + 1] for name in ("--method", "--seed", "--json")}
test = {"final": 0.5, "exit_1": 0.4}
with open(value["--json"], "a") as f:
    f.write(json.dumps({"method": value["--method"], "seed": int(value["--seed"]), "best_epoch": 1,
                        "val": test, "test": test, "last_test": test, "seconds": 1.0, "borders": BORDERS}) + "\\n")
'''


def _fake_reference(tmp_path):
    """A reference that trains nothing and writes one record naming its crop borders, and a
    'python' that answers the torch version check without torch."""
    folder = tmp_path / "fake_reference"
    folder.mkdir()
    (folder / "byot_train.py").write_text(FAKE_REFERENCE)
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\nif [ "$1" = "-c" ]; then echo 0.0-fake; else exec {sys.executable} "$@"; fi\n')
    python.chmod(0o755)
    return str(folder), str(python)


def _edits_file(tmp_path, old):
    path = tmp_path / "edits.json"
    path.write_text(json.dumps({"why": "test", "edits": [
        {"file": "byot_train.py", "old": old, "new": 'BORDERS = "black"\n'}]}))
    return str(path)


def test_reference_edits_run_an_edited_copy_and_are_recorded(tmp_path):
    reference, python = _fake_reference(tmp_path)
    name = f"edits_test_{os.getpid()}"
    result = os.path.join(REPO, "benchmarks", "results", f"{name}.json")
    try:
        edits = _edits_file(tmp_path, 'BORDERS = "grey"\n')
        rc, err = run_benchmark("reference_table.py", f"--reference_python={python}", f"--reference_dir={reference}",
                                f"--reference_edits={edits}",
                                f"--runs_dir={tmp_path}/runs", f"--name={name}", "--methods=baseline,dsn",
                                "--seeds=0")
        assert rc == 0, err[-2000:]
        with open(result) as f:
            results = json.load(f)
        runs = [r for m in ("baseline", "dsn") for r in results["methods"][m]["runs"]]
        assert [r["borders"] for r in runs] == ["black", "black"]  # the edited copy ran
        assert results["reference_edits"]["edits"][0]["new"] == 'BORDERS = "black"\n'
        assert 'BORDERS = "grey"' in open(os.path.join(reference, "byot_train.py")).read()  # original untouched
        # The same results file cannot take runs of the unedited reference.
        rc, err = run_benchmark("reference_table.py", f"--reference_python={python}", f"--reference_dir={reference}",
                                f"--runs_dir={tmp_path}/runs", f"--name={name}", "--methods=baseline", "--seeds=1")
        assert_one_error_line(rc, err, "give another --name")
        with open(result) as f:
            assert json.load(f)["methods"]["baseline"]["runs"] == results["methods"]["baseline"]["runs"]
    finally:
        if os.path.exists(result):
            os.remove(result)


def test_reference_edits_whose_text_is_not_found_are_refused_before_any_run(tmp_path):
    reference, python = _fake_reference(tmp_path)
    rc, err = run_benchmark("reference_table.py", f"--reference_python={python}", f"--reference_dir={reference}",
                            f"--reference_edits={_edits_file(tmp_path, 'BORDERS = 0')}",
                            f"--runs_dir={tmp_path}/runs", "--name=never_written")
    assert_one_error_line(rc, err, "the text 'BORDERS = 0' occurs 0 times in byot_train.py; expected exactly once")
    assert not os.path.exists(tmp_path / "runs")
    assert not os.path.exists(os.path.join(REPO, "benchmarks", "results", "never_written.json"))


def test_reference_step_match_refuses_a_regime_the_reference_cannot_run(tmp_path):
    """The lockstep comparison trains the reference with its own fixed optimizer: another weight
    decay is refused before tfkd loads data or trains."""
    (tmp_path / "byot_bench.py").write_text("raise SystemExit('the reference must not run in this test')\n")
    rc, err = run_benchmark("reference_step_match.py", f"--reference_python={sys.executable}",
                            f"--reference_dir={tmp_path}",
                            f"--config={_config_file(tmp_path, 'c.train.weight_decay = 1e-4')}",
                            "--name=never_written")
    assert_one_error_line(rc, err, "train.weight_decay=0.0001; the reference runs only 0.0005")
    assert not os.path.exists(os.path.join(REPO, "benchmarks", "results", "never_written.json"))


def test_reference_step_match_maps_every_backbone_weight_onto_the_reference_once():
    """tfkd's ResNet18 (stem, stages, BatchNorm statistics, final classifier) onto the reference's
    state_dict keys: each of its 102 tensors exactly once, the exits left out, kernels transposed
    to PyTorch's layout."""
    import numpy as np

    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    try:
        import reference_support
    finally:
        sys.path.remove(os.path.join(REPO, "benchmarks"))
    from tfkd.models import MultiExitResNet

    MultiExitResNet(depth=18, num_classes=10, width=0.125, input_shape=(28, 28, 1))  # the next one is named _1
    network = MultiExitResNet(depth=18, num_classes=10, width=0.125, input_shape=(28, 28, 1))
    network(np.zeros((1, 28, 28, 1), "float32"))
    mapped = {v.path: reference_support.reference_name(v.path) for v in network.variables}
    assert all(name is None for path, name in mapped.items() if "/exit_" in path)
    names = [name for name in mapped.values() if name]
    bn = ("weight", "bias", "running_mean", "running_var")
    expected = {"stem.0.weight", "fc.weight", "fc.bias"} | {f"stem.1.{leaf}" for leaf in bn}
    for stage in range(4):
        for block in range(2):
            prefix = f"stages.{stage}.{block}"
            expected |= {f"{prefix}.conv1.weight", f"{prefix}.conv2.weight"}
            expected |= {f"{prefix}.bn{i}.{leaf}" for i in (1, 2) for leaf in bn}
            if stage and not block:
                expected |= {f"{prefix}.shortcut.0.weight"} | {f"{prefix}.shortcut.1.{leaf}" for leaf in bn}
    assert len(names) == len(set(names)) == len(expected) == 102 and set(names) == expected
    kernel = np.zeros((3, 3, 8, 16))
    assert reference_support.to_torch_layout(kernel).shape == (16, 8, 3, 3)
    assert reference_support.to_torch_layout(np.zeros((64, 10))).shape == (10, 64)


def test_teacher_student_table_continues_its_file_and_reuses_matching_self_boosting_runs(tmp_path):
    """A convergent teacher-student table takes sessions: a later invocation trains only the runs
    its file lacks, takes the no-teacher methods' runs of the same config from a self_boosting_table
    file (not a variant trained with other flags), and refuses to continue a file of another config."""
    name, source = f"ts_test_{os.getpid()}", f"ts_source_{os.getpid()}"
    results = os.path.join(REPO, "benchmarks", "results")
    paths = [os.path.join(results, f) for f in (f"{name}.json", f".{name}.lock", f"{source}.json", f".{source}.lock")]
    config = "configs/bench_fashion_mnist_converge.py"

    def run(method, seed, accuracy, extra=""):
        return {"seed": seed, "best_epoch": 30, "test": {"final_accuracy": accuracy}, "val": {"final_accuracy": 0.9},
                "command": f"python bin/train --config={config} --method={method} --seed={seed} "
                           f"--config.export.enabled=False{extra}", "seconds": 100.0, "git_revision": "abc"}

    try:
        with open(paths[2], "w") as f:
            json.dump({"benchmark": "self_boosting_table", "datasets": {"fashion_mnist": {
                "config_file": config, "methods": {
                    "baseline": {"runs": [run("baseline", 0, 0.5, " --config.train.epochs=2"),
                                          run("baseline", 0, 0.9)]},
                    "metadistiller": {"runs": [run("metadistiller", 0, 0.91), run("metadistiller", 1, 0.92)]}}}}}, f)
        with open(paths[0], "w") as f:  # an earlier session's dml run
            json.dump({"benchmark": "teacher_student_table", "config": config, "teacher_overrides":
                       ["model.arch=resnet34", "model.width=0.25"], "overrides": [], "methods": {"dml": {
                           "runs": [{"seed": 0, "test_final_accuracy": 0.8, "seconds": 5.0}]}}}, f)
        rc, err = run_benchmark("teacher_student_table.py", f"--config={config}", f"--name={name}", f"--reuse={source}",
                                "--methods=baseline,dml,metadistiller", "--seeds=0", f"--runs_dir={tmp_path}/runs")
        assert rc == 0, err[-2000:]
        assert not os.path.exists(tmp_path / "runs")  # nothing trained
        with open(paths[0]) as f:
            written = json.load(f)
        assert [r["test_final_accuracy"] for r in written["methods"]["dml"]["runs"]] == [0.8]
        (baseline,), (md,) = written["methods"]["baseline"]["runs"], written["methods"]["metadistiller"]["runs"]
        assert baseline["test_final_accuracy"] == 0.9 and "epochs" not in baseline["command"], baseline
        assert md["test_final_accuracy"] == 0.91 and md["reused_from"] == f"benchmarks/results/{source}.json"
        rc, err = run_benchmark("teacher_student_table.py", "--config=configs/bench_fashion_mnist.py",
                                f"--name={name}", "--methods=baseline", "--seeds=1", f"--runs_dir={tmp_path}/runs")
        assert_one_error_line(rc, err, f"holds runs with config={config}, not configs/bench_fashion_mnist.py")
        assert not os.path.exists(tmp_path / "runs")
    finally:
        _remove(paths)
