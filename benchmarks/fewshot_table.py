#!/usr/bin/env python3
"""Few-shot table (progressive-distillation paper, Tables 1-2 protocols) on real data.

    python benchmarks/fewshot_table.py [--dataset=glyphs] [--methods=cosine,gen] [--seeds=0,1,2]
        [--runs_dir=/tmp/tfkd_fewshot] [--threads=0] [--backbone_override=train.epochs=2]

Pipeline, every step a real command in its own resumable workdir under --runs_dir:
  1. backbone: bin/train --config=configs/<dataset>_fewshot_backbone.py (base classes only,
     checkpoint selected on validation-class episodes);
  2. features: bin/extract_features (base / validation / novel);
  3. every (method, seed): bin/train --method=M --config=configs/<dataset>_fewshot.py (episodic
     meta-training on base features, selection on validation episodes, novel-class evaluation).
With --tune_trials=N, step 3 is preceded, for every row, by a bin/tune random search of N trials
(the same budget for every row) over the row's space in TUNE_SPACES, selected on validation-class
episodes only (--override=fewshot.val_way=10000 selects on the all-way protocol) with a tuning
seed apart from the reported ones; the seed runs then train the best config. An ensemble row
reuses the tuned config of its single-model row. The trials never see the novel classes. A
search already in the committed results file (same space, trial count, tuning seed and
--override) is not run again on a new machine: its best values become the row's config
(``reused_search`` in the JSON), and only the backbone, features and seed runs are redone.
Floors on the same seeded novel episodes: 1-NN on raw pixels, and cosine prototypes on the
backbone features with nothing meta-trained. Paired differences (method - cosine) are computed
episode by episode, since every method sees the same episodes. Results:
benchmarks/results/fewshot_table_<dataset>.json (rewritten after every step).
"""
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import flags  # noqa: E402

import common  # noqa: E402

flags.DEFINE_string("dataset", "glyphs", "configs/<dataset>_fewshot_backbone.py and configs/<dataset>_fewshot.py.")
# Table-2 rows: name -> (method, extra --config flags).
ROWS = {
    "cosine": ("cosine", []),
    "gen": ("gen", []),
    "dist": ("dist", []),
    "dist_up": ("progressive", ["progressive.direction=strengthen", "progressive.k_start=1", "progressive.k_end=20"]),
    "dist_down": ("progressive", ["progressive.direction=weaken"]),
    "dist_down_ensemble": ("progressive", ["progressive.direction=weaken", "progressive.ensemble_size=4",
                                           "progressive.k_teacher=16"]),
}
flags.DEFINE_list("methods", list(ROWS), f"Rows of the table: {', '.join(ROWS)}.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Meta-training seeds (the backbone and the test episodes are shared).")
flags.DEFINE_string("runs_dir", "/tmp/tfkd_fewshot", "Where the runs' workdirs go (not committed).")
flags.DEFINE_integer("threads", 0, "TF intra/inter-op threads per run (0 = TensorFlow's default).")
flags.DEFINE_multi_string("backbone_override", [], "Extra --config.* flags for the backbone run.")
flags.DEFINE_multi_string("override", [], "Extra --config.* flags for every few-shot run.")
flags.DEFINE_string("name", "", "Result file name under benchmarks/results/ (default fewshot_table_<dataset>).")
flags.DEFINE_integer("tune_trials", 0, "Random-search trials per row before the seed runs (0 = the config as is).")
flags.DEFINE_integer("tune_seed", 100, "Seed of the tuning trials (kept apart from --seeds).")
flags.DEFINE_multi_string("row_override", [], "ROW:field=value, an extra --config flag for one row only (its search "
                          "and seed runs; an ensemble row also gets its single-model row's), e.g. "
                          "dist:dist.teacher_pretrain_steps=2000.")
flags.DEFINE_multi_string("tune_as", [], "ROW:SOURCE: ROW trains with SOURCE's searched best values (each "
                          "moved to ROW's method section) instead of a search of its own, e.g. dist_down:dist "
                          "(the mid table's two searches picked the same trial).")
flags.DEFINE_string("reuse_searches_from", "", "Another committed table (its --name) whose searches are reused for "
                    "the rows this table does not change: same space, trials, tuning seed, --override and "
                    "--row_override.")

