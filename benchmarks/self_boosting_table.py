#!/usr/bin/env python3
"""Table-1/Table-4-style comparison: baseline, DSN, self-distillation and MetaDistiller.

    python benchmarks/self_boosting_table.py [--datasets=fashion_mnist,glyphs] [--seeds=0,1,2]
        [--runs_dir=/tmp/tfkd_bench] [--threads=0]

Every (dataset, method, seed) is one `bin/train` run (configs/bench_<dataset>.py) in its own
workdir under --runs_dir, so an interrupted benchmark resumes where it stopped (finished runs are
read back, unfinished ones resume from their last epoch). The checkpoint is chosen on validation;
the table reports test accuracy of the final exit and of the exit ensemble, mean +- std over
seeds. Results go to benchmarks/results/self_boosting_table.json after every run.
"""
import csv
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import app, flags  # noqa: E402

import common  # noqa: E402

flags.DEFINE_list("datasets", ["fashion_mnist", "glyphs"], "Datasets (configs/bench_<name>.py).")
flags.DEFINE_list("methods", ["baseline", "dsn", "self_distill", "metadistiller"], "Methods.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
flags.DEFINE_string("runs_dir", "/tmp/tfkd_bench", "Where the runs' workdirs go (not committed).")
flags.DEFINE_integer("threads", 0, "TF intra/inter-op threads per run (0 = TensorFlow's default).")
flags.DEFINE_multi_string("override", [], "Extra --config.* flags for every run, e.g. train.epochs=2.")
flags.DEFINE_string("name", "self_boosting_table", "Result file name under benchmarks/results/.")
FLAGS = flags.FLAGS


def run_one(dataset, method, seed):
    workdir = os.path.join(FLAGS.runs_dir, dataset, method, f"seed{seed}")
    metrics_path = os.path.join(workdir, "metrics.json")
    config = os.path.join(common.REPO, "configs", f"bench_{dataset}.py")
    cmd = [sys.executable, os.path.join(common.REPO, "bin", "train"), f"--config={config}", f"--method={method}",
           f"--seed={seed}", f"--workdir={workdir}"] + [f"--config.{o}" for o in FLAGS.override]
    if not os.path.exists(metrics_path):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
        if FLAGS.threads:
            env.update(TF_NUM_INTRAOP_THREADS=str(FLAGS.threads), TF_NUM_INTEROP_THREADS=str(FLAGS.threads))
        start = time.time()
        log_path = workdir + ".log"
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        with open(log_path, "a") as log:
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"run failed ({proc.returncode}): {' '.join(cmd)}; see {log_path}")
        print(f"{dataset}/{method}/seed{seed}: {time.time() - start:.0f}s", flush=True)
    with open(metrics_path) as f:
        metrics = json.load(f)
    with open(os.path.join(workdir, "history.csv")) as f:
        history = list(csv.DictReader(f))
    epochs = len(history)
    # MetaDistiller's outer (meta) loss at its first and last meta epoch: a diverging or flat
    # curve flags a generator learning rate problem.
    meta = [float(h["meta_loss"]) for h in history if h.get("meta_loss")]
    if meta:
        metrics["meta_loss_first_last"] = [meta[0], meta[-1]]
    with open(os.path.join(workdir, "run_info.json")) as f:
        metrics["git_revision"] = json.load(f)[0]["git_revision"]  # the code that trained this run
    metrics["command"] = " ".join(os.path.relpath(c, common.REPO) if c.startswith(common.REPO) else c for c in cmd)
    metrics["epochs_in_history"] = epochs
    return metrics


def summarize(values):
    if not values:
        return None
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values), "values": values}


def main(argv):
    del argv
    results = {"benchmark": "self_boosting_table", "datasets": {}, "seeds": [int(s) for s in FLAGS.seeds],
               "overrides": FLAGS.override, "threads": FLAGS.threads}
    for dataset in FLAGS.datasets:
        results["datasets"][dataset] = {"config_file": f"configs/bench_{dataset}.py", "methods": {}}
    for seed in FLAGS.seeds:  # seed-major: a partial table still covers every method
        for dataset in FLAGS.datasets:
            for method in FLAGS.methods:
                m = run_one(dataset, method, int(seed))
                entry = results["datasets"][dataset]["methods"].setdefault(method, {"runs": []})
                keys = ("seed", "best_epoch", "test", "val", "command", "num_train_examples", "num_test_examples",
                        "meta_loss_first_last", "git_revision")
                entry["runs"].append({k: m[k] for k in keys if k in m})
                for key, field in (("final", "final_accuracy"), ("ensemble", "ensemble_accuracy")):
                    entry[key] = summarize([r["test"][field] for r in entry["runs"]])
                common.write_result(FLAGS.name, results)


if __name__ == "__main__":
    app.run(main)
