#!/usr/bin/env python3
"""Table-3-style comparison at CPU scale: classic teacher-student methods vs MetaDistiller.

    python benchmarks/teacher_student_table.py [--seeds=0,1,2] [--runs_dir=/tmp/tfkd_teacher_student]
    python benchmarks/teacher_student_table.py --config=configs/bench_fashion_mnist_converge.py \
        --name=teacher_student_converge --reuse=self_boosting_converge --jobs=2 --threads=1

1. A teacher (deeper and wider: ResNet34, width 0.25) is trained once with ``baseline`` on the
   config's data (seed 0).
2. The student (ResNet18, width 0.125, the same config) is trained with baseline, kd, fitnet, at,
   dml (no teacher: two peers) and metadistiller (no teacher), for every seed.
Every run is a real ``bin/train`` command in its own resumable workdir; test accuracy of the final
head (checkpoint chosen on validation) is reported per seed, with the wall-clock of each run, so
the teacher's training cost can be set against MetaDistiller's (the paper's argument).

The results file (benchmarks/results/<name>.json) is rewritten after every finished run, and a
later invocation, here or on another machine, trains only the (method, seed) runs it does not hold
yet: a long table is completed over several sessions. A student trained with a teacher records
that teacher's test accuracy and revision (a new machine trains the teacher again, from the same
seed). ``--reuse=RESULTS`` takes the runs of methods without a teacher (baseline, metadistiller)
from a self_boosting_table results file when they were trained with this config and no other
flags, instead of training them again.
"""
import concurrent.futures
import datetime
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
flags.DEFINE_string("name", "teacher_student_table", "Result file name under benchmarks/results/.")
flags.DEFINE_list("reuse", [], "self_boosting_table results files (names under benchmarks/results/) whose runs "
                  "of this config stand in for the methods without a teacher.")
flags.DEFINE_integer("jobs", 1, "Runs trained side by side.")
flags.DEFINE_integer("threads", 0, "TF intra/inter-op threads per run (0 = TensorFlow's default).")
FLAGS = flags.FLAGS

TEACHER_FIELD = {"kd": "kd.teacher", "fitnet": "fitnet.teacher", "at": "at.teacher"}
# Flags every run of this table carries besides the config's own: a finished run needs no export.
RUN_FLAGS = ("--config.export.enabled=False",)


def pretty(cmd):
    return " ".join(os.path.relpath(c, common.REPO) if c.startswith(common.REPO) else c for c in cmd)


def seconds_from_run_folder(workdir, starts):
    """A finished run folder's wall-clock when this invocation did not train it (its first start to
    its metrics file); None when it was resumed (``starts``: its run_info.json), whose clock would
    leave out the stopped part."""
    if len(starts) > 1:
        return None
    start = datetime.datetime.strptime(starts[0]["time_utc"], "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()
    return os.path.getmtime(os.path.join(workdir, "metrics.json")) - start


def run(name, workdir, extra):
    """Trains ``workdir`` unless it holds a finished run -> the run's entry."""
    from tfkd.io import thread_environment

    config = os.path.join(common.REPO, FLAGS.config)
    cmd = [sys.executable, os.path.join(common.REPO, "bin", "train"), f"--config={config}", f"--workdir={workdir}"]
    cmd += extra + list(RUN_FLAGS) + [f"--config.{o}" for o in FLAGS.override]
    elapsed = None  # set when this invocation trains the run
    if not os.path.exists(os.path.join(workdir, "metrics.json")):
        os.makedirs(os.path.dirname(workdir), exist_ok=True)
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **thread_environment(FLAGS.threads, FLAGS.threads))
        start = time.time()
        with open(workdir + ".log", "a") as log:
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        if proc.returncode:
            raise RuntimeError(f"{name} failed ({proc.returncode}): {pretty(cmd)}; see {workdir}.log")
        elapsed = time.time() - start
        print(f"{elapsed:7.0f}s  {name}", flush=True)
    metrics, starts = read_json(workdir, "metrics.json"), read_json(workdir, "run_info.json")
    if elapsed is None:
        seconds = seconds_from_run_folder(workdir, starts)
    else:  # a run resumed from an earlier, killed invocation: this clock leaves out the stopped part
        seconds = None if len(starts) > 1 else elapsed
    return {"command": pretty(cmd), "seconds": seconds, "test_final_accuracy": metrics["test"]["final_accuracy"],
            "val_final_accuracy": metrics["val"].get("final_accuracy"), "best_epoch": metrics["best_epoch"],
            "git_revision": starts[0]["git_revision"]}