# Search spaces of --tune_trials (bin/tune syntax). Every method gets the student's own knobs (the
# embedding f, its L2, the cosine scale's init, lr, the number and ways of meta-training episodes);
# the others add theirs: G's output count; the teacher's weight gamma and T's init.
STUDENT_SPACE = ("{m}.embedding_units=choice:none,128x128,256x256,512x512", "train.weight_decay=log:1e-6:1e-2",
                 "{m}.scale_init=choice:10.0,30.0,75.0", "train.learning_rate=log:1e-4:1e-2",
                 "fewshot.episodes_per_epoch=choice:200,500,1000", "fewshot.n_way=choice:5,20,50")
TUNE_SPACES = {
    "cosine": STUDENT_SPACE,
    "gen": STUDENT_SPACE + ("{m}.num_generated=choice:1,2,4,8",),
    "dist": STUDENT_SPACE + ("{m}.num_generated=choice:1,2,4,8", "{m}.gamma=log:0.5:50",
                             "{m}.temperature_init=choice:3.0,7.0,12.0"),
}
TUNE_SPACES["progressive"] = TUNE_SPACES["dist"]
ORDERING = ("cosine", "gen", "dist", "dist_down", "dist_down_ensemble")  # the paper's, worst to best
TUNED_AS = {"dist_down_ensemble": "dist_down"}  # an ensemble trains members of the tuned single model
FLAGS = flags.FLAGS


def row_overrides():
    """--row_override as {row: [field=value, ...]}; ensemble rows inherit their single model's."""
    out = {}
    for spec in FLAGS.row_override:
        row, sep, override = spec.partition(":")
        if not sep or row not in ROWS or "=" not in override:
            common.refuse(f"--row_override={spec}: expected ROW:field=value with ROW one of {', '.join(ROWS)}")
        out.setdefault(row, []).append(override)
    for row, source in TUNED_AS.items():
        if source in out:
            out[row] = out[source] + out.get(row, [])
    return out


def tune_as():
    """--tune_as as {row: source row}."""
    out = {}
    for spec in FLAGS.tune_as:
        row, sep, source = spec.partition(":")
        if not sep or row not in ROWS or source not in ROWS or row == source or source in TUNED_AS:
            common.refuse(f"--tune_as={spec}: expected ROW:SOURCE, two different rows of {', '.join(ROWS)} "
                          "(SOURCE not an ensemble row)")
        if source not in FLAGS.methods:
            common.refuse(f"--tune_as={spec}: expected {source} among --methods={','.join(FLAGS.methods)}")
        out[row] = source
    return out


def committed_search(method, space, own_overrides, candidates):
    """The first committed search of ``method`` that this table would repeat exactly (same features:
    dataset, backbone flags and thread count; same search; same overrides), with its file."""
    for name, table in candidates:
        committed = table.get("tuning", {}).get(method)
        if (committed and committed.get("space") == list(space) and table.get("dataset") == FLAGS.dataset
                and table.get("backbone_overrides") == FLAGS.backbone_override
                and table.get("threads") == FLAGS.threads
                and len(committed.get("trials", [])) == FLAGS.tune_trials
                and table.get("tune_seed") == FLAGS.tune_seed and table.get("overrides") == FLAGS.override
                and table.get("row_overrides", {}).get(method, []) == own_overrides):
            return name, table, committed
    return None


def rel(path):
    return os.path.relpath(path, common.REPO) if path.startswith(common.REPO) else path


def run_command(cmd, done_marker, log_path):
    """Runs ``cmd`` unless ``done_marker`` exists; returns (seconds, command string)."""
    pretty = " ".join(rel(c) for c in cmd)
    seconds = common.run_logged(cmd, log_path, done_marker, FLAGS.threads)
    if seconds is not None:
        print(f"{seconds:7.0f}s  {pretty}", flush=True)
    return seconds, pretty


def summarize(values):
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values), "values": values}


def floors(backbone_dir, features_dir, fewshot_cfg):
    """1-NN on raw pixels and untrained cosine prototypes on the features, same episodes."""
    import numpy as np

    from tfkd import data as data_lib
    from tfkd import evaluation
    from tfkd.train_fewshot import FeatureSplits

    import ml_collections

    with open(os.path.join(backbone_dir, "config.json")) as f:
        data_cfg = ml_collections.ConfigDict(json.load(f)["data"])
    data = data_lib.load_dataset(data_cfg)
    novel = np.isin(data.all_images.labels, data.class_split["novel"])
    pixels = data.all_images.images[novel].reshape(int(novel.sum()), -1).astype(np.float32) / 255.0
    pixel_labels = data.all_images.labels[novel]
    feats = FeatureSplits(features_dir)
    novel_f, novel_l = feats["novel"]
    classes = feats.classes("novel")
    groups = feats.class_groups
    out = {}
    # The same protocols, and so the same episodes, as the methods; raw pixels only for the
    # episode protocols (the all-way 1-NN over thousands of pixel vectors is the slow part).
    pixel_cfg = ml_collections.ConfigDict(fewshot_cfg.to_dict())
    pixel_cfg.all_way_shots = ()
    out["pixels_1nn"] = evaluation.protocol_suite(evaluation.nearest_neighbour_predictor, pixels, pixel_labels,
                                                  classes, pixel_cfg, class_groups=groups)
    out["features_prototypes"] = evaluation.protocol_suite(evaluation.cosine_prototype_predictor, novel_f, novel_l,
                                                           classes, fewshot_cfg, class_groups=groups)
    return out


