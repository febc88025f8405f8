#!/usr/bin/env python3
"""The independent PyTorch reference (../shared/reference/byot_train.py) trained at the regime of a
tfkd self-boosting config, so that a tfkd table can be read next to the same regime in another
implementation: "the method does not help at this scale" versus "tfkd's implementation differs".

    python benchmarks/reference_table.py --reference_python=/tmp/torchref/bin/python
        [--config=configs/bench_fashion_mnist_converge.py] [--methods=...] [--seeds=0,1,2]

The regime (epochs, step boundaries, width, training subset, batch, lr, SD/MetaDistiller knobs)
is read from the tfkd config, so the two tables cannot drift apart; a config the reference cannot
reproduce (another dataset, schedule or weight decay) is refused before anything trains. Every
(method, seed) is one reference process; results go to benchmarks/results/<name>.json after
*every* finished run, and runs already in that file are not run again, so the table can be
completed over several sessions. The reference's data subset and augmentation draws are not
tfkd's: compare means over seeds, not single runs. Nothing of the reference is imported here.

``--reference_edits=FILE`` runs an edited copy of the reference, to measure what one of its
differences from tfkd does (e.g. ``benchmarks/reference_edits/black_crop_borders.json``): a JSON
object {"why": ..., "edits": [{"file": ..., "old": ..., "new": ...}]}, each ``old`` a text that
occurs exactly once in its file. The copy lives under --runs_dir; the shared reference is never
changed, and the results file records the edits beside the edited script's checksum.
"""
import concurrent.futures
import hashlib
import json
import os
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import flags  # noqa: E402

import common  # noqa: E402
from reference_support import check_reference_python, edited_sources, read_edits, write_edited_copy  # noqa: E402,E501

flags.DEFINE_string("reference_python", None, "Python of a virtual environment with PyTorch.")
flags.DEFINE_string("reference_dir", os.path.join(os.path.dirname(common.REPO), "shared", "reference"),
                    "Folder holding byot_train.py.")
flags.DEFINE_string("config", "configs/bench_fashion_mnist_converge.py", "tfkd config whose regime is run.")
flags.DEFINE_list("methods", ["baseline", "dsn", "self_distill", "metadistiller"], "Methods.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
flags.DEFINE_integer("threads", 1, "PyTorch threads per run.")
flags.DEFINE_integer("jobs", 1, "Runs trained side by side.")
flags.DEFINE_string("runs_dir", "/tmp/tfkd_reference", "Where the runs' logs go (not committed).")
flags.DEFINE_string("name", "reference_converge", "Result file name under benchmarks/results/.")
flags.DEFINE_string("reference_edits", None, "JSON file of text edits applied to a copy of the reference "
                    "before it runs (see the module docstring); none by default.")
FLAGS = flags.FLAGS

METHODS = ("baseline", "dsn", "self_distill", "metadistiller")
# The reference hard-codes these; a config that differs would not be the same regime.
REFERENCE_FIXED = {"data.name": "fashion_mnist", "data.val_fraction": 0.1, "model.arch": "resnet18",
                   "train.lr_schedule": "step", "train.lr_decay": 0.1, "train.weight_decay": 5e-4,
                   "train.optimizer": "sgd", "train.momentum": 0.9, "train.nesterov": False,
                   "self_distill.hint_weight": 0.0, "metadistiller.fusion_channels": 0,
                   "metadistiller.meta_every_steps": 1, "metadistiller.outer_outputs": "all",
                   "metadistiller.share_inner_gradient": False}


def _get(config, dotted):
    section, key = dotted.split(".")
    return config[section].get(key) if section in config else None


def reference_args(config):
    """byot_train.py's regime flags for a tfkd config, or ValueError naming what it cannot run."""
    for dotted, expected in REFERENCE_FIXED.items():
        value = _get(config, dotted)
        if value is not None and value != expected:
            raise ValueError(f"{dotted}={value!r}, but the reference only runs {dotted}={expected!r}")
    return ["--epochs", str(config.train.epochs),
            "--boundaries", ",".join(str(b) for b in config.train.lr_boundaries),
            "--train-examples", str(config.data.max_train_examples),
            "--width", str(config.model.width), "--batch", str(config.train.batch_size),
            "--lr", str(config.train.learning_rate),
            "--alpha", str(config.self_distill.alpha), "--tau", str(config.self_distill.tau),
            "--meta-every", str(config.metadistiller.meta_every_epochs),
            "--gen-lr", str(config.metadistiller.generator_lr)]


def check_flags(config_path):
    """Every bad request fails here, before any training, with what was expected."""
    check_reference_python(FLAGS.reference_python)
    script = os.path.join(FLAGS.reference_dir, "byot_train.py")
    if not os.path.isfile(script):
        common.refuse(f"--reference_dir={FLAGS.reference_dir!r} has no byot_train.py")
    if not os.path.isfile(config_path):
        common.refuse(f"--config={FLAGS.config!r} does not exist")
    unknown = sorted(set(FLAGS.methods) - set(METHODS))
    if unknown:
        common.refuse(f"--methods has {unknown}; expected some of {list(METHODS)}")
    config = common.load_config(config_path)
    if (_get(config, "self_distill.alpha"), _get(config, "self_distill.tau")) != (
            _get(config, "metadistiller.alpha"), _get(config, "metadistiller.tau")):
        common.refuse("the reference takes one --alpha/--tau for SD and MetaDistiller; the config "
                      "gives them different values")
    try:
        args = reference_args(config)
    except ValueError as e:
        common.refuse(f"--config={FLAGS.config}: {e}")
    edits = read_edits(FLAGS.reference_edits) if FLAGS.reference_edits else None
    sources = edited_sources(FLAGS.reference_dir, edits) if edits else None
    return script, config, args, edits, sources


def run_one(script, args, method, seed):
    os.makedirs(FLAGS.runs_dir, exist_ok=True)
    out = os.path.join(FLAGS.runs_dir, f"{FLAGS.name}_{method}_seed{seed}")
    cmd = [FLAGS.reference_python, script, "--method", method, "--seed", str(seed),
           "--threads", str(FLAGS.threads), "--json", out + ".jsonl"] + args
    if os.path.exists(out + ".jsonl"):
        os.remove(out + ".jsonl")  # an interrupted earlier attempt: the reference does not resume
    start = time.time()
    with open(out + ".log", "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=os.path.dirname(script))
    if proc.returncode != 0:
        raise RuntimeError(f"reference run failed ({proc.returncode}): {' '.join(cmd)}; see {out}.log")
    with open(out + ".jsonl") as f:
        record = json.loads(f.read().splitlines()[-1])
    print(f"{method}/seed{seed}: test final {record['test']['final']:.4f} ({time.time() - start:.0f}s)", flush=True)
    record["command"] = " ".join(["python", "byot_train.py"] + cmd[2:])
    return record


def summarize(values):
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values), "values": values}


