#!/usr/bin/env python3
"""Does the many-shot teacher's term help on the classes it was meta-trained on? ``dist`` at several
gamma, meta-trained on the base classes with part of every base class's images held out, then tested
on those held-out images (classes seen in meta-training, images not) and on the novel alphabets,
with the same protocols, paired per query / episode against gamma = 0.

    python benchmarks/fewshot_base_holdout.py [--table=fewshot_table_glyphs_mid_backbone]
        [--runs_dir=/tmp/tfkd_fs_mid] [--holdout=8] [--gammas=0,0.5,5] [--seeds=100,101]
        [--student=dist.embedding_units=none] [--method=progressive]

Why: on the mid backbone every gamma > 0 lowered validation-class accuracy
(benchmarks/results/*_gamma_sweep*.json), although the teacher classifies the base-class training
queries better than the student does. If the term helps on held-out images of the base classes and
hurts on new alphabets, what the teacher passes on does not transfer to new classes; if it hurts on
both, it does not help the student even on the classes it knows.

Also measured, without training: the teacher's own accuracy (cosine prototypes of every training
image of each base class, over all base classes at once) on the training images with each image
inside its own class's prototype -- as in meta-training, where S_teacher holds every base example,
the queries included --, with it left out, and on the held-out images.

``--method=progressive`` runs Dist↓ (progressive distillation, the student's real shots weakened
from ``progressive.k_start`` to ``k_end``) at every gamma > 0 instead of ``dist``; the reference at
gamma = 0 stays ``dist`` (= ``gen``) with the same student changes, the very runs of the matching
``dist`` variant (reused when they exist), so every variant is paired against the same gen runs.

Student knobs: gen's searched best values from the table (as the gamma sweep's --from_search=gen);
at gamma = 0 ``dist`` is ``gen``; ``--student`` changes some of them (a variant with its own result
file and run folders, the same split and features). Checkpoints are chosen on validation-class episodes as in the
table. The features are the table's (``<runs_dir>/<dataset>/features``); when missing they are
rebuilt with the table's backbone flags, and the backbone's base-class test accuracy is recorded
next to the table's. Each run's results go to benchmarks/results/<name>.json when it finishes;
the paired differences need every run's per-query hits, which stay in the run folders, so they are
computed once all runs exist on this machine (a rerun reuses finished run folders).
"""
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import flags  # noqa: E402

import common  # noqa: E402

flags.DEFINE_string("table", "fewshot_table_glyphs_mid_backbone", "Committed few-shot table (with a tuned gen "
                    "row) whose features and gen search are used (benchmarks/results/<table>.json).")
flags.DEFINE_string("runs_dir", "/tmp/tfkd_fs_mid", "Runs folder of that table (its features are reused or rebuilt).")
flags.DEFINE_integer("holdout", 8, "Images held out of every base class (the rest meta-train and form S_teacher).")
flags.DEFINE_list("gammas", ["0", "0.5", "5"], "Values of dist.gamma; 0 is the reference every other is paired with.")
flags.DEFINE_list("seeds", ["100", "101"], "Meta-training seeds (kept apart from the table's reported ones).")
flags.DEFINE_multi_string("student", [], "field=value on top of gen's searched values, e.g. "
                          "dist.embedding_units=none (no embedding f: the student works in the teacher's feature "
                          "space, as in the paper's miniImageNet setting); names the result file and run folders.")
flags.DEFINE_enum("method", "dist", ["dist", "progressive"], "The method at gamma > 0 (progressive: Dist↓, "
                  "direction weaken; gamma = 0 stays dist, i.e. gen).")
flags.DEFINE_integer("threads", 0, "TF intra/inter-op threads per run (0 = TensorFlow's default).")
flags.DEFINE_string("name", "", "Result file name (default <table>_base_holdout).")
FLAGS = flags.FLAGS

SPLIT_SEED = 2031
# The protocols of both test sets: the table's headline columns, with as many queries as 8 held-out
# images leave after 2 shots.
PROTOCOL = {"test_shots": (1,), "test_way": 5, "test_queries": 5, "test_episodes": 1000, "within_group_way": 20,
            "all_way_shots": (1, 2), "all_way_queries": 5, "all_way_draws": 5, "evaluate_novel": True}
HEADLINE = ("all_way_1shot_top1", "all_way_2shot_top1", "20way_within_group_1shot")


