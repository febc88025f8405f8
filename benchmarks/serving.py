#!/usr/bin/env python3
"""Serving throughput and memory: the exported SavedModel's ``serving_default`` against the Keras
network's own ``predict`` on the same images, at several batch sizes, each measured in a fresh
process (peak memory is per process).

    python benchmarks/serving.py --workdir=RUN [--batches=1,64,1024,4096] [--repeats=5]
        [--min_seconds=0] [--rounds=1] [--breakdown] [--fewshot_workdir=FEWSHOT_RUN]

``RUN`` is a finished classification run; its best checkpoint is exported to a temporary folder
first (bin/export's code path). Reported per batch size: images/s (median of ``--repeats`` calls,
or more until they add up to ``--min_seconds``, after two warm-up calls; with ``--rounds`` the
fastest round) and the process's peak resident memory, for
* ``savedmodel``: ``tf.saved_model.load(export).signatures["serving_default"](images=uint8)``;
* ``keras_predict``: ``network.predict(float images, batch_size=min(batch, 256))`` on the restored
  network (Keras computes every exit head there, not only the final one);
* ``keras_final``: the restored network's final head alone in one ``tf.function`` (what the
  export computes), called on the whole batch.
Ratios are from one run.

``--breakdown`` also measures the steps between the bare final head and ``serving_default``, to
tell where the SavedModel's time goes:
* ``final_chunked``: the final head in slices of ``SERVING_CHUNK`` images (``export.in_chunks``),
  float images, in one ``tf.function``;
* ``module_logits`` / ``module_serve``: the export's own ``InferenceModule`` functions (uint8 input,
  shape check, cast, slices; ``serve`` adds softmax and top-k) called in-process, never saved;
* ``savedmodel_logits``: the SavedModel's ``logits`` signature (``serving_default`` without
  softmax and top-k).

``--fewshot_workdir=FEWSHOT_RUN`` measures a few-shot run's (or ensemble's) exported predictor
(``export_fewshot_predictor``, ``serving_default``: support features, labels, query features ->
probabilities) against the in-process predictor evaluation uses (``run_predictor_for_shot``,
handed its padded support ready-made), on 1-shot requests over the run's novel classes:
``--fewshot_ways`` classes (``all``: every novel class) with ``--fewshot_queries`` queries each.
Reported: requests/s, queries/s and peak memory.

Every measuring process also records ``setup_s`` (loading the export or restoring the network,
after importing TensorFlow) and ``first_call_s`` (the first call, tracing included).
"""
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import flags  # noqa: E402

import common  # noqa: E402

flags.DEFINE_string("workdir", None, "A finished classification run folder.")
flags.DEFINE_string("fewshot_workdir", None, "A finished few-shot run (or ensemble) folder: its exported predictor "
                    "against the in-process one, on 1-shot requests over its novel classes.")
flags.DEFINE_list("fewshot_ways", ["5", "all"], "Classes per few-shot request: numbers, or all (every novel class).")
flags.DEFINE_integer("fewshot_queries", 15, "Query images per class in a few-shot request (fewer where a class has "
                     "fewer images).")
flags.DEFINE_list("batches", ["1", "64", "1024", "4096"], "Batch sizes.")
flags.DEFINE_integer("repeats", 5, "Timed calls per measurement, at least (median reported).")
flags.DEFINE_float("min_seconds", 0.0, "More timed calls until they add up to this many seconds.")
flags.DEFINE_integer("rounds", 1, "Each measurement this many times, every kind in turn per round (fresh processes); "
                     "the fastest round is reported, every round's figure kept.")
flags.DEFINE_string("name", "serving", "Result file name under benchmarks/results/.")
flags.DEFINE_bool("breakdown", False, "Also measure the steps between the bare final head and serving_default "
                  "(final_chunked, module_logits, module_serve, savedmodel_logits).")
FLAGS = flags.FLAGS
KINDS = ("savedmodel", "keras_predict", "keras_final")
# From the bare final head to serving_default, one step at a time (see the docstring).
BREAKDOWN = ("final_chunked", "module_logits", "module_serve", "savedmodel_logits")

TIMED = r"""
setup_s = time.perf_counter() - started  # loading the export / restoring the network
start = time.perf_counter()
call()
first_call_s = time.perf_counter() - start
call()
times = []
while len(times) < repeats or sum(times) < min_seconds:  # a 3 ms call needs more than 5 samples
    start = time.perf_counter()
    call()
    times.append(time.perf_counter() - start)
# This process's own peak: VmHWM starts afresh at exec, while ru_maxrss keeps the parent's peak
# across fork and exec (every child would report at least the parent's memory).
with open("/proc/self/status") as status:
    peak_kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
print("RESULT " + json.dumps({"seconds_per_call": statistics.median(times), "calls": len(times),
                              "peak_rss_mb": peak_kb / 1024, "setup_s": setup_s, "first_call_s": first_call_s}))
"""