def read_json(workdir, name):
    with open(os.path.join(workdir, name)) as f:
        return json.load(f)


def reused_runs():
    """(method, seed) -> run entry, from the --reuse files' runs of this config without other flags."""
    found = {}
    config = os.path.normpath(FLAGS.config)
    for source in FLAGS.reuse:
        try:
            r = common.read_result(source)
        except FileNotFoundError:
            common.refuse(f"--reuse={source}: no benchmarks/results/{source}.json; expected the name of a "
                          "self_boosting_table results file")
        for dataset in r.get("datasets", {}).values():
            if os.path.normpath(dataset.get("config_file", "")) != config:
                continue
            for method, entry in dataset["methods"].items():
                if method in TEACHER_FIELD:
                    continue
                for run_ in entry["runs"]:
                    flags_ = [t for t in run_["command"].split() if t.startswith("--config.")]
                    if sorted(flags_) != sorted(list(RUN_FLAGS) + [f"--config.{o}" for o in FLAGS.override]):
                        continue  # another variant of the method, not the one this table compares
                    found.setdefault((method, run_["seed"]), {
                        "command": run_["command"], "seconds": None if run_.get("resumed") else run_.get("seconds"),
                        "test_final_accuracy": run_["test"]["final_accuracy"],
                        "val_final_accuracy": run_.get("val", {}).get("final_accuracy"),
                        "best_epoch": run_["best_epoch"], "git_revision": run_["git_revision"],
                        "reused_from": f"benchmarks/results/{source}.json"})
    return found


def add_run(results, method, seed, entry):
    m = results["methods"].setdefault(method, {"runs": [], "uses_teacher": method in TEACHER_FIELD})
    m["runs"] = sorted([r for r in m["runs"] if r["seed"] != seed] + [{"seed": seed, **entry}],
                       key=lambda r: r["seed"])
    values = [r["test_final_accuracy"] for r in m["runs"]]
    m["test_final_accuracy"] = {"mean": statistics.mean(values), "n": len(values), "values": values,
                                "std": statistics.stdev(values) if len(values) > 1 else 0.0}
    times = [r["seconds"] for r in m["runs"] if r.get("seconds")]
    m["mean_seconds"] = statistics.mean(times) if times else None


