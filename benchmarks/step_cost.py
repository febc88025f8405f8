#!/usr/bin/env python3
"""Training throughput (images/s) of each method on one fixed config, measured in one run, plus
the throughput of the tf.data input pipeline alone (to show input is not the bottleneck), and
MetaDistiller's wall-clock cost relative to self_distill over one M-epoch cycle (one meta epoch,
M - 1 main epochs; epochs have equal step counts, so the cycle cost is a weighted step time).

    python benchmarks/step_cost.py [--methods=baseline,dsn,self_distill] [--steps=30]

Each method and training phase: a fresh model, ``--warmup`` steps (tracing), then ``--steps``
timed steps through ``fit`` (the same train_step users run), repeated ``--repeats`` times; the
median is reported, with ratios from the same run.
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
flags.DEFINE_list("methods", ["baseline", "dsn", "self_distill", "metadistiller"], "Methods to time.")
flags.DEFINE_integer("steps", 30, "Timed steps per repeat.")
flags.DEFINE_integer("warmup", 5, "Untimed steps first.")
flags.DEFINE_integer("repeats", 5, "Rounds (every method and phase timed once per round); the median is reported.")
flags.DEFINE_integer("batch_size", 128, "Global batch size.")
flags.DEFINE_integer("seed", 0, "Seed.")
flags.DEFINE_string("name", "step_cost", "Result file name under benchmarks/results/.")
FLAGS = flags.FLAGS
META_VARIANTS = {"metadistiller/2": {"meta_every_steps": 2},
                 "metadistiller/shared": {"share_inner_gradient": True},
                 "metadistiller/4shared": {"meta_every_steps": 4, "share_inner_gradient": True}}


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
    from tfkd import data as data_lib
    from tfkd import train

    base, data = common.timing_setup(FLAGS.config, FLAGS.batch_size)
    results = {}
    pipe = data_lib.train_dataset(data, batch_size=FLAGS.batch_size, seed=FLAGS.seed, augment=base.data.augment)
    pipeline_rates = [time_pipeline(pipe, 100, FLAGS.batch_size) for _ in range(FLAGS.repeats)]
    def timer(method, phase):
        return common.FitTimer(method, data, phase, batch_size=FLAGS.batch_size, augment=base.data.augment,
                               seed=FLAGS.seed, warmup=FLAGS.warmup)

    # Every (method, phase) is built and traced first, then all are timed in turns, repeat by repeat:
    # timed one after another, a method's rate depended on when it ran (baseline measured first was
    # slower than self_distill on an idle machine).
    timers, built = {}, {}
    for name in FLAGS.methods:
        config = train.resolve(base, method=name, seed=FLAGS.seed)
        method = common.fresh_method(config, data, FLAGS.seed)
        built[name] = (config, method)
        for phase in sorted({method.epoch_phase(e) for e in range(config.train.epochs)}, key=str):
            timers[(name, phase)] = timer(method, phase)
    if "metadistiller" in FLAGS.methods and "self_distill" in FLAGS.methods:
        # The meta phase again with a meta step after every 2nd main step (meta_every_steps=2), with
        # the inner gradient shared by the real update (share_inner_gradient=True), and both thinned
        # to every 4th step and shared.
        for key, knobs in META_VARIANTS.items():
            variant = train.resolve(base, method="metadistiller", seed=FLAGS.seed)
            variant.metadistiller.update(knobs)
            timers[(key, "meta")] = timer(common.fresh_method(variant, data, FLAGS.seed), "meta")
    rates = common.interleaved_rates(timers, FLAGS.steps, FLAGS.repeats)
    phases = {key: (statistics.median(r), r, timers[key].first_step_s) for key, r in rates.items()}
    for (name, phase), (rate, _, first) in phases.items():
        print(f"{name:>20} [{phase}]: {rate:8.1f} images/s, first step {first:.1f} s", flush=True)
    for name, (config, method) in built.items():
        if name == "metadistiller":
            m_epochs = config.metadistiller.meta_every_epochs
        # A method's rate over a run: phases weighted by their share of epochs.
        seconds = [FLAGS.batch_size / phases[(name, method.epoch_phase(e))][0] for e in range(config.train.epochs)]
        rate = FLAGS.batch_size / statistics.mean(seconds)
        results[name] = {"images_per_s": rate, "phases": {str(p): {"images_per_s": v[0], "runs": v[1],
                                                                   "first_step_s": v[2]}
                                                          for (n, p), v in phases.items() if n == name}}
    results_cycle = None
    if ("metadistiller/2", "meta") in phases:
        step = lambda key: FLAGS.batch_size / phases[key][0]  # noqa: E731
        sd_step, main_step = step(("self_distill", None)), step(("metadistiller", "main"))
        cycles = {}
        for m in sorted({m_epochs, 5}):  # the config's M and the paper's M = 5
            for variant, key in (("meta_every_steps=1", "metadistiller"), ("meta_every_steps=2", "metadistiller/2"),
                                 ("share_inner_gradient", "metadistiller/shared"),
                                 ("meta_every_steps=4,share_inner_gradient", "metadistiller/4shared")):
                cycle = step((key, "meta")) + (m - 1) * main_step
                cycles[f"M={m},{variant}"] = cycle / (m * sd_step)
        results_cycle = {
            "M": m_epochs, "meta_step_s": step(("metadistiller", "meta")),
            "meta_step_every2_s": step(("metadistiller/2", "meta")),
            "meta_step_shared_s": step(("metadistiller/shared", "meta")),
            "meta_step_every4_shared_s": step(("metadistiller/4shared", "meta")),
            "main_step_s": main_step, "self_distill_step_s": sd_step,
            "cycle_ratio_vs_self_distill": cycles[f"M={m_epochs},meta_every_steps=1"],
            "cycle_ratios": cycles,
        }
        for name, ratio in cycles.items():
            print(f"MetaDistiller cycle {name}: {ratio:.2f}x self_distill")
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
        "interleaved": True, "methods": results,
        "metadistiller_cycle": results_cycle,
        "pipeline_images_per_s": pipeline, "pipeline_runs": pipeline_rates,
    })


if __name__ == "__main__":
    app.run(main)
