#!/usr/bin/env python3
"""Serving throughput and memory: the exported SavedModel's ``serving_default`` against the Keras
network's own ``predict`` on the same images, at several batch sizes, each measured in a fresh
process (peak memory is per process).

    python benchmarks/serving.py --workdir=RUN [--batches=1,64,1024,4096] [--repeats=5]

``RUN`` is a finished classification run; its best checkpoint is exported to a temporary folder
first (bin/export's code path). Reported per batch size: images/s (median of ``--repeats``
calls after two warm-up calls) and the process's peak resident memory, for
* ``savedmodel``: ``tf.saved_model.load(export).signatures["serving_default"](images=uint8)``;
* ``keras_predict``: ``network.predict(float images, batch_size=min(batch, 256))`` on the restored
  network (Keras computes every exit head there, not only the final one);
* ``keras_final``: the restored network's final head alone in one ``tf.function`` (what the
  export computes), called on the whole batch.
Ratios are from one run.
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
flags.DEFINE_integer("repeats", 5, "Timed calls per measurement (median reported).")
flags.DEFINE_string("name", "serving", "Result file name under benchmarks/results/.")
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS

CHILD = r"""
import json, resource, statistics, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np, tensorflow as tf
kind, path, workdir, batch, repeats = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
if kind == "savedmodel":
    fn = tf.saved_model.load(path).signatures["serving_default"]
    shape = fn.structured_input_signature[1]["images"].shape[1:]
    images = tf.constant(np.random.default_rng(0).integers(0, 256, (batch,) + tuple(shape)).astype(np.uint8))
    call = lambda: fn(images=images)["probabilities"].numpy()
else:
    from tfkd import export
    network = export.restore_network(workdir, "best")[0]
    images = np.random.default_rng(0).integers(0, 256, (batch,) + tuple(network.image_shape)).astype(np.float32)
    if kind == "keras_predict":
        call = lambda: network.predict(images, batch_size=min(batch, 256), verbose=0)
    else:
        final = tf.function(network.predict_final)
        x = tf.constant(images)
        call = lambda: final(x).numpy()
for _ in range(2):
    call()
times = []
for _ in range(repeats):
    start = time.perf_counter()
    call()
    times.append(time.perf_counter() - start)
print("RESULT " + json.dumps({"images_per_s": batch / statistics.median(times),
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
            for kind in ("savedmodel", "keras_predict", "keras_final"):
                proc = subprocess.run([sys.executable, "-c", CHILD, common.REPO, kind, path, FLAGS.workdir, str(batch),
                                       str(FLAGS.repeats)], capture_output=True, text=True,
                                      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
                if proc.returncode != 0:
                    raise RuntimeError(f"{kind} at batch {batch} failed:\n{proc.stderr[-2000:]}")
                row[kind] = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1][7:])
            row["savedmodel_vs_keras_predict"] = row["savedmodel"]["images_per_s"] / row["keras_predict"]["images_per_s"]
            row["savedmodel_vs_keras_final"] = row["savedmodel"]["images_per_s"] / row["keras_final"]["images_per_s"]
            results.append(row)
            print(f"batch {batch:5d}: " + ", ".join(f"{k} {row[k]['images_per_s']:8.0f} img/s {row[k]['peak_rss_mb']:5.0f} MB"
                                                    for k in ("savedmodel", "keras_predict", "keras_final")), flush=True)
    common.write_result(FLAGS.name, {"benchmark": "serving", "workdir": FLAGS.workdir,
                                     "network": {"arch": config.model.arch, "width": config.model.width,
                                                 "dataset": config.data.name},
                                     "repeats": FLAGS.repeats, "results": results})


if __name__ == "__main__":
    common.run(main)