def add_run(results, method, record):
    entry = results["methods"].setdefault(method, {"runs": []})
    entry["runs"] = sorted([r for r in entry["runs"] if r["seed"] != record["seed"]] + [record],
                           key=lambda r: r["seed"])
    for head in entry["runs"][0]["test"]:
        entry[head] = summarize([r["test"][head] for r in entry["runs"]])
    entry["best_epoch"] = summarize([r["best_epoch"] for r in entry["runs"]])
    entry["seconds"] = summarize([r["seconds"] for r in entry["runs"]])


def main(argv):
    del argv
    config_path = os.path.join(common.REPO, FLAGS.config) if not os.path.isabs(FLAGS.config) else FLAGS.config
    script, config, args, edits, sources = check_flags(config_path)
    common.hold_results(FLAGS.name)
    if edits:  # written only while this invocation holds the results file (a second one is refused above)
        script = write_edited_copy(FLAGS.reference_dir, sources,
                                   os.path.join(FLAGS.runs_dir, f"{FLAGS.name}_reference"))
    try:
        results = common.read_result(FLAGS.name)
    except FileNotFoundError:
        results = {"benchmark": "reference_table", "methods": {}}
    if results.get("reference_args", args) != args:
        common.refuse(f"benchmarks/results/{FLAGS.name}.json holds runs of another regime "
                      f"({results['reference_args']}); give another --name")
    if results.get("reference_edits") != edits and results.get("methods"):
        common.refuse(f"benchmarks/results/{FLAGS.name}.json holds runs of the reference "
                      f"{'with other edits' if results.get('reference_edits') else 'unedited'}; give another --name")
    with open(script, "rb") as f:
        script_sha = hashlib.sha256(f.read()).hexdigest()
    if results.get("reference_sha256", script_sha) != script_sha:
        common.refuse(f"{script} changed since benchmarks/results/{FLAGS.name}.json was started; "
                      "give another --name")
    version = subprocess.run([FLAGS.reference_python, "-c", "import torch; print(torch.__version__)"],
                             capture_output=True, text=True, check=True).stdout.strip()
    if edits:
        results["reference_edits"] = edits
    results.update({"config_file": os.path.relpath(config_path, common.REPO), "reference_args": args,
                    "reference_sha256": script_sha, "torch": version, "threads": FLAGS.threads,
                    "seeds": sorted({int(s) for s in FLAGS.seeds} | set(results.get("seeds", [])))})
    for key in ("command", "date_utc", "machine", "git_revision"):
        results.pop(key, None)  # rewritten for this invocation
    done = {(m, r["seed"]) for m, e in results["methods"].items() for r in e["runs"]}
    todo = [(m, int(s)) for s in FLAGS.seeds for m in FLAGS.methods if (m, int(s)) not in done]
    print(f"{len(done)} runs already in benchmarks/results/{FLAGS.name}.json; {len(todo)} to go", flush=True)
    lock, failed = threading.Lock(), []
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, FLAGS.jobs)) as pool:
        futures = {pool.submit(run_one, script, args, *job): job for job in todo}
        for future in concurrent.futures.as_completed(futures):
            method, seed = futures[future]
            try:
                record = future.result()
            except RuntimeError as e:  # the finished runs still reach the table
                print(f"{method}/seed{seed}: {e}", flush=True)
                failed.append(f"{method}/seed{seed}")
                continue
            with lock:
                add_run(results, method, record)
                common.write_result(FLAGS.name, results)
    if failed:
        sys.exit(f"{len(failed)} runs failed: {', '.join(failed)}")


if __name__ == "__main__":
    common.run(main)