def check_request():
    """Every bad request fails here, before any training."""
    try:
        table = common.read_result(FLAGS.table)
    except FileNotFoundError:
        common.refuse(f"--table={FLAGS.table}: benchmarks/results/{FLAGS.table}.json does not exist")
    if "gen" not in table.get("tuning", {}):
        common.refuse(f"benchmarks/results/{FLAGS.table}.json has no tuned gen row; expected a table built with "
                      "--tune_trials and gen among its --methods")
    try:
        gammas = sorted({float(g) for g in FLAGS.gammas})
        seeds = [int(s) for s in FLAGS.seeds]
    except ValueError as e:
        common.refuse(f"--gammas/--seeds: {e}; expected numbers")
    if gammas[0] != 0.0 or len(gammas) < 2:
        common.refuse(f"--gammas={','.join(FLAGS.gammas)}: expected 0 (the reference) and at least one weight > 0")
    student, method_only = {}, {}
    for item in FLAGS.student:
        field, sep, value = item.partition("=")
        if sep and field.startswith("dist."):
            student[field] = value
        elif sep and FLAGS.method != "dist" and field.startswith(f"{FLAGS.method}."):
            method_only[field] = value  # a knob dist lacks (the k schedule): the gamma > 0 runs only
        else:
            expected = "dist.FIELD=VALUE" + (f" or {FLAGS.method}.FIELD=VALUE" if FLAGS.method != "dist" else "")
            common.refuse(f"--student={item}: expected {expected}")
    need = max(PROTOCOL["all_way_shots"]) + 1
    if FLAGS.holdout < need:
        common.refuse(f"--holdout={FLAGS.holdout}: expected >= {need} (2 shots and at least one query per class)")
    return table, gammas, seeds, student, method_only


def pretty(cmd):
    """The command as run from the repository root (a benchmark clone's path left out)."""
    return " ".join(["python"] + [c.replace(common.REPO + os.sep, "") for c in cmd[1:]])


def ensure_features(table, root):
    """The table's feature folder, rebuilt with its backbone flags when missing -> backbone summary.

    Rebuilt with the table's own thread count: TensorFlow's float reductions depend on it, and the
    table's short backbone regime amplifies that (4 epochs at width 0.125 on glyphs: 22.0 % base-class
    test accuracy at 1 thread, 16.0 % at 2, each exactly reproducible). A rebuilt backbone that does
    not reproduce the table's accuracy is refused: every committed result of this benchmark was
    measured on the table's features, and new runs would be paired with different ones."""
    bin_dir = os.path.join(common.REPO, "bin")
    backbone, features = os.path.join(root, "backbone"), os.path.join(root, "features")
    threads = table.get("threads", FLAGS.threads)
    cmd = [sys.executable, os.path.join(bin_dir, "train"),
           f"--config={os.path.join(common.REPO, table['backbone_config'])}", f"--workdir={backbone}"]
    cmd += [f"--config.{o}" for o in table["backbone_overrides"]]
    seconds = common.run_logged(cmd, backbone + ".log", os.path.join(backbone, "metrics.json"), threads)
    with open(os.path.join(backbone, "metrics.json")) as f:
        accuracy = json.load(f)["test"]["final_accuracy"]
    expected = table["backbone"]["test_base_class_accuracy"]
    if abs(accuracy - expected) > 1e-6:
        common.refuse(f"the backbone in {backbone} has base-class test accuracy {accuracy:.4f}, the table's "
                      f"{FLAGS.table} has {expected:.4f}: its features are not the table's; expected the table's "
                      f"backbone (move {backbone} away to rebuild it with the table's {threads} thread(s))")
    extract = [sys.executable, os.path.join(bin_dir, "extract_features"), f"--workdir={backbone}",
               f"--output={features}"]
    common.run_logged(extract, features + ".log", os.path.join(features, "features.json"), threads)
    return features, {"command": pretty(cmd), "seconds": seconds, "threads": threads,
                      "test_base_class_accuracy": accuracy, "table_test_base_class_accuracy": expected}


