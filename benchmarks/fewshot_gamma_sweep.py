#!/usr/bin/env python3
"""How much of the teacher's term Eq. 1 wants: ``dist`` retrained at several gamma with every other
knob of a committed search's best config, scored on validation-class episodes only.

    python benchmarks/fewshot_gamma_sweep.py [--table=fewshot_table_glyphs_mid_backbone]
        [--runs_dir=/tmp/tfkd_fs_mid] [--gammas=0,0.05,0.2,2] [--seeds=100,101] [--from_search=dist|gen]
        [--teacher=dist.teacher_embedding_units=512x512 --teacher=dist.teacher_pretrain_steps=2000]

Why: a bin/tune search of ``dist`` whose best gamma sits at its range's floor says "less teacher is
better" without saying how little. gamma = 0 leaves only the student's cross-entropy on real and
generated examples, i.e. ``gen`` with dist's other knobs; ``gen``'s own tuned config is trained at
the same seeds beside it. Nothing here sees the novel classes (``fewshot.evaluate_novel=False``,
as in bin/tune's trials), and the seeds default to tuning seeds apart from the table's reported
ones. ``--teacher`` changes the teacher (e.g. an MLP embedding stronger than the student) in every
dist run; the gen runs beside them have no teacher and stay as they are. Reads the features of the
table's run (``<runs_dir>/<dataset>/features``, written by benchmarks/fewshot_table.py with the
same --runs_dir); results go to
benchmarks/results/<table>_gamma_sweep.json after every run, and finished runs are not redone.
"""
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import flags  # noqa: E402

import common  # noqa: E402

flags.DEFINE_string("table", "fewshot_table_glyphs_mid_backbone", "Committed few-shot table whose searches "
                    "give the configs (benchmarks/results/<table>.json).")
flags.DEFINE_string("runs_dir", "/tmp/tfkd_fs_mid", "The --runs_dir that table was built with (its features).")
flags.DEFINE_list("gammas", ["0", "0.05", "0.2", "2"], "Values of dist.gamma (the searched best is always added).")
flags.DEFINE_enum("from_search", "dist", ["dist", "gen"], "Whose searched best values dist starts from: dist's "
                  "own search, or gen's (the student's knobs gen found best; the teacher's term added on top).")
flags.DEFINE_list("seeds", ["100", "101"], "Meta-training seeds (kept apart from the table's reported seeds).")
flags.DEFINE_integer("threads", 0, "TF intra/inter-op threads per run (0 = TensorFlow's default).")
flags.DEFINE_multi_string("teacher", [], "dist.FIELD=VALUE of the teacher for every dist run, e.g. "
                          "dist.teacher_embedding_units=512x512 (its own result file: _teacher_<field>_<value>...).")
flags.DEFINE_string("name", "", "Result file name (default <table>_gamma_sweep).")
FLAGS = flags.FLAGS


def check_request(table):
    """Every bad request fails here, before any training."""
    if FLAGS.from_search not in table.get("tuning", {}):
        common.refuse(f"benchmarks/results/{FLAGS.table}.json has no tuned {FLAGS.from_search} row; expected "
                      f"a table built with --tune_trials and {FLAGS.from_search} among its --methods")
    features = os.path.join(FLAGS.runs_dir, table["dataset"], "features")
    if not os.path.exists(os.path.join(features, "features.json")):
        common.refuse(f"{features} holds no extracted features; run benchmarks/fewshot_table.py "
                      f"--runs_dir={FLAGS.runs_dir} (with the table's flags) first")
    try:
        gammas = [float(g) for g in FLAGS.gammas]
        seeds = [int(s) for s in FLAGS.seeds]
    except ValueError as e:
        common.refuse(f"--gammas/--seeds: {e}; expected numbers")
    if min(gammas) < 0:
        common.refuse(f"--gammas={FLAGS.gammas}: expected non-negative weights")
    teacher = {}
    for item in FLAGS.teacher:
        field, sep, value = item.partition("=")
        if not (sep and value and field.startswith("dist.teacher")):
            common.refuse(f"--teacher={item}: expected dist.teacher_FIELD=VALUE (a setting of dist's teacher)")
        teacher[field] = value
    return features, gammas, seeds, teacher