# Both children start here: argv is REPO, kind, their own arguments, then repeats and min_seconds.
PREAMBLE = r"""
import json, statistics, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np, tensorflow as tf
started = time.perf_counter()
kind, repeats, min_seconds = sys.argv[2], int(sys.argv[-2]), float(sys.argv[-1])
"""

CHILD = PREAMBLE + r"""
path, workdir, batch = sys.argv[3], sys.argv[4], int(sys.argv[5])
if kind.startswith("savedmodel"):
    signature, output = ("logits", "logits") if kind == "savedmodel_logits" else ("serving_default", "probabilities")
    fn = tf.saved_model.load(path).signatures[signature]
    shape = fn.structured_input_signature[1]["images"].shape[1:]
    images = tf.constant(np.random.default_rng(0).integers(0, 256, (batch,) + tuple(shape)).astype(np.uint8))
    call = lambda: fn(images=images)[output].numpy()
else:
    from tfkd import export
    network = export.restore_network(workdir, "best")[0]
    pixels = np.random.default_rng(0).integers(0, 256, (batch,) + tuple(network.image_shape))
    if kind.startswith("module_"):
        module = export.InferenceModule(network)
        fn, output = (module.logits, "logits") if kind == "module_logits" else (module.serve, "probabilities")
        images = tf.constant(pixels.astype(np.uint8))
        call = lambda: fn(images)[output].numpy()
    elif kind == "keras_predict":
        images = pixels.astype(np.float32)
        call = lambda: network.predict(images, batch_size=min(batch, 256), verbose=0)
    else:
        final = tf.function(network.predict_final if kind == "keras_final" else
                            lambda x: export.in_chunks(network.predict_final, x, int(network.num_classes)))
        x = tf.constant(pixels.astype(np.float32))
        call = lambda: final(x).numpy()
""" + TIMED

# One few-shot request (support features + labels, query features) from an .npz the parent wrote.
FEWSHOT_CHILD = PREAMBLE + r"""
path, workdir, request = sys.argv[3], sys.argv[4], sys.argv[5]
r = np.load(request)
if kind == "fewshot_savedmodel":
    fn = tf.saved_model.load(path).signatures["serving_default"]
    args = {"support_features": tf.constant(r["support"]), "support_labels": tf.constant(r["support_labels"]),
            "query_features": tf.constant(r["query"])}
    call = lambda: fn(**args)["probabilities"].numpy()
else:
    from tfkd.train_fewshot import run_predictor_for_shot
    predict = run_predictor_for_shot(workdir)[0](1)
    args = [tf.constant(r[k]) for k in ("padded_support", "mask", "query")]
    call = lambda: predict(*args).numpy()
""" + TIMED


def measure(child, kinds, args):
    """{kind: the fastest round's figures, every round's seconds per call kept}: ``child`` run for
    every kind in turn, ``--rounds`` times, each in a fresh process (peak memory is per process)."""
    each = {kind: [] for kind in kinds}
    for _ in range(FLAGS.rounds):  # kinds in turn, so a busy spell does not land on one kind only
        for kind in kinds:
            proc = subprocess.run([sys.executable, "-c", child, common.REPO, kind, *args, str(FLAGS.repeats),
                                   str(FLAGS.min_seconds)], capture_output=True, text=True,
                                  env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
            if proc.returncode != 0:
                raise RuntimeError(f"{kind} {' '.join(args[2:])} failed:\n{proc.stderr[-2000:]}")
            each[kind].append(json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1][7:]))
    return {kind: dict(min(measured, key=lambda m: m["seconds_per_call"]),
                       peak_rss_mb=max(m["peak_rss_mb"] for m in measured),
                       seconds_per_call_each_round=[m["seconds_per_call"] for m in measured])
            for kind, measured in each.items()}


def classifier_rows(tmp):
    from tfkd import export

    path = os.path.join(tmp, "export")
    network, config, class_names, _ = export.restore_network(FLAGS.workdir, "best")
    export.export_saved_model(network, path, {"class_names": class_names})
    rows = []
    for batch in map(int, FLAGS.batches):
        row = {"batch": batch, **measure(CHILD, KINDS + (BREAKDOWN if FLAGS.breakdown else ()),
                                         [path, FLAGS.workdir, str(batch)])}
        for kind in row:
            if isinstance(row[kind], dict):
                row[kind]["images_per_s"] = batch / row[kind]["seconds_per_call"]
        row["savedmodel_vs_keras_predict"] = row["savedmodel"]["images_per_s"] / row["keras_predict"]["images_per_s"]
        row["savedmodel_vs_keras_final"] = row["savedmodel"]["images_per_s"] / row["keras_final"]["images_per_s"]
        rows.append(row)
        print(f"batch {batch:5d}: " + ", ".join(f"{k} {row[k]['images_per_s']:8.0f} img/s {row[k]['peak_rss_mb']:5.0f} MB"
                                                for k in row if isinstance(row[k], dict)), flush=True)
    return rows, {"arch": config.model.arch, "width": config.model.width, "dataset": config.data.name}