def split_base(features, out):
    """``out``: the feature folder with ``FLAGS.holdout`` images of every base class moved out of
    base.h5 (seeded per class) -> (held-out features, labels), also kept in out/heldout_base.npz."""
    import shutil

    import numpy as np

    from tfkd.data.features import METADATA_FILE, read_features, write_features
    from tfkd.train_fewshot import FeatureSplits

    heldout_file = os.path.join(out, "heldout_base.npz")
    if not os.path.exists(heldout_file):
        splits = FeatureSplits(features)
        base_f, base_l = splits["base"]
        rng = np.random.default_rng(SPLIT_SEED)
        held = np.zeros(len(base_l), bool)
        for c in np.unique(base_l):
            idx = rng.permutation(np.flatnonzero(base_l == c))
            held[idx[:FLAGS.holdout]] = True
        os.makedirs(out, exist_ok=True)
        write_features(os.path.join(out, "base.h5"), base_f[~held], base_l[~held], overwrite=True)
        for split in ("validation", "novel"):
            write_features(os.path.join(out, f"{split}.h5"), *splits[split], overwrite=True)
        shutil.copyfile(os.path.join(features, METADATA_FILE), os.path.join(out, METADATA_FILE))
        write_features(heldout_file, base_f[held], base_l[held], overwrite=True)  # last: marks the split done
    return read_features(heldout_file)


def teacher_accuracy(train_f, train_l, held_f, held_l):
    """Top-1 of cosine prototypes over every training image of each base class, all classes at once:
    on the training images (own image inside its prototype, then left out) and on the held-out ones."""
    import numpy as np

    def unit(x):
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)

    classes = np.unique(train_l)
    index = np.searchsorted(classes, train_l)
    raw = train_f.astype(np.float64)
    x = unit(raw)
    sums = np.zeros((len(classes), x.shape[1]))
    np.add.at(sums, index, raw)  # as Distill.teacher_prototypes: the mean feature, then normalised
    counts = np.bincount(index, minlength=len(classes)).astype(np.float64)
    inside = unit(sums / counts[:, None])
    scores_inside = x @ inside.T
    # Leave-one-out: the own class's prototype without the image itself (the others are unchanged).
    own_loo = unit((sums[index] - raw) / (counts[index] - 1)[:, None])
    scores_loo = scores_inside.copy()
    scores_loo[np.arange(len(x)), index] = np.sum(x * own_loo, -1)
    held_scores = unit(held_f.astype(np.float64)) @ inside.T
    return {"classes": int(len(classes)),
            "training_images_own_image_inside": float(np.mean(scores_inside.argmax(-1) == index)),
            "training_images_left_out": float(np.mean(scores_loo.argmax(-1) == index)),
            "heldout_images": float(np.mean(classes[held_scores.argmax(-1)] == held_l))}


def hits(results):
    """{protocol: per-query (all-way) or per-episode (N-way) accuracies} of a protocol suite."""
    out = {}
    for name, r in results.items():
        if name == "all_way":
            for k, row in r["shots"].items():
                out[f"all_way_{k}shot_top1"] = row["top1"]["per_query"]
                out[f"all_way_{k}shot_top5_mean"] = row["top5"]["mean"]
        else:
            out[name] = r["accuracies"]
    return out


def many_shot_accuracy(predictor_for_shot, train_f, train_l, held_f, held_l):
    """The student's own classifier with every meta-training image of each base class as its support,
    all base classes at once, on the held-out images: what the teacher is, in the student's space."""
    import numpy as np

    classes = np.unique(train_l)
    by_class = [np.flatnonzero(train_l == c) for c in classes]
    k = max(len(i) for i in by_class)
    support = np.zeros((len(classes), k, train_f.shape[1]), np.float32)
    mask = np.zeros((len(classes), k), bool)
    for i, idx in enumerate(by_class):
        support[i, : len(idx)], mask[i, : len(idx)] = train_f[idx], True
    scores = np.asarray(predictor_for_shot(k)(support, mask, held_f.astype(np.float32)))
    return float(np.mean(classes[scores.argmax(-1)] == held_l))


def run_teacher_accuracy(workdir, train_f, train_l, held_f, held_l):
    """The run's own teacher (restored, with its pre-trained embedding if it has one), S_teacher from
    the meta-training images, over all base classes on the held-out images. An ensemble's is its
    first member's (an ensemble's parent holds no weights)."""
    import numpy as np

    from tfkd.runs import read_network_info, restore_fewshot_method

    members = read_network_info(workdir).get("ensemble_members")
    method, _ = restore_fewshot_method(os.path.join(workdir, members[0]) if members else workdir)
    classes = np.unique(train_l)
    method.use_base_split(train_f, train_l, classes)
    scores = np.asarray(method.teacher_logits_all(held_f.astype(np.float32)))
    return float(np.mean(classes[scores.argmax(-1)] == held_l))


