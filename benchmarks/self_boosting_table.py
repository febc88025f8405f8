#!/usr/bin/env python3
"""Table-1/Table-4-style comparison: baseline, DSN, self-distillation and MetaDistiller.

    python benchmarks/self_boosting_table.py [--regime=short|converge|small_data] [--datasets=fashion_mnist,glyphs]
        [--seeds=0,1,2] [--jobs=2] [--runs_dir=/tmp/tfkd_bench] [--threads=0]

Regimes: ``short`` (configs/bench_<dataset>.py, 6 epochs) and ``converge``
(configs/bench_<dataset>_converge.py, 40 epochs, step schedule) and ``small_data``
(configs/bench_fashion_mnist_small_data.py: 2,000 training images, 100 epochs). Every (dataset, method, seed)
is one ``bin/train`` run in its own workdir under --runs_dir. Results go to
benchmarks/results/<name>.json after *every* finished run, and runs already in that file are not
run again: a table can be completed over several sessions on different machines from the
committed file alone (unfinished runs in --runs_dir also resume from their last epoch).

With ``--tune_trials=N`` every (dataset, method) first gets a ``bin/tune`` random search of N
trials over the method's default space (tfkd/tuning.py: lr and weight decay for every method,
plus α, τ for SD and α, τ, generator lr, M for MetaDistiller: the same trial budget per method),
selected on the validation split with a tuning seed apart from the reported ones. The trials
train at the proxy regime of ``--tune_override`` (e.g. ``train.epochs=10``): a search at the full
regime does not fit a 2-core CPU. The seed runs then train the full regime with the best trial's
values. A finished search is written to the results file and is reused from it on any machine
(same trials, tuning seed, proxy and space): only the seed runs still missing are trained.

``--refresh_history`` re-reads the per-epoch fields of runs already recorded (validation curve,
meta loss, the generated targets' entropy on training batches and on validation) from their run
folders, where --runs_dir still holds them: a field added to the table after its runs finished
reaches them without training again; what the runs measured (test, validation, wall time) stays.

``--jobs=N`` runs N trainings side by side (each with ``--threads`` TensorFlow threads; on a
2-core CPU two 1-thread runs have more throughput than one 2-thread run). The checkpoint is
chosen on validation; the table reports test accuracy of the final exit, each exit and the exit
ensemble (mean +- std over seeds), the best epoch, wall time and the validation curve.
"""
import concurrent.futures
import csv
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import flags  # noqa: E402

import common  # noqa: E402

REGIMES = {"short": "", "converge": "_converge", "small_data": "_small_data"}
DEFAULT_NAMES = {"short": "self_boosting_table", "converge": "self_boosting_converge",
                 "small_data": "self_boosting_small_data"}

flags.DEFINE_enum("regime", "short", list(REGIMES), "short: configs/bench_<dataset>.py (6 epochs); "
                  "converge: configs/bench_<dataset>_converge.py (40 epochs); small_data: "
                  "configs/bench_<dataset>_small_data.py (a fifth of the data, 100 epochs).")
