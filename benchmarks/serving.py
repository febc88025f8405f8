#!/usr/bin/env python3
"""Serving throughput and memory: the exported SavedModel's ``serving_default`` against the Keras
network's own ``predict`` on the same images, at several batch sizes, each measured in a fresh
process (peak memory is per process).

    python benchmarks/serving.py --workdir=RUN [--batches=1,64,1024,4096] [--repeats=5]
        [--min_seconds=0] [--rounds=1] [--breakdown]

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
flags.DEFINE_list("batches", ["1", "64", "1024", "4096"], "Batch sizes.")
flags.DEFINE_integer("repeats", 5, "Timed calls per measurement, at least (median reported).")
flags.DEFINE_float("min_seconds", 0.0, "More timed calls until they add up to this many seconds.")
flags.DEFINE_integer("rounds", 1, "Each measurement this many times, every kind in turn per round (fresh processes); "
                     "the fastest round is reported, every round's figure kept.")
flags.DEFINE_string("name", "serving", "Result file name under benchmarks/results/.")
flags.DEFINE_bool("breakdown", False, "Also measure the steps between the bare final head and serving_default "
                  "(final_chunked, module_logits, module_serve, savedmodel_logits).")
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS
KINDS = ("savedmodel", "keras_predict", "keras_final")
# From the bare final head to serving_default, one step at a time (see the docstring).
BREAKDOWN = ("final_chunked", "module_logits", "module_serve", "savedmodel_logits")

CHILD = r"""
import json, resource, statistics, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np, tensorflow as tf
kind, path, workdir, batch, repeats = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
min_seconds = float(sys.argv[7])
if kind.startswith("savedmodel"):
    signature = "logits" if kind == "savedmodel_logits" else "serving_default"
    fn = tf.saved_model.load(path).signatures[signature]
    shape = fn.structured_input_signature[1]["images"].shape[1:]
    images = tf.constant(np.random.default_rng(0).integers(0, 256, (batch,) + tuple(shape)).astype(np.uint8))
    output = "logits" if kind == "savedmodel_logits" else "probabilities"
    call = lambda: fn(images=images)[output].numpy()
elif kind.startswith("module_"):
    from tfkd import export
    network = export.restore_network(workdir, "best")[0]
    module = export.InferenceModule(network)
    fn, output = (module.logits, "logits") if kind == "module_logits" else (module.serve, "probabilities")
    images = tf.constant(np.random.default_rng(0).integers(0, 256, (batch,) + tuple(network.image_shape)).astype(np.uint8))
    call = lambda: fn(images)[output].numpy()
else:
    from tfkd import export
    network = export.restore_network(workdir, "best")[0]
    images = np.random.default_rng(0).integers(0, 256, (batch,) + tuple(network.image_shape)).astype(np.float32)
    if kind == "keras_predict":
        call = lambda: network.predict(images, batch_size=min(batch, 256), verbose=0)
    elif kind == "final_chunked":
        final = tf.function(lambda x: export.in_chunks(network.predict_final, x, int(network.num_classes)))
        x = tf.constant(images)
        call = lambda: final(x).numpy()
    else:
        final = tf.function(network.predict_final)
        x = tf.constant(images)
        call = lambda: final(x).numpy()
for _ in range(2):
    call()
times = []
while len(times) < repeats or sum(times) < min_seconds:  # a 3 ms call needs more than 5 samples
    start = time.perf_counter()
    call()
    times.append(time.perf_counter() - start)
print("RESULT " + json.dumps({"images_per_s": batch / statistics.median(times), "calls": len(times),
                              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main(argv):
    del argv
    from tfkd import export

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "export")
        network, config, class_names, _ = export.restore_network(FLAGS.workdir, "best")
        export.export_saved_model(network, path, {"class_names": class_names})
        for batch in map(int, FLAGS.batches):
            row = {"batch": batch}
            kinds = KINDS + (BREAKDOWN if FLAGS.breakdown else ())
            each = {kind: [] for kind in kinds}
            for _ in range(FLAGS.rounds):  # kinds in turn, so a busy spell does not land on one kind only
                for kind in kinds:
                    proc = subprocess.run([sys.executable, "-c", CHILD, common.REPO, kind, path, FLAGS.workdir,
                                           str(batch), str(FLAGS.repeats), str(FLAGS.min_seconds)],
                                          capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
                    if proc.returncode != 0:
                        raise RuntimeError(f"{kind} at batch {batch} failed:\n{proc.stderr[-2000:]}")
                    each[kind].append(json.loads([ln for ln in proc.stdout.splitlines()
                                                  if ln.startswith("RESULT ")][-1][7:]))
            for kind, measured in each.items():
                row[kind] = dict(max(measured, key=lambda m: m["images_per_s"]),
                                 peak_rss_mb=max(m["peak_rss_mb"] for m in measured),
                                 images_per_s_each_round=[m["images_per_s"] for m in measured])
            row["savedmodel_vs_keras_predict"] = row["savedmodel"]["images_per_s"] / row["keras_predict"]["images_per_s"]
            row["savedmodel_vs_keras_final"] = row["savedmodel"]["images_per_s"] / row["keras_final"]["images_per_s"]
            results.append(row)
            print(f"batch {batch:5d}: " + ", ".join(f"{k} {row[k]['images_per_s']:8.0f} img/s {row[k]['peak_rss_mb']:5.0f} MB"
                                                    for k in row if isinstance(row[k], dict)), flush=True)
    common.write_result(FLAGS.name, {"benchmark": "serving", "workdir": FLAGS.workdir,
                                     "network": {"arch": config.model.arch, "width": config.model.width,
                                                 "dataset": config.data.name},
                                     "repeats": FLAGS.repeats, "min_seconds": FLAGS.min_seconds, "rounds": FLAGS.rounds,
                                     "breakdown": FLAGS.breakdown, "results": results})


if __name__ == "__main__":
    common.run(main)