def evaluate(workdir, test_sets, class_groups, base_training):
    """Every protocol on each test set, and the many-shot accuracy on the held-out images; per-query
    hits saved beside the run (held_out_eval.json)."""
    import ml_collections
    import numpy as np

    from tfkd import evaluation, io
    from tfkd.train_fewshot import run_predictor_for_shot

    path = os.path.join(workdir, "held_out_eval.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    predictor_for_shot, config, _ = run_predictor_for_shot(workdir)
    cfg = ml_collections.ConfigDict(config.fewshot.to_dict())
    cfg.update(PROTOCOL)
    out = {}
    for name, (feats, labels) in test_sets.items():
        results = evaluation.protocol_suite(predictor_for_shot, feats, labels, np.unique(labels), cfg,
                                            class_groups=class_groups)
        out[name] = hits(results)
    out["held_out_base"]["many_shot_all_base_classes"] = many_shot_accuracy(
        predictor_for_shot, *base_training, *test_sets["held_out_base"])
    out["held_out_base"]["teacher_all_base_classes"] = run_teacher_accuracy(
        workdir, *base_training, *test_sets["held_out_base"])
    io.write_json_atomic(path, out)
    return out


def main(argv):
    del argv
    table, gammas, seeds, student, method_only = check_request()
    variant = "_".join(f"{k.split('.')[-1]}_{v}" for k, v in student.items())
    method_variant = "_".join([FLAGS.method] + [f"{k.split('.')[-1]}_{v}" for k, v in method_only.items()]
                              + ([variant] if variant else [])) if FLAGS.method != "dist" else variant
    name = FLAGS.name or f"{FLAGS.table}_base_holdout" + (f"_{method_variant}" if method_variant else "")
    common.hold_results(name)
    previous = {}  # finished runs are reused: keep the seconds measured when they trained
    reference_name = f"{FLAGS.table}_base_holdout" + (f"_{variant}" if variant else "")
    for result_name in dict.fromkeys([reference_name, name]):  # the dist variant's gamma = 0 runs first
        try:
            previous.update({(r["gamma"], r["seed"]): r for r in common.read_result(result_name).get("runs", [])
                             if result_name == name or r["gamma"] == 0.0})
        except FileNotFoundError:
            pass
    import numpy as np

    from tfkd.data.episodes import mean_confidence_interval
    from tfkd.train_fewshot import FeatureSplits

    root = os.path.join(FLAGS.runs_dir, table["dataset"])
    features, backbone = ensure_features(table, root)
    holdout_dir = os.path.join(root, f"base_holdout_{FLAGS.holdout}")
    held_f, held_l = split_base(features, holdout_dir)
    splits = FeatureSplits(holdout_dir)
    train_f, train_l = splits["base"]
    results = {"benchmark": "fewshot_base_holdout", "table": FLAGS.table, "dataset": table["dataset"],
               "holdout_per_class": FLAGS.holdout, "split_seed": SPLIT_SEED, "gammas": gammas, "seeds": seeds,
               "protocol": {k: list(v) if isinstance(v, tuple) else v for k, v in PROTOCOL.items()},
               "backbone": backbone, "threads": FLAGS.threads,
               "method": FLAGS.method, "reference_method": "dist",
               "student_values": table["tuning"]["gen"]["best"]["values"], "student_changes": student,
               "method_changes": method_only,
               "selection": table["overrides"],
               "images": {"meta_training": int(len(train_l)), "held_out": int(len(held_l)),
                          "base_classes": int(len(np.unique(train_l))),
                          "novel_classes": int(len(splits.classes("novel")))},
               # Earlier runs stay in the file until rerecorded: a killed invocation loses none of them.
               "teacher": teacher_accuracy(train_f, train_l, held_f, held_l), "runs": list(previous.values())}
    common.write_result(name, results)
    print(f"teacher: {results['teacher']}", flush=True)

    values = common.in_section(table["tuning"]["gen"]["best"]["values"], "gen", "dist")
    values.update(student)
    reference_root = os.path.join(holdout_dir, variant) if variant else holdout_dir
    config_files = {"dist": os.path.join(reference_root, "dist_config.py")}
    common.write_reused_config(config_files["dist"], os.path.join(common.REPO, table["fewshot_config"]), values)
    runs_root = reference_root
    if FLAGS.method != "dist":
        runs_root = os.path.join(holdout_dir, method_variant)
        method_values = common.in_section(values, "dist", FLAGS.method)
        method_values.update(method_only)
        config_files[FLAGS.method] = os.path.join(runs_root, f"{FLAGS.method}_config.py")
        common.write_reused_config(config_files[FLAGS.method], os.path.join(common.REPO, table["fewshot_config"]),
                                   method_values)
    test_sets = {"held_out_base": (held_f, held_l), "novel": splits["novel"]}
    per_run = {}
    for seed in seeds:
        for gamma in gammas:
            method = FLAGS.method if gamma > 0 else "dist"
            workdir = os.path.join(runs_root if gamma > 0 else reference_root, f"gamma_{gamma!r}", f"seed{seed}")
            cmd = [sys.executable, os.path.join(common.REPO, "bin", "train"), f"--config={config_files[method]}",
                   f"--method={method}", f"--seed={seed}", f"--workdir={workdir}",
                   f"--config.fewshot.features_dir={holdout_dir}", "--config.fewshot.evaluate_novel=False",
                   "--config.export.enabled=False", f"--config.{method}.gamma={gamma}"]
            cmd += [f"--config.{o}" for o in table["overrides"]]
            seconds = common.run_logged(cmd, workdir + ".log", os.path.join(workdir, "metrics.json"), FLAGS.threads)
            if seconds is None:
                seconds = previous.get((gamma, seed), {}).get("seconds")
            evaluated = evaluate(workdir, test_sets, splits.class_groups, (train_f, train_l))
            per_run[(gamma, seed)] = evaluated
            with open(os.path.join(workdir, "metrics.json")) as f:
                metrics = json.load(f)
            if "members" in metrics:  # an ensemble: selection and best epochs are its members'
                metrics["val_accuracy"] = statistics.mean(m["val_accuracy"] for m in metrics["members"])
                metrics["best_epoch"] = [m["best_epoch"] for m in metrics["members"]]
            with open(os.path.join(workdir, "run_info.json")) as f:
                revision = json.load(f)[0]["git_revision"]
            results["runs"] = [r for r in results["runs"] if (r["gamma"], r["seed"]) != (gamma, seed)]
            results["runs"].append({
                "gamma": gamma, "seed": seed, "method": method, "command": pretty(cmd), "seconds": seconds,
                "git_revision": revision, "best_epoch": metrics["best_epoch"],
                "val_accuracy": metrics["val_accuracy"],
                "test": {s: {p: (float(np.mean(v)) if isinstance(v, list) else v) for p, v in h.items()}
                         for s, h in evaluated.items()}})
            common.write_result(name, results)
            print(f"gamma {gamma} seed {seed}: val {metrics['val_accuracy']:.4f} "
                  f"{ {s: round(100 * results['runs'][-1]['test'][s]['all_way_1shot_top1'], 2) for s in test_sets} }",
                  flush=True)

    summary = {}
    for gamma in gammas:
        runs = [r for r in results["runs"] if r["gamma"] == gamma and r["seed"] in seeds]  # as the paired rows
        summary[repr(gamma)] = {
            "val_accuracy": statistics.mean(r["val_accuracy"] for r in runs),
            "test": {s: {p: statistics.mean(r["test"][s][p] for r in runs) for p in runs[0]["test"][s]}
                     for s in test_sets}}
    results["summary"] = summary
    # Seed-averaged hits, paired with gamma = 0 on the same queries (all-way) or episodes (N-way).
    paired = {}
    for gamma in gammas[1:]:
        paired[repr(gamma)] = {}
        for s in test_sets:
            paired[repr(gamma)][s] = {}
            for p in HEADLINE:
                diff = (np.mean([per_run[(gamma, seed)][s][p] for seed in seeds], 0)
                        - np.mean([per_run[(0.0, seed)][s][p] for seed in seeds], 0))
                mean, ci = mean_confidence_interval(diff)
                paired[repr(gamma)][s][p] = {"mean": float(mean), "ci95": float(ci)}
    results["paired_vs_gamma_0"] = paired
    common.write_result(name, results)


if __name__ == "__main__":
    common.run(main)