def tune_row(method, fewshot_cfg_file, features_dir, root, bin_dir, previous, candidates, own_overrides):
    """bin/tune for one row (resumable; skipped once its best_config.py exists) -> summary."""
    method_name, row_flags = ROWS[method]
    workdir = os.path.join(root, "tune", method)
    space = tuple(spec.format(m=method_name) for spec in TUNE_SPACES[method_name])
    cmd = [sys.executable, os.path.join(bin_dir, "tune"), f"--config={fewshot_cfg_file}", f"--method={method_name}",
           f"--seed={FLAGS.tune_seed}", f"--workdir={workdir}", f"--config.fewshot.features_dir={features_dir}",
           "--config.tune.tuner=random", f"--config.tune.max_trials={FLAGS.tune_trials}",
           f"--config.tune.space={space!r}"]
    cmd += [f"--config.{o}" for o in row_flags + FLAGS.override + own_overrides]
    best_config = os.path.join(workdir, "best_config.py")
    # A search that ran here (its trials folder) is continued or read; otherwise a committed one is reused,
    # also when an earlier invocation already wrote its best_config.py.
    searched_here = os.path.isdir(os.path.join(workdir, "trials"))
    found = None if searched_here else committed_search(method, space, own_overrides, candidates)
    if found:
        source, table, committed = found
        common.write_reused_config(best_config, fewshot_cfg_file, committed["best"]["values"])
        reused = {k: committed[k] for k in ("command", "seconds", "space", "trials", "best")}
        # A search this table had itself reused (an earlier invocation) still names the table it ran in.
        origin = committed.get("reused_search") if committed.get("reused_search", {}).get("table") else {
            "table": source, "git_revision": table.get("git_revision"), "date_utc": table.get("date_utc")}
        return {**reused, "best_config": best_config, "reused_search": origin}
    seconds, pretty = run_command(cmd, best_config, workdir + ".log")
    if seconds is None:
        seconds = previous.get("tuning", {}).get(method, {}).get("seconds")
    trials = []
    trials_dir = os.path.join(workdir, "trials")
    for trial_id in sorted(os.listdir(trials_dir)):
        path = os.path.join(trials_dir, trial_id, "trial.json")
        if os.path.exists(path):
            with open(path) as f:
                t = json.load(f)
            trial = {"trial": trial_id, "values": t["values"], "val_accuracy": t["score"]}
            last = last_epoch_logs(os.path.join(trials_dir, trial_id))
            if last:  # where training ended, e.g. the learned temperature T of Eq. 1
                trial["last_epoch_logs"] = last
            trials.append(trial)
    best = max(trials, key=lambda t: t["val_accuracy"])
    return {"command": pretty, "seconds": seconds, "space": list(space), "trials": trials, "best": best,
            "best_config": best_config}


def last_epoch_logs(run_dir):
    """A run's last epoch's logged metrics (its history.csv), e.g. where a learned T ended; {} if none."""
    import numpy as np

    from tfkd.errors import WorkdirError
    from tfkd.visualize import read_history

    try:
        history = read_history(run_dir)
    except WorkdirError:
        return {}
    return {k: float(v[-1]) for k, v in history.items() if not np.isnan(v[-1])}


def paired(a, b):
    """Mean +- 95% CI of the per-episode difference a - b (same episodes)."""
    import numpy as np

    from tfkd.data.episodes import mean_confidence_interval

    diff = np.asarray(a) - np.asarray(b)
    mean, ci = mean_confidence_interval(diff)
    return {"mean": mean, "ci95": ci}


