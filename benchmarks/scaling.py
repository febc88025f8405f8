#!/usr/bin/env python3
"""Throughput with 1 vs N replicas, measured in one run: images/s of ``fit`` for each method (and
each MetaDistiller phase) under the default strategy and under MirroredStrategy, and the ratio
N-replica / 1-replica, i.e. the per-step overhead of distribution -- including the distributed
MetaDistiller meta step (lookahead gradients all-reduced, synchronized BatchNorm).

    python benchmarks/scaling.py [--replicas=2] [--methods=self_distill,metadistiller]

Without GPUs the replicas are logical CPU devices on the same cores, so this measures the cost
of the distribution machinery, not a speed-up; on a machine with N GPUs they are the GPUs.
"""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import flags  # noqa: E402

import common  # noqa: E402

flags.DEFINE_string("config", os.path.join(common.REPO, "configs", "fashion_mnist_resnet18.py"), "Config file.")
flags.DEFINE_list("methods", ["baseline", "self_distill", "metadistiller"], "Methods to time.")
flags.DEFINE_integer("replicas", 2, "Replicas for the mirrored run (logical CPU devices when there is no GPU).")
flags.DEFINE_integer("steps", 20, "Timed steps per repeat.")
flags.DEFINE_integer("warmup", 3, "Untimed steps first (tracing).")
flags.DEFINE_integer("repeats", 3, "Repeats; the median is reported.")
flags.DEFINE_integer("batch_size", 128, "Global batch size (split over replicas).")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if len(gpus) < FLAGS.replicas:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * FLAGS.replicas)
    import keras

    from tfkd import train
    from tfkd.distribute import get_strategy

    base, data = common.timing_setup(FLAGS.config, FLAGS.batch_size)
    strategies = {"1 replica": tf.distribute.get_strategy(), f"{FLAGS.replicas} replicas": get_strategy("mirrored")}
    devices = list(strategies[f"{FLAGS.replicas} replicas"].extended.worker_devices)

    def timed(method, phase):
        return common.time_fit(method, data, phase, batch_size=FLAGS.batch_size, augment=base.data.augment,
                               seed=0, warmup=FLAGS.warmup, steps=FLAGS.steps, repeats=FLAGS.repeats)

    results = {}
    for name in FLAGS.methods:
        config = train.resolve(base, method=name, seed=0)
        results[name] = {}
        for label, strategy in strategies.items():
            keras.utils.set_random_seed(0)
            method, _, _ = train.build_all(config, data, strategy)
            for phase in sorted({method.epoch_phase(e) for e in range(config.train.epochs)}, key=str):
                median, runs = timed(method, phase)
                key = name if phase is None else f"{name} [{phase}]"
                results[name].setdefault(str(phase), {})[label] = {"images_per_s": median, "runs": runs}
                print(f"{key:>28} {label:>11}: {median:8.1f} images/s", flush=True)
        for phase, rows in results[name].items():
            one, many = rows["1 replica"]["images_per_s"], rows[f"{FLAGS.replicas} replicas"]["images_per_s"]
            rows["throughput_ratio"] = many / one
    common.write_result("scaling", {
        "benchmark": "scaling", "config_file": os.path.relpath(FLAGS.config, common.REPO),
        "replicas": FLAGS.replicas, "replica_devices": devices, "gpus": len(gpus),
        "batch_size": FLAGS.batch_size, "steps": FLAGS.steps, "warmup": FLAGS.warmup, "repeats": FLAGS.repeats,
        "note": ("replicas are logical CPU devices sharing the same cores: the ratio is the distribution "
                 "overhead, not a speed-up") if not gpus else "replicas are GPUs",
        "methods": results,
    })


if __name__ == "__main__":
    common.run(main)
