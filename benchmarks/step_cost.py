#!/usr/bin/env python3
"""Training throughput (images/s) of each method on one fixed config, measured in one run, plus
the throughput of the tf.data input pipeline alone (to show input is not the bottleneck).

    python benchmarks/step_cost.py [--methods=baseline,dsn,self_distill] [--steps=30]

Each method: a fresh model, ``--warmup`` steps (tracing), then ``--steps`` timed steps through
``fit`` (the same train_step users run), repeated ``--repeats`` times; the median is reported,
with the ratio to ``baseline`` from the same run.
"""
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import app, flags  # noqa: E402

import common  # noqa: E402

flags.DEFINE_string("config", os.path.join(common.REPO, "configs", "fashion_mnist_resnet18.py"), "Config file.")
flags.DEFINE_list("methods", ["baseline", "dsn", "self_distill"], "Methods to time.")
flags.DEFINE_integer("steps", 30, "Timed steps per repeat.")
flags.DEFINE_integer("warmup", 5, "Untimed steps first.")
flags.DEFINE_integer("repeats", 3, "Repeats; the median is reported.")
flags.DEFINE_integer("batch_size", 128, "Global batch size.")
flags.DEFINE_integer("seed", 0, "Seed.")
flags.DEFINE_string("name", "step_cost", "Result file name under benchmarks/results/.")
FLAGS = flags.FLAGS


def load_config(path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def time_pipeline(ds, batches, batch_size):
    it = iter(ds)
    for _ in range(5):
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch_size / (time.perf_counter() - start)


def main(argv):
    del argv
    import keras
    import tensorflow as tf

    from tfkd import data as data_lib
    from tfkd import train

    base = load_config(FLAGS.config)
    base.train.batch_size = FLAGS.batch_size
    data = data_lib.load_dataset(base.data)
    results = {}
    pipe = data_lib.train_dataset(data, batch_size=FLAGS.batch_size, seed=FLAGS.seed, augment=base.data.augment)
    pipeline_rates = [time_pipeline(pipe, 100, FLAGS.batch_size) for _ in range(FLAGS.repeats)]
    for name in FLAGS.methods:
        config = train.resolve(base, method=name, seed=FLAGS.seed)
        keras.utils.set_random_seed(FLAGS.seed)
        method, _, _ = train.build_all(config, data, tf.distribute.get_strategy())
        ds = data_lib.train_dataset(data, batch_size=FLAGS.batch_size, seed=FLAGS.seed, augment=base.data.augment)
        method.fit(ds, epochs=1, steps_per_epoch=FLAGS.warmup, verbose=0)
        rates = []
        for _ in range(FLAGS.repeats):
            start = time.perf_counter()
            method.fit(ds, epochs=1, steps_per_epoch=FLAGS.steps, verbose=0)
            rates.append(FLAGS.steps * FLAGS.batch_size / (time.perf_counter() - start))
        results[name] = {"images_per_s": statistics.median(rates), "runs": rates}
        print(f"{name:>14}: {results[name]['images_per_s']:8.1f} images/s  (runs {[round(r) for r in rates]})",
              flush=True)
    ref = results.get("baseline", {}).get("images_per_s")
    for r in results.values():
        r["relative_to_baseline"] = r["images_per_s"] / ref if ref else None
    pipeline = statistics.median(pipeline_rates)
    print(f"{'tf.data alone':>14}: {pipeline:8.1f} images/s")
    common.write_result(FLAGS.name, {
        "benchmark": "step_cost",
        "config_file": os.path.relpath(FLAGS.config, common.REPO),
        "config": {"arch": base.model.arch, "width": base.model.width, "dataset": base.data.name,
                   "batch_size": FLAGS.batch_size, "image_shape": list(data.image_shape)},
        "seed": FLAGS.seed, "steps": FLAGS.steps, "warmup": FLAGS.warmup, "repeats": FLAGS.repeats,
        "methods": results,
        "pipeline_images_per_s": pipeline, "pipeline_runs": pipeline_rates,
    })


if __name__ == "__main__":
    app.run(main)
