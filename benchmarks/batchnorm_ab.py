#!/usr/bin/env python3
"""tfkd's fused BatchNorm against Keras' own BatchNormalization ops, in one interleaved run.

    python benchmarks/batchnorm_ab.py [--methods=baseline,self_distill,metadistiller] [--steps=20]

For every method and training phase, a fresh model is built and timed (``common.time_fit``: the
first step, tracing included, then ``--warmup`` and ``--repeats`` x ``--steps`` timed steps) with
the fused kernel, then again with Keras' ops (``tfkd.models.layers.fused_batchnorm(False)``);
the pairs alternate, so a machine's changing load hits both. Reports images/s, the first step's
seconds and their ratios. Results: benchmarks/results/batchnorm_ab.json.
"""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import flags  # noqa: E402

import common  # noqa: E402

flags.DEFINE_string("config", os.path.join(common.REPO, "configs", "fashion_mnist_resnet18.py"), "Config file.")
flags.DEFINE_list("methods", ["baseline", "self_distill", "metadistiller"], "Methods to time.")
flags.DEFINE_integer("steps", 20, "Timed steps per repeat.")
flags.DEFINE_integer("warmup", 3, "Untimed steps after the first.")
flags.DEFINE_integer("repeats", 3, "Repeats; the median is reported.")
flags.DEFINE_integer("batch_size", 128, "Global batch size.")
flags.DEFINE_integer("seed", 0, "Seed.")
FLAGS = flags.FLAGS
VARIANTS = {"fused": True, "keras": False}


def main(argv):
    del argv
    from tfkd import train
    from tfkd.models.layers import fused_batchnorm

    base, data = common.timing_setup(FLAGS.config, FLAGS.batch_size)
    rows = {}
    for name in FLAGS.methods:
        config = train.resolve(base, method=name, seed=FLAGS.seed)
        phases = None
        for variant, enabled in VARIANTS.items():
            with fused_batchnorm(enabled):  # the whole life of the model: its steps trace inside
                method = common.fresh_method(config, data, FLAGS.seed)
                phases = phases or sorted({method.epoch_phase(e) for e in range(config.train.epochs)}, key=str)
                for phase in phases:
                    rate, rates, first = common.time_fit(
                        method, data, phase, batch_size=FLAGS.batch_size, augment=base.data.augment, seed=FLAGS.seed,
                        warmup=FLAGS.warmup, steps=FLAGS.steps, repeats=FLAGS.repeats, with_first_step=True)
                    key = name if phase is None else f"{name} [{phase}]"
                    rows.setdefault(key, {})[variant] = {"images_per_s": rate, "runs": rates, "first_step_s": first}
                    print(f"{key:>24} {variant:>6}: {rate:8.1f} images/s, first step {first:.1f} s", flush=True)
    for row in rows.values():
        row["speedup"] = row["fused"]["images_per_s"] / row["keras"]["images_per_s"]
        row["first_step_ratio"] = row["fused"]["first_step_s"] / row["keras"]["first_step_s"]
    common.write_result("batchnorm_ab", {
        "benchmark": "batchnorm_ab", "config_file": os.path.relpath(FLAGS.config, common.REPO),
        "config": {"arch": base.model.arch, "width": base.model.width, "dataset": base.data.name,
                   "batch_size": FLAGS.batch_size, "image_shape": list(data.image_shape)},
        "seed": FLAGS.seed, "steps": FLAGS.steps, "warmup": FLAGS.warmup, "repeats": FLAGS.repeats,
        "load_average_at_end": os.getloadavg(), "phases": rows})


if __name__ == "__main__":
    common.run(main)