flags.DEFINE_list("datasets", ["fashion_mnist", "glyphs"], "Datasets (configs/bench_<name>[_<regime>].py).")
flags.DEFINE_list("methods", ["baseline", "dsn", "self_distill", "metadistiller"], "Methods.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
flags.DEFINE_string("runs_dir", "/tmp/tfkd_bench", "Where the runs' workdirs go (not committed).")
flags.DEFINE_integer("threads", 0, "TF intra/inter-op threads per run (0 = TensorFlow's default).")
flags.DEFINE_integer("jobs", 1, "Runs trained side by side.")
flags.DEFINE_multi_string("override", [], "Extra --config.* flags for every run, e.g. train.epochs=2.")
flags.DEFINE_string("name", "", "Result file name under benchmarks/results/ ('' = by regime).")
flags.DEFINE_integer("tune_trials", 0, "Random-search trials per (dataset, method) before the seed runs (0 = no search).")
flags.DEFINE_integer("tune_seed", 100, "Seed of the search and its trials (kept apart from --seeds).")
flags.DEFINE_bool("refresh_history", False, "Re-read the per-epoch fields (curves, meta loss) of the runs "
                  "already in the results file from their run folders under --runs_dir, where present: "
                  "fields added to the table after those runs finished. Trains nothing more by itself.")
flags.DEFINE_multi_string("tune_override", [], "--config.* flags of the trials only: the proxy regime, "
                          "e.g. train.epochs=10 and train.lr_boundaries=(5,8).")
FLAGS = flags.FLAGS

RELATIVE_COST = {"metadistiller": 3, "self_distill": 2, "dsn": 1, "baseline": 0}  # per epoch, measured
RUN_KEYS = ("seed", "best_epoch", "test", "val", "command", "num_train_examples", "num_test_examples",
            "meta_loss_first_last", "git_revision", "seconds", "val_curve", "epochs_in_history", "resumed",
            "target_entropy_curve", "train_target_entropy_curve")


def config_path(dataset):
    return os.path.join(common.REPO, "configs", f"bench_{dataset}{REGIMES[FLAGS.regime]}.py")


def regime(dataset):
    """What a reader needs to know about how long and how big the runs were."""
    c = common.load_config(config_path(dataset))  # before --override (listed beside it)
    return {"epochs": c.train.epochs, "arch": c.model.arch, "width": c.model.width,
            "batch_size": c.train.batch_size, "learning_rate": c.train.learning_rate,
            "weight_decay": c.train.weight_decay, "schedule": c.train.lr_schedule,
            "lr_boundaries": list(c.train.lr_boundaries), "max_train_examples": c.data.max_train_examples,
            "select_metric": c.train.select_metric,
            "method_knobs": {m: c[m].to_dict() for m in ("self_distill", "metadistiller") if m in c}}


def run_command(cmd, workdir, done_path, label):
    """Runs cmd (logged beside workdir) unless done_path exists -> seconds, or None if already done."""
    from tfkd.io import thread_environment

    if os.path.exists(done_path):
        return None
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **thread_environment(FLAGS.threads, FLAGS.threads))
    start = time.time()
    log_path = workdir + ".log"
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "a") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"run failed ({proc.returncode}): {' '.join(cmd)}; see {log_path}")
    seconds = time.time() - start  # includes a resumed run's earlier part only if not resumed
    print(f"{label}: {seconds:.0f}s", flush=True)
    return seconds


def pretty(cmd):
    return " ".join(["python"] + cmd[1:]).replace(common.REPO + os.sep, "")


def search_space(method):
    """The method's default bin/tune space (what a search without config.tune.space uses)."""
    from tfkd import tuning  # noqa: PLC0415 (TensorFlow only when a search is asked for)

    return list(tuning.default_space(method))


def tune_one(dataset, method, previous):
    """bin/tune for (dataset, method) at the proxy regime -> summary, reused from the results file
    when a finished search with the same settings is there."""
    space = search_space(method)
    settings = {"space": space, "tune_seed": FLAGS.tune_seed, "proxy_overrides": FLAGS.tune_override,
                "overrides": FLAGS.override}
    committed = previous.get(method)
    if committed and len(committed.get("trials", [])) == FLAGS.tune_trials and all(
            committed.get(k) == v for k, v in settings.items()):
        return committed
    workdir = os.path.join(FLAGS.runs_dir, FLAGS.name or FLAGS.regime, "tune", dataset, method)
    cmd = [sys.executable, os.path.join(common.REPO, "bin", "tune"), f"--config={config_path(dataset)}",
           f"--method={method}", f"--seed={FLAGS.tune_seed}", f"--workdir={workdir}",
           "--config.tune.tuner=random", f"--config.tune.max_trials={FLAGS.tune_trials}"]  # trials never export
    cmd += [f"--config.{o}" for o in FLAGS.override + FLAGS.tune_override]
    seconds = run_command(cmd, workdir, os.path.join(workdir, "best_config.py"), f"{dataset}/{method}/search")
    trials = []
    trials_dir = os.path.join(workdir, "trials")
    for trial_id in sorted(os.listdir(trials_dir), key=lambda t: (len(t), t)):
        path = os.path.join(trials_dir, trial_id, "trial.json")
        if os.path.exists(path):
            with open(path) as f:
                t = json.load(f)
            with open(os.path.join(trials_dir, trial_id, "metrics.json")) as f:
                best_epoch = json.load(f).get("best_epoch")
            trials.append({"trial": trial_id, "values": t["values"], "objective": t["objective"],
                           "score": t["score"], "best_epoch": best_epoch})
    best = max(trials, key=lambda t: t["score"])
    return {**settings, "command": pretty(cmd), "seconds": seconds, "trials": trials, "best": best}


def tuned_overrides(search):
    """The best trial's values as --config overrides of the full-regime runs."""
    return [f"{field}={value!r}" for field, value in sorted(search["best"]["values"].items())]