def main(argv):
    del argv
    if not os.path.exists(os.path.join(common.REPO, FLAGS.config)):
        common.refuse(f"--config={FLAGS.config}: no such file; expected a config under configs/, e.g. "
                      "configs/bench_fashion_mnist_converge.py")
    common.hold_results(FLAGS.name)
    try:
        results = common.read_result(FLAGS.name)  # continue a table started earlier (maybe elsewhere)
    except FileNotFoundError:
        results = {"benchmark": "teacher_student_table", "methods": {}}
    for key, value in (("config", FLAGS.config), ("teacher_overrides", FLAGS.teacher_override),
                       ("overrides", FLAGS.override)):
        if results.get(key, value) != value:
            common.refuse(f"benchmarks/results/{FLAGS.name}.json holds runs with {key}={results[key]}, not "
                          f"{value}; expected the same setting, or another --name")
    results.update({"config": FLAGS.config, "teacher_overrides": FLAGS.teacher_override,
                    "overrides": FLAGS.override, "jobs": FLAGS.jobs, "threads": FLAGS.threads,
                    "seeds": sorted({int(s) for s in FLAGS.seeds} | set(results.get("seeds", [])))})
    for key in ("command", "date_utc", "machine", "git_revision"):  # rewritten for this invocation's runs
        results.pop(key, None)
    done = {(m, r["seed"]) for m, e in results["methods"].items() for r in e["runs"]}
    reused = 0
    for (method, seed), entry in sorted(reused_runs().items()):
        if method in FLAGS.methods and str(seed) in FLAGS.seeds and (method, seed) not in done:
            add_run(results, method, seed, entry)
            done.add((method, seed))
            reused += 1
    todo = [(m, int(s)) for s in FLAGS.seeds for m in FLAGS.methods if (m, int(s)) not in done]  # seed-major
    print(f"{len(done)} runs in benchmarks/results/{FLAGS.name}.json ({reused} reused now); {len(todo)} to train",
          flush=True)
    if reused:  # recorded before the long part
        common.write_result(FLAGS.name, results)
    if not todo:
        return
    teacher_dir = os.path.join(FLAGS.runs_dir, "teacher")

    def student(method, seed):
        extra = [f"--method={method}", f"--seed={seed}"]
        if method in TEACHER_FIELD:
            extra.append(f"--config.{TEACHER_FIELD[method]}={teacher_dir}")
        entry = run(f"{method}/seed{seed}", os.path.join(FLAGS.runs_dir, method, f"seed{seed}"), extra)
        if method in TEACHER_FIELD:
            teacher = results["teacher"]
            entry.update(teacher_test_accuracy=teacher["test_final_accuracy"],
                         teacher_git_revision=teacher["git_revision"])
        return entry

    failed, queue = [], list(todo)
    teacher = {"state": "needed" if any(m in TEACHER_FIELD for m, _ in todo) else "unneeded"}

    def next_job():
        """The teacher first when a run needs it; then seed-major, the teacher's students ahead of the
        rest once it is there: a later session on another machine would train the teacher again."""
        if teacher["state"] == "needed":
            teacher["state"] = "training"
            return "teacher", 0
        ready = [job for job in queue if job[0] not in TEACHER_FIELD or teacher["state"] == "ready"]
        if not ready:
            return None
        job = min(ready, key=lambda j: j[0] not in TEACHER_FIELD)  # the first of the teacher's students
        queue.remove(job)
        return job

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, FLAGS.jobs)) as pool:
        running = {}
        while True:
            while len(running) < max(1, FLAGS.jobs) and (job := next_job()):
                running[pool.submit(run, "teacher", teacher_dir, ["--method=baseline", "--seed=0"] +
                                    [f"--config.{o}" for o in FLAGS.teacher_override]) if job[0] == "teacher"
                        else pool.submit(student, *job)] = job
            if not running:
                break
            finished, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in finished:
                job = running.pop(future)
                try:
                    entry = future.result()
                except RuntimeError as e:  # one failed run must not keep the finished ones out of the table
                    print(e, flush=True)
                    failed.append("/".join(map(str, job)))
                    teacher["state"] = "failed" if job[0] == "teacher" else teacher["state"]
                    continue
                # Only this (main) thread records: the workers just train.
                if job[0] == "teacher":
                    old = results.get("teacher") or {}
                    if entry["seconds"] is None and old.get("git_revision") == entry["git_revision"]:
                        entry["seconds"] = old.get("seconds")
                    results["teacher"], teacher["state"] = entry, "ready"
                else:
                    add_run(results, *job, entry)
                common.write_result(FLAGS.name, results)
    failed += [f"{method}/{seed} (its teacher failed)" for method, seed in queue]
    if failed:
        sys.exit(f"{len(failed)} runs failed: {', '.join(failed)}")


if __name__ == "__main__":
    common.run(main)