def main(argv):
    del argv
    dataset = FLAGS.dataset
    name = FLAGS.name or f"fewshot_table_{dataset}"
    common.hold_results(name)
    root = os.path.join(FLAGS.runs_dir, dataset)
    backbone_cfg = os.path.join(common.REPO, "configs", f"{dataset}_fewshot_backbone.py")
    fewshot_cfg_file = os.path.join(common.REPO, "configs", f"{dataset}_fewshot.py")
    bin_dir = os.path.join(common.REPO, "bin")
    backbone_dir, features_dir = os.path.join(root, "backbone"), os.path.join(root, "features")
    previous = {}
    if os.path.exists(os.path.join(common.RESULTS, f"{name}.json")):
        previous = common.read_result(name)
        # Runs continue or reuse the committed ones only at the same thread count: TensorFlow's float
        # reductions depend on it, and the short backbone regimes amplify that (glyphs, 4 epochs at
        # width 0.125: 22.0 % base-class accuracy at 1 thread, 16.0 % at 2, each exactly reproducible).
        if previous.get("threads", FLAGS.threads) != FLAGS.threads:
            common.refuse(f"--threads={FLAGS.threads}: benchmarks/results/{name}.json was measured with "
                          f"--threads={previous['threads']}; expected the same (or a new --name)")
    overrides_by_row, tuned_as = row_overrides(), tune_as()  # refused here on a bad flag, before any work
    candidates = [(name, previous)]
    if FLAGS.reuse_searches_from:
        try:
            candidates.append((FLAGS.reuse_searches_from, common.read_result(FLAGS.reuse_searches_from)))
        except FileNotFoundError:
            common.refuse(f"--reuse_searches_from={FLAGS.reuse_searches_from}: expected the name of a results file "
                          "under benchmarks/results/")
    results = {"benchmark": "fewshot_table", "dataset": dataset, "seeds": [int(s) for s in FLAGS.seeds],
               "backbone_config": rel(backbone_cfg), "fewshot_config": rel(fewshot_cfg_file),
               "backbone_overrides": FLAGS.backbone_override, "overrides": FLAGS.override,
               "row_overrides": overrides_by_row, "tune_as": tuned_as, "threads": FLAGS.threads,
               "tune_trials": FLAGS.tune_trials, "tune_seed": FLAGS.tune_seed,
               "reuse_searches_from": FLAGS.reuse_searches_from, "steps": {}, "methods": {}}

    cmd = [sys.executable, os.path.join(bin_dir, "train"), f"--config={backbone_cfg}", f"--workdir={backbone_dir}"]
    cmd += [f"--config.{o}" for o in FLAGS.backbone_override]
    seconds, pretty = run_command(cmd, os.path.join(backbone_dir, "metrics.json"), backbone_dir + ".log")
    reused = lambda step: previous.get("steps", {}).get(step, {}).get("seconds")  # noqa: E731
    results["steps"]["backbone"] = {"command": pretty, "seconds": seconds or reused("backbone")}
    with open(os.path.join(backbone_dir, "metrics.json")) as f:
        bb = json.load(f)
    results["backbone"] = {"best_epoch": bb["best_epoch"], "select_metric": bb["select_metric"],
                           "epochs": bb["epochs"], "test_base_class_accuracy": bb["test"]["final_accuracy"]}

    cmd = [sys.executable, os.path.join(bin_dir, "extract_features"), f"--workdir={backbone_dir}",
           f"--output={features_dir}"]
    seconds, pretty = run_command(cmd, os.path.join(features_dir, "features.json"), features_dir + ".log")
    results["steps"]["features"] = {"command": pretty, "seconds": seconds or reused("features")}
    common.write_result(name, results)

    row_config = {method: fewshot_cfg_file for method in FLAGS.methods}
    if FLAGS.tune_trials:
        results["tuning"] = {}
        for method in FLAGS.methods:
            if method in TUNED_AS or method in tuned_as:
                continue
            results["tuning"][method] = tune_row(method, fewshot_cfg_file, features_dir, root, bin_dir, previous,
                                                 candidates, overrides_by_row.get(method, []))
            row_config[method] = results["tuning"][method]["best_config"]
            common.write_result(name, results)
        for method, source in tuned_as.items():
            values = common.in_section(results["tuning"][source]["best"]["values"], ROWS[source][0], ROWS[method][0])
            row_config[method] = os.path.join(root, "tune", method, "best_config.py")
            common.write_reused_config(row_config[method], fewshot_cfg_file, values)
        for method, source in TUNED_AS.items():
            if method in row_config:
                row_config[method] = os.path.join(root, "tune", source, "best_config.py")

    per_episode = {}  # method -> protocol -> [per-seed accuracy lists]
    for seed in FLAGS.seeds:
        for method in FLAGS.methods:
            workdir = os.path.join(root, method, f"seed{seed}")
            method_name, row_flags = ROWS[method]
            cmd = [sys.executable, os.path.join(bin_dir, "train"), f"--config={row_config[method]}",
                   f"--method={method_name}", f"--seed={seed}", f"--workdir={workdir}",
                   f"--config.fewshot.features_dir={features_dir}"]
            cmd += [f"--config.{o}" for o in row_flags + FLAGS.override + overrides_by_row.get(method, [])]
            seconds, pretty = run_command(cmd, os.path.join(workdir, "metrics.json"), workdir + ".log")
            with open(os.path.join(workdir, "evaluation.json")) as f:
                evaluation_results = json.load(f)
            with open(os.path.join(workdir, "metrics.json")) as f:
                metrics = json.load(f)
            with open(os.path.join(workdir, "run_info.json")) as f:
                revision = json.load(f)[0]["git_revision"]
            entry = results["methods"].setdefault(method, {"runs": []})
            entry["runs"] = [r for r in entry["runs"] if r["seed"] != int(seed)]
            if seconds is None:  # finished earlier: keep the time measured then
                seconds = next((r["seconds"] for r in previous.get("methods", {}).get(method, {}).get("runs", [])
                                if r["seed"] == int(seed)), None)
            entry["runs"].append({"seed": int(seed), "command": pretty, "seconds": seconds,
                                  "best_epoch": metrics.get("best_epoch"), "val_accuracy": metrics.get("val_accuracy"),
                                  "ensemble_members": metrics.get("members"),
                                  "test": metrics["test"], "git_revision": revision})
            entry["test"] = {p: summarize([r["test"][p] for r in entry["runs"]]) for p in metrics["test"]}
            entry["ci95_first_seed"] = {p: r["ci95"] for p, r in evaluation_results.items() if "ci95" in r}
            for p, r in evaluation_results.items():
                if "accuracies" in r:
                    per_episode.setdefault(method, {}).setdefault(p, []).append(r["accuracies"])
                for k, row in (r.get("shots", {}).items() if p == "all_way" else ()):
                    if "per_query" in row["top1"]:  # each query's top-1 hit: paired like episodes
                        per_episode.setdefault(method, {}).setdefault(f"all_way_{k}shot_top1", []).append(
                            row["top1"]["per_query"])
            common.write_result(name, results)

    # Paired differences against cosine, per protocol, on the seed-averaged per-episode accuracy.
    import numpy as np

    if "cosine" in per_episode:
        results["paired_vs_cosine"] = {}
        for method, protocols in per_episode.items():
            if method == "cosine":
                continue
            results["paired_vs_cosine"][method] = {
                p: paired(np.mean(accs, 0), np.mean(per_episode["cosine"][p], 0)) for p, accs in protocols.items()}

    # The paper's ordering (Table 1), step by step, each step paired on the same episodes / queries.
    chain = [m for m in ORDERING if m in per_episode]
    results["paired_steps"] = {
        f"{hi} - {lo}": {p: paired(np.mean(per_episode[hi][p], 0), np.mean(per_episode[lo][p], 0))
                         for p in per_episode[hi] if p in per_episode[lo]}
        for lo, hi in zip(chain, chain[1:])}
    common.write_result(name, results)

    # The floors use the protocols of the first few-shot run's resolved config.
    import ml_collections

    with open(os.path.join(root, FLAGS.methods[0], f"seed{FLAGS.seeds[0]}", "config.json")) as f:
        fewshot_cfg = ml_collections.ConfigDict(json.load(f)["fewshot"])
    start = time.time()
    floor_results = floors(backbone_dir, features_dir, fewshot_cfg)
    results["floors"] = {k: {p: ({"mean": r["mean"], "ci95": r["ci95"]} if "mean" in r else
                                 {k2: {"top1": v["top1"]["mean"], "top5": v["top5"]["mean"]}
                                  for k2, v in r["shots"].items()})
                             for p, r in v.items()} for k, v in floor_results.items()}
    results["steps"]["floors"] = {"seconds": time.time() - start}
    results["total_seconds_this_invocation_excluding_reused_steps"] = sum(
        s.get("seconds") or 0 for s in results["steps"].values()) + sum(
        r.get("seconds") or 0 for m in results["methods"].values() for r in m["runs"])
    common.write_result(name, results)


if __name__ == "__main__":
    common.run(main)