def run_workdir(dataset, method, seed):
    # A named table (e.g. one with --override) gets its own runs: finished ones are reused by path.
    return os.path.join(FLAGS.runs_dir, FLAGS.name or FLAGS.regime, dataset, method, f"seed{seed}")


def history_fields(workdir):
    """What the table reads from a finished run's per-epoch history.csv."""
    with open(os.path.join(workdir, "history.csv")) as f:
        history = list(csv.DictReader(f))
    fields = {"val_curve": [round(float(h["val_final_accuracy"]), 5) for h in history],
              "epochs_in_history": len(history)}
    # MetaDistiller's outer (meta) loss at its first and last meta epoch: a diverging or flat
    # curve flags a generator learning rate problem.
    meta = [float(h["meta_loss"]) for h in history if h.get("meta_loss")]
    if meta:
        fields["meta_loss_first_last"] = [meta[0], meta[-1]]
    # MetaDistiller: mean entropy (nats) of each exit's generated soft targets per epoch; near
    # ln(num_classes) means the targets are close to uniform (label smoothing). On the training
    # batches (training-mode BatchNorm): the targets the exits learned from that epoch; on
    # validation (inference mode, after the epoch).
    for prefix, key in (("target_entropy_", "train_target_entropy_curve"),
                        ("val_target_entropy_", "target_entropy_curve")):
        curve = {column[len(prefix):]: [round(float(h[column]), 4) for h in history if h.get(column)]
                 for column in (history[0] if history else {}) if column.startswith(prefix)}
        if curve:
            fields[key] = curve
    return fields


def refresh_history(results):
    """history_fields of every recorded run whose folder is still under --runs_dir; the rest of
    each record (test, validation, command, wall time, revision) stays as it was recorded."""
    refreshed, missing = 0, []
    for dataset, d in results["datasets"].items():
        for method, entry in d["methods"].items():
            for run in entry["runs"]:
                workdir = run_workdir(dataset, method, run["seed"])
                if os.path.exists(os.path.join(workdir, "history.csv")):
                    run.update(history_fields(workdir))
                    refreshed += 1
                else:
                    missing.append(f"{dataset}/{method}/seed{run['seed']}")
    print(f"refreshed the history fields of {refreshed} runs" +
          (f"; no run folder for {', '.join(missing)}" if missing else ""), flush=True)


def run_one(dataset, method, seed, tuned=()):
    workdir = run_workdir(dataset, method, seed)
    metrics_path = os.path.join(workdir, "metrics.json")
    cmd = [sys.executable, os.path.join(common.REPO, "bin", "train"), f"--config={config_path(dataset)}",
           f"--method={method}", f"--seed={seed}", f"--workdir={workdir}", "--config.export.enabled=False"]
    cmd += [f"--config.{o}" for o in list(FLAGS.override) + list(tuned)]
    seconds = run_command(cmd, workdir, metrics_path, f"{dataset}/{method}/seed{seed}")
    with open(metrics_path) as f:
        metrics = json.load(f)
    metrics.update(history_fields(workdir))
    with open(os.path.join(workdir, "run_info.json")) as f:
        starts = json.load(f)
    metrics["git_revision"] = starts[0]["git_revision"]  # the code that trained this run
    metrics["resumed"] = len(starts) > 1
    metrics["command"] = pretty(cmd)
    metrics["seconds"] = seconds
    return metrics


def summarize(values):
    if not values:
        return None
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values), "values": values}


def add_run(results, dataset, method, m):
    entry = results["datasets"][dataset]["methods"].setdefault(method, {"runs": []})
    entry["runs"] = sorted([r for r in entry["runs"] if r["seed"] != m["seed"]] +
                           [{k: m[k] for k in RUN_KEYS if k in m}], key=lambda r: r["seed"])
    heads = sorted(k for k in entry["runs"][0]["test"] if k.endswith("_accuracy"))
    for head in heads:
        entry[head[: -len("_accuracy")]] = summarize([r["test"][head] for r in entry["runs"] if head in r["test"]])
    entry["best_epoch"] = summarize([r["best_epoch"] for r in entry["runs"]])
    # A resumed run's clock covers only its last part (make_tables' wall time leaves them out too).
    entry["seconds"] = summarize([r["seconds"] for r in entry["runs"] if r.get("seconds") and not r.get("resumed")])


