#!/usr/bin/env python3
"""Table-3-style comparison at CPU scale: classic teacher-student methods vs MetaDistiller.

    python benchmarks/teacher_student_table.py [--seeds=0,1,2] [--runs_dir=/tmp/tfkd_teacher_student]

1. A teacher (deeper and wider: ResNet34, width 0.25) is trained once with ``baseline`` on the
   configs/bench_fashion_mnist.py data (seed 0).
2. The student (ResNet18, width 0.125, the same config) is trained with baseline, kd, fitnet, at,
   dml (no teacher: two peers) and metadistiller (no teacher), for every seed.
Every run is a real ``bin/train`` command in its own resumable workdir; test accuracy of the final
head (checkpoint chosen on validation) is reported as mean +- std over seeds, with the wall-clock
of each run, so the teacher's training cost can be set against MetaDistiller's (the paper's
argument). Results: benchmarks/results/teacher_student_table.json, rewritten after every run.
"""
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import flags  # noqa: E402

import common  # noqa: E402

flags.DEFINE_list("methods", ["baseline", "kd", "fitnet", "at", "dml", "metadistiller"], "Student methods.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Student seeds (the teacher is trained once, seed 0).")
flags.DEFINE_string("runs_dir", "/tmp/tfkd_teacher_student", "Where the runs' workdirs go (not committed).")
flags.DEFINE_string("config", "configs/bench_fashion_mnist.py", "Experiment config (data, schedule).")
flags.DEFINE_multi_string("teacher_override", ["model.arch=resnet34", "model.width=0.25"],
                          "--config.* flags that make the teacher.")
flags.DEFINE_multi_string("override", [], "Extra --config.* flags for every run.")
FLAGS = flags.FLAGS

TEACHER_FIELD = {"kd": "kd.teacher", "fitnet": "fitnet.teacher", "at": "at.teacher"}


def run(name, workdir, extra):
    config = os.path.join(common.REPO, FLAGS.config)
    cmd = [sys.executable, os.path.join(common.REPO, "bin", "train"), f"--config={config}", f"--workdir={workdir}"]
    cmd += extra + [f"--config.{o}" for o in FLAGS.override]
    pretty = " ".join(os.path.relpath(c, common.REPO) if c.startswith(common.REPO) else c for c in cmd)
    seconds = None
    if not os.path.exists(os.path.join(workdir, "metrics.json")):
        os.makedirs(os.path.dirname(workdir), exist_ok=True)
        start = time.time()
        with open(workdir + ".log", "a") as log:
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT,
                                  env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
        if proc.returncode:
            raise RuntimeError(f"{name} failed ({proc.returncode}): {pretty}; see {workdir}.log")
        seconds = time.time() - start
        print(f"{seconds:7.0f}s  {name}", flush=True)
    with open(os.path.join(workdir, "metrics.json")) as f:
        metrics = json.load(f)
    with open(os.path.join(workdir, "run_info.json")) as f:
        revision = json.load(f)[0]["git_revision"]
    return {"command": pretty, "seconds": seconds, "test_final_accuracy": metrics["test"]["final_accuracy"],
            "best_epoch": metrics["best_epoch"], "git_revision": revision}


def main(argv):
    del argv
    name = "teacher_student_table"
    common.hold_results(name)
    previous = common.read_result(name) if os.path.exists(os.path.join(common.RESULTS, f"{name}.json")) else {}
    results = {"benchmark": name, "config": FLAGS.config, "seeds": [int(s) for s in FLAGS.seeds],
               "teacher_overrides": FLAGS.teacher_override, "overrides": FLAGS.override, "methods": {}}

    def keep_time(entry, old):
        if entry["seconds"] is None and old:
            entry["seconds"] = old.get("seconds")
        return entry

    teacher_dir = os.path.join(FLAGS.runs_dir, "teacher")
    results["teacher"] = keep_time(run("teacher", teacher_dir, ["--method=baseline", "--seed=0"] +
                                       [f"--config.{o}" for o in FLAGS.teacher_override]), previous.get("teacher"))
    common.write_result(name, results)
    for seed in FLAGS.seeds:  # seed-major: a partial table covers every method
        for method in FLAGS.methods:
            extra = [f"--method={method}", f"--seed={seed}"]
            if method in TEACHER_FIELD:
                extra.append(f"--config.{TEACHER_FIELD[method]}={teacher_dir}")
            workdir = os.path.join(FLAGS.runs_dir, method, f"seed{seed}")
            old = next((r for r in previous.get("methods", {}).get(method, {}).get("runs", [])
                        if r.get("seed") == int(seed)), None)
            entry = keep_time({"seed": int(seed), **run(f"{method}/seed{seed}", workdir, extra)}, old)
            m = results["methods"].setdefault(method, {"runs": [], "uses_teacher": method in TEACHER_FIELD})
            m["runs"].append(entry)
            values = [r["test_final_accuracy"] for r in m["runs"]]
            m["test_final_accuracy"] = {"mean": statistics.mean(values), "n": len(values), "values": values,
                                        "std": statistics.stdev(values) if len(values) > 1 else 0.0}
            times = [r["seconds"] for r in m["runs"] if r["seconds"]]
            m["mean_seconds"] = statistics.mean(times) if times else None
            common.write_result(name, results)


if __name__ == "__main__":
    common.run(main)