def fewshot_rows(tmp):
    """The exported few-shot predictor against the in-process one evaluation uses (its padded
    support built beforehand), on 1-shot requests over novel classes: 5-way and all-way."""
    import numpy as np

    from tfkd import export, runs
    from tfkd.data.features import read_feature_metadata
    from tfkd.train_fewshot import FeatureSplits

    workdir = FLAGS.fewshot_workdir
    path = os.path.join(tmp, "fewshot_export")
    export.export_fewshot_predictor(workdir, path)  # refuses a folder that is not a few-shot run
    config = runs.read_config(workdir)
    features_dir = runs.fewshot_features_dir(workdir, config)
    features, labels = FeatureSplits(features_dir)["novel"]
    rng = np.random.default_rng(0)
    classes = np.unique(labels)
    rows = []
    for way in FLAGS.fewshot_ways:
        chosen = classes if way == "all" else rng.choice(classes, int(way), replace=False)
        support, query = [], []
        for c in chosen:
            rows_of_c = rng.permutation(np.flatnonzero(labels == c))
            support.append(features[rows_of_c[0]])
            query.extend(features[rows_of_c[1:1 + FLAGS.fewshot_queries]])
        support = np.asarray(support, np.float32)
        request = os.path.join(tmp, f"request_{way}.npz")
        np.savez(request, support=support, support_labels=np.arange(len(chosen), dtype=np.int32),
                 query=np.asarray(query, np.float32), padded_support=support[:, None, :],
                 mask=np.ones((len(chosen), 1), bool))
        row = {"way": len(chosen), "request": f"{way}-way 1-shot", "support": len(chosen), "queries": len(query),
               **measure(FEWSHOT_CHILD, ("fewshot_savedmodel", "fewshot_keras"), [path, workdir, request])}
        for kind in ("fewshot_savedmodel", "fewshot_keras"):
            row[kind]["requests_per_s"] = 1 / row[kind]["seconds_per_call"]
            row[kind]["queries_per_s"] = len(query) / row[kind]["seconds_per_call"]
        row["savedmodel_vs_keras"] = row["fewshot_savedmodel"]["requests_per_s"] / row["fewshot_keras"]["requests_per_s"]
        rows.append(row)
        print(f"{row['request']} ({len(query)} queries): " + ", ".join(
            f"{k} {row[k]['requests_per_s']:7.1f} requests/s {row[k]['peak_rss_mb']:5.0f} MB"
            for k in ("fewshot_savedmodel", "fewshot_keras")), flush=True)
    return rows, {"method": config.method, "dataset": read_feature_metadata(features_dir).get("dataset"),
                  "features_dir": features_dir}


def main(argv):
    del argv
    if not (FLAGS.workdir or FLAGS.fewshot_workdir):
        common.refuse("--workdir (a classification run) or --fewshot_workdir (a few-shot run): expected at least one")
    bad = [w for w in FLAGS.fewshot_ways if w != "all" and not (w.isdigit() and int(w) >= 2)]
    if bad:
        common.refuse(f"--fewshot_ways={','.join(FLAGS.fewshot_ways)}: expected class counts of at least 2, or all")
    if min(FLAGS.rounds, FLAGS.repeats, FLAGS.fewshot_queries) < 1:
        common.refuse("--rounds, --repeats and --fewshot_queries: expected at least 1 each")
    payload = {"benchmark": "serving", "workdir": FLAGS.workdir, "repeats": FLAGS.repeats,
               "min_seconds": FLAGS.min_seconds, "rounds": FLAGS.rounds, "breakdown": FLAGS.breakdown,
               "peak_memory": "VmHWM of each measuring process (its own, not its parent's)"}
    with tempfile.TemporaryDirectory() as tmp:
        if FLAGS.workdir:
            payload["results"], payload["network"] = classifier_rows(tmp)
        if FLAGS.fewshot_workdir:
            payload["fewshot_workdir"] = FLAGS.fewshot_workdir
            payload["fewshot"], payload["fewshot_run"] = fewshot_rows(tmp)
    common.write_result(FLAGS.name, payload)


if __name__ == "__main__":
    common.run(main)