def main(argv):
    del argv
    if FLAGS.tune_override and not FLAGS.tune_trials:
        common.refuse("--tune_override sets the searches' proxy regime; expected --tune_trials=N (N >= 1) "
                      "with it")
    if FLAGS.tune_trials and not FLAGS.name:
        common.refuse("--tune_trials trains tuned runs; expected a --name for their results file (the "
                      "default-knob table keeps its own)")
    for dataset in FLAGS.datasets:
        if not os.path.exists(config_path(dataset)):
            have = [ds for ds in ("fashion_mnist", "glyphs") if os.path.exists(config_path(ds))]
            common.refuse(f"--datasets={dataset}: the {FLAGS.regime} regime has no config "
                          f"{os.path.relpath(config_path(dataset), common.REPO)}; expected one of {have}")
    name = FLAGS.name or DEFAULT_NAMES[FLAGS.regime]
    common.hold_results(name)
    try:
        results = common.read_result(name)  # continue a table started earlier (maybe elsewhere)
    except FileNotFoundError:
        results = {"benchmark": "self_boosting_table", "datasets": {}}
    results.update({"regime_name": FLAGS.regime, "seeds": sorted({int(s) for s in FLAGS.seeds} |
                                                                    set(results.get("seeds", []))),
                    "overrides": FLAGS.override, "threads": FLAGS.threads, "jobs": FLAGS.jobs})
    # Rewritten for this invocation once it records a run.
    provenance = {key: results.pop(key) for key in ("command", "date_utc", "machine", "git_revision")
                  if key in results}
    for dataset in FLAGS.datasets:
        d = results["datasets"].setdefault(dataset, {"methods": {}})
        d["config_file"] = os.path.relpath(config_path(dataset), common.REPO)
        d["regime"] = regime(dataset)
    done = {(ds, m, r["seed"]) for ds, d in results["datasets"].items() for m, e in d["methods"].items()
            for r in e["runs"]}
    if FLAGS.refresh_history:
        refresh_history(results)
        results["history_refreshed"] = {"command": common.invocation(), "date_utc": common.now_utc()}
        common.write_result(name, {**results, **provenance})  # still the runs' measuring invocation
    # Seed-major: a partial table still covers every method.
    todo = [(ds, m, int(s)) for s in FLAGS.seeds for ds in FLAGS.datasets for m in FLAGS.methods
            if (ds, m, int(s)) not in done]
    print(f"{len(done)} runs already in benchmarks/results/{name}.json; {len(todo)} to go", flush=True)
    if FLAGS.tune_trials:
        results.update(tune_trials=FLAGS.tune_trials, tune_seed=FLAGS.tune_seed, tune_overrides=FLAGS.tune_override)
    searches = results.setdefault("tuning", {}) if FLAGS.tune_trials else {}
    failed = []

    def record(job, future):
        try:
            outcome = future.result()
        except RuntimeError as e:  # one failed run must not keep the finished ones out of the table
            print(f"{'/'.join(map(str, job))}: {e}", flush=True)
            failed.append("/".join(map(str, job)))
            return None
        # Only this (main) thread records: the workers just train.
        if job[-1] == "search":
            searches.setdefault(job[0], {})[job[1]] = outcome
        else:
            add_run(results, job[0], job[1], outcome)
        common.write_result(name, results)
        return outcome

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, FLAGS.jobs)) as pool:
        pending = {}
        # A method's seed runs wait for its search; the longest searches start first.
        to_search = sorted({(ds, m) for ds, m, _ in todo}, key=lambda j: -RELATIVE_COST.get(j[1], 0))
        if FLAGS.tune_trials:
            for ds, m in to_search:
                previous = searches.get(ds, {})
                pending[pool.submit(tune_one, ds, m, previous)] = (ds, m, "search")
        else:
            pending.update({pool.submit(run_one, *job): job for job in todo})
        submitted = {future: i for i, future in enumerate(pending)}
        while pending:
            finished, _ = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
            # In submission order: searches already in the results file finish at once, and a set's
            # order would let the cheapest method's seed runs take the workers first.
            for future in sorted(finished, key=lambda f: submitted.get(f, len(submitted))):
                job = pending.pop(future)
                outcome = record(job, future)
                if job[-1] == "search" and outcome is not None:
                    tuned = tuned_overrides(outcome)
                    for ds, m, seed in todo:
                        if (ds, m) == job[:2]:
                            pending[pool.submit(run_one, ds, m, seed, tuned)] = (ds, m, seed)
    if failed:
        sys.exit(f"{len(failed)} runs failed: {', '.join(failed)}")


if __name__ == "__main__":
    common.run(main)