def train(config_file, method, seed, workdir, features, extra):
    """One validation-only bin/train run (skipped once finished) -> (metrics, seconds or None)."""
    metrics_path = os.path.join(workdir, "metrics.json")
    cmd = [sys.executable, os.path.join(common.REPO, "bin", "train"), f"--config={config_file}",
           f"--method={method}", f"--seed={seed}", f"--workdir={workdir}",
           f"--config.fewshot.features_dir={features}", "--config.fewshot.evaluate_novel=False",
           "--config.export.enabled=False"] + extra
    seconds = common.run_logged(cmd, workdir + ".log", metrics_path, FLAGS.threads)
    with open(metrics_path) as f:
        metrics = json.load(f)
    with open(os.path.join(workdir, "run_info.json")) as f:
        revision = json.load(f)[0]["git_revision"]
    command = " ".join(["python"] + [os.path.relpath(c, common.REPO) if c.startswith(common.REPO) else c
                                     for c in cmd[1:]])
    print(f"{os.path.basename(os.path.dirname(workdir))}/seed{seed}: val {metrics['val_accuracy']:.4f}", flush=True)
    return {"seed": seed, "val_accuracy": metrics["val_accuracy"], "best_epoch": metrics["best_epoch"],
            "seconds": seconds, "command": command, "git_revision": revision}


def summarize(runs):
    values = [r["val_accuracy"] for r in runs]
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values), "values": values}


def main(argv):
    del argv
    table = common.read_result(FLAGS.table)
    features, gammas, seeds, teacher = check_request(table)
    suffix = "" if FLAGS.from_search == "dist" else f"_from_{FLAGS.from_search}"
    suffix += "".join(f"_{k.split('.')[-1]}_{v}" for k, v in teacher.items())
    name = FLAGS.name or f"{FLAGS.table}_gamma_sweep{suffix}"
    common.hold_results(name)
    root = os.path.join(FLAGS.runs_dir, table["dataset"], "gamma_sweep" + suffix)
    fewshot_cfg = os.path.join(common.REPO, table["fewshot_config"])
    overrides = [f"--config.{o}" for o in table["overrides"]]  # the table's selection protocol
    try:
        results = common.read_result(name)
    except FileNotFoundError:
        results = {"benchmark": "fewshot_gamma_sweep", "gammas": {}, "gen": {"runs": []}}
    # gen's values name gen's section: the same student knobs in dist's section.
    base = common.in_section(table["tuning"][FLAGS.from_search]["best"]["values"], FLAGS.from_search, "dist")
    if "dist.gamma" in base:
        gammas = sorted(set(gammas) | {float(base["dist.gamma"])})
    base.update(teacher)
    results.update({"table": FLAGS.table, "dataset": table["dataset"], "fewshot_config": table["fewshot_config"],
                    "from_search": FLAGS.from_search, "dist_values": base, "teacher_changes": teacher,
                    "gen_best_values": table["tuning"].get("gen", {}).get("best", {}).get("values"),
                    "overrides": table["overrides"], "threads": FLAGS.threads,
                    "tuned_val_accuracy": {m: t["best"]["val_accuracy"] for m, t in table["tuning"].items()}})
    for key in ("command", "date_utc", "machine", "git_revision", "dist_best_values"):
        results.pop(key, None)  # rewritten for this invocation (dist_best_values: dist_values' first name)
    configs = {"dist": os.path.join(root, "dist_config.py")}
    common.write_reused_config(configs["dist"], fewshot_cfg, base)
    if "gen" in table["tuning"]:
        configs["gen"] = os.path.join(root, "gen_best_config.py")
        common.write_reused_config(configs["gen"], fewshot_cfg, table["tuning"]["gen"]["best"]["values"])
    for seed in seeds:  # seed-major: a partial sweep still covers every gamma
        for gamma in gammas:
            key = repr(gamma)
            entry = results["gammas"].setdefault(key, {"runs": []})
            if any(r["seed"] == seed for r in entry["runs"]):
                continue
            workdir = os.path.join(root, f"gamma_{key}", f"seed{seed}")
            entry["runs"].append(train(configs["dist"], "dist", seed, workdir, features,
                                       overrides + [f"--config.dist.gamma={gamma}"]))
            entry["val_accuracy"] = summarize(entry["runs"])
            common.write_result(name, results)
        if "gen" in configs and not any(r["seed"] == seed for r in results["gen"]["runs"]):
            results["gen"]["runs"].append(train(configs["gen"], "gen", seed, os.path.join(root, "gen", f"seed{seed}"),
                                                features, overrides))
            results["gen"]["val_accuracy"] = summarize(results["gen"]["runs"])
            common.write_result(name, results)
    common.write_result(name, results)  # also when every run was done earlier


if __name__ == "__main__":
    common.run(main)
