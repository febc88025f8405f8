#!/usr/bin/env python3
"""Training throughput (images/s) of each method on one fixed config, measured in one run, plus
the throughput of the tf.data input pipeline alone (to show input is not the bottleneck), and
MetaDistiller's wall-clock cost relative to self_distill over one M-epoch cycle (one meta epoch,
M - 1 main epochs; epochs have equal step counts, so the cycle cost is a weighted step time).

    python benchmarks/step_cost.py [--methods=baseline,dsn,self_distill] [--steps=30]

Each method and training phase: a fresh model, ``--warmup`` steps (tracing), then ``--steps``
timed steps through ``fit`` (the same train_step users run), repeated ``--repeats`` times; the
median is reported, with ratios from the same run.

With ``--reference_python`` (a Python that has PyTorch, e.g. /tmp/torchref/bin/python), every
round also times the independent PyTorch reference (../shared/reference/byot_bench.py: the same
multi-exit ResNet18, width, input, classes and batch, random inputs, its own clock around each
step) in fresh processes, so tfkd / PyTorch ratios come from the same rounds.
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import flags  # noqa: E402

import common  # noqa: E402

flags.DEFINE_string("config", os.path.join(common.REPO, "configs", "fashion_mnist_resnet18.py"), "Config file.")
flags.DEFINE_list("methods", ["baseline", "dsn", "self_distill", "metadistiller"], "Methods to time.")
flags.DEFINE_integer("steps", 30, "Timed steps per repeat.")
flags.DEFINE_integer("warmup", 5, "Untimed steps first.")
flags.DEFINE_integer("repeats", 5, "Rounds (every method and phase timed once per round); the median is reported.")
flags.DEFINE_integer("batch_size", 128, "Global batch size.")
flags.DEFINE_integer("seed", 0, "Seed.")
flags.DEFINE_string("name", "step_cost", "Result file name under benchmarks/results/.")
flags.DEFINE_string("reference_python", "", "A Python with PyTorch: also time the PyTorch reference ('' = skip).")
flags.DEFINE_string("reference_dir", os.path.join(common.REPO, "..", "shared", "reference"),
                    "Folder of byot_bench.py.")
flags.DEFINE_integer("reference_threads", 2, "torch.set_num_threads of the reference.")
flags.DEFINE_integer("intra_op_threads", None, "TensorFlow's intra-op threads (default: the config's "
                     "train.intra_op_threads; 0: TensorFlow's choice).")
flags.DEFINE_integer("inter_op_threads", None, "TensorFlow's inter-op threads (default: the config's).")
FLAGS = flags.FLAGS
# The meta phase again with other knobs: (timer key, label in the cycle table, metadistiller knobs).
META_VARIANTS = (("metadistiller/2", "meta_every_steps=2", {"meta_every_steps": 2}),
                 ("metadistiller/shared", "share_inner_gradient", {"share_inner_gradient": True}),
                 ("metadistiller/4shared", "meta_every_steps=4,share_inner_gradient",
                  {"meta_every_steps": 4, "share_inner_gradient": True}),
                 ("metadistiller/mb64", "meta_batch_size=64", {"meta_batch_size": 64}),
                 ("metadistiller/mb32", "meta_batch_size=32", {"meta_batch_size": 32}),
                 ("metadistiller/fusion4", "fusion_channels=4", {"fusion_channels": 4}))


flags.DEFINE_list("meta_variants", [label for _, label, _ in META_VARIANTS],
                  "Which of the meta phase's variants to time too (labels of META_VARIANTS; '' = none).")


# Reference steps -> the tfkd (method, phase) doing the same work: tfkd's meta-phase step is a main
# step plus a meta step, the reference times the two separately.
REFERENCE_STEPS = {("baseline", None): ("baseline", ["baseline"]), ("dsn", None): ("dsn", ["dsn"]),
                   ("self_distill", None): ("self_distill", ["self_distill"]),
                   ("metadistiller", "main"): ("meta", ["md_student"]),
                   ("metadistiller", "meta"): ("meta", ["md_student", "meta_step"])}


def reference_round(config, data, steps):
    """{tfkd (method, phase): the reference's images/s} from one fresh byot_bench.py process per
    reference method; the medians of its own per-step clock (process start-up excluded)."""
    script = os.path.join(FLAGS.reference_dir, "byot_bench.py")
    shape = "x".join(str(d) for d in data.image_shape)
    medians, torch_version = {}, None
    for method in sorted({m for m, _ in REFERENCE_STEPS.values()}):
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "times.jsonl")
            subprocess.run([FLAGS.reference_python, script, "--method", method, "--width", str(config.model.width),
                            "--input", shape, "--classes", str(data.num_classes), "--batch", str(FLAGS.batch_size),
                            "--steps", str(steps), "--warmup", str(FLAGS.warmup),
                            "--threads", str(FLAGS.reference_threads), "--json", out],
                           check=True, capture_output=True, text=True)
            with open(out) as f:
                for line in f:
                    record = json.loads(line)
                    medians[(method, record["step"])] = statistics.median(record["times_ms"]) / 1e3
                    torch_version = record["torch"]
    return {key: FLAGS.batch_size / sum(medians[(method, step)] for step in names)
            for key, (method, names) in REFERENCE_STEPS.items()}, torch_version


def time_pipeline(ds, batches, batch_size):
    it = iter(ds)
    for _ in range(5):
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch_size / (time.perf_counter() - start)


def reference_results(phases, reference_rates, torch_version):
    """tfkd's and the reference's images/s per step kind, and their ratio (None without a reference)."""
    if not reference_rates:
        return None
    steps = {}
    for (name, phase), runs in reference_rates.items():
        if (name, phase) in phases:
            ours = phases[(name, phase)][0]
            steps[f"{name} [{phase}]" if phase else name] = {
                "tfkd_images_per_s": ours, "reference_images_per_s": statistics.median(runs),
                "reference_runs": runs, "ratio": ours / statistics.median(runs)}
    return {"torch": torch_version, "threads": FLAGS.reference_threads,
            "script": "../shared/reference/byot_bench.py", "steps": steps}


def check_reference():
    """The reference is timed inside every round, after all of tfkd's tracing: check it can run first."""
    if not FLAGS.reference_python:
        return
    script = os.path.join(FLAGS.reference_dir, "byot_bench.py")
    if not os.path.isfile(script):
        common.refuse(f"--reference_dir={FLAGS.reference_dir} has no byot_bench.py; expected the folder "
                      "of the PyTorch reference (../shared/reference beside the checkout)")
    probe = subprocess.run([FLAGS.reference_python, "-c", "import torch"], capture_output=True, text=True)
    if probe.returncode != 0:
        common.refuse(f"--reference_python={FLAGS.reference_python} cannot import torch; expected a "
                      "Python with PyTorch installed")


def chosen_variants():
    return [v for v in META_VARIANTS if v[1] in FLAGS.meta_variants]


def cycle_costs(phases, rates, m_epochs):
    """MetaDistiller's M-epoch cycle (one meta epoch, M - 1 main epochs) relative to self_distill's M
    epochs, from the median step times; and the same ratio within each round (every step kind timed
    once per round, so a round's ratio pairs them under the same load), whose spread shows the noise."""
    variants = [("metadistiller", "meta_every_steps=1")] + [v[:2] for v in chosen_variants()]

    def ratio(step, key, m):
        return (step((key, "meta")) + (m - 1) * step(("metadistiller", "main"))) / (m * step(("self_distill", None)))

    median_step = lambda key: FLAGS.batch_size / phases[key][0]  # noqa: E731
    cycles, by_round = {}, {}
    for m in sorted({m_epochs, 5}):  # the config's M and the paper's M = 5
        for key, variant in variants:
            cycles[f"M={m},{variant}"] = ratio(median_step, key, m)
            by_round[f"M={m},{variant}"] = [ratio(lambda k: FLAGS.batch_size / rates[k][i], key, m)
                                            for i in range(len(rates[("self_distill", None)]))]
    optional = lambda key: median_step((key, "meta")) if (key, "meta") in phases else None  # noqa: E731
    return {
        "M": m_epochs, "meta_step_s": median_step(("metadistiller", "meta")),
        "meta_step_every2_s": optional("metadistiller/2"),
        "meta_step_shared_s": optional("metadistiller/shared"),
        "meta_step_every4_shared_s": optional("metadistiller/4shared"),
        "variant_meta_step_s": {label: median_step((key, "meta")) for key, label, _ in chosen_variants()},
        "main_step_s": median_step(("metadistiller", "main")),
        "self_distill_step_s": median_step(("self_distill", None)),
        "cycle_ratio_vs_self_distill": cycles[f"M={m_epochs},meta_every_steps=1"],
        "cycle_ratios": cycles, "cycle_ratios_by_round": by_round,
    }


def main(argv):
    del argv
    unknown = sorted(set(FLAGS.meta_variants) - {label for _, label, _ in META_VARIANTS})
    if unknown:
        common.refuse(f"--meta_variants={','.join(unknown)}: expected labels among "
                      f"{', '.join(label for _, label, _ in META_VARIANTS)}")
    check_reference()
    from tfkd import data as data_lib
    from tfkd import train

    base, data = common.timing_setup(FLAGS.config, FLAGS.batch_size, FLAGS.intra_op_threads, FLAGS.inter_op_threads)
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
        # The meta phase again with each of META_VARIANTS' knobs.
        for key, _, knobs in chosen_variants():
            variant = train.resolve(base, method="metadistiller", seed=FLAGS.seed)
            variant.metadistiller.update(knobs)
            timers[(key, "meta")] = timer(common.fresh_method(variant, data, FLAGS.seed), "meta")
    rates = {key: [] for key in timers}
    reference_rates, torch_version = {}, None
    for _ in range(FLAGS.repeats):  # tfkd and, with --reference_python, the reference: round by round
        for key, rate in common.interleaved_rates(timers, FLAGS.steps, 1).items():
            rates[key] += rate
        if FLAGS.reference_python:
            round_rates, torch_version = reference_round(base, data, FLAGS.steps)
            for key, rate in round_rates.items():
                reference_rates.setdefault(key, []).append(rate)
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
    if ("metadistiller", "meta") in phases and ("self_distill", None) in phases:
        results_cycle = cycle_costs(phases, rates, m_epochs)
        for name, ratio in results_cycle["cycle_ratios"].items():
            spread = results_cycle["cycle_ratios_by_round"][name]
            print(f"MetaDistiller cycle {name}: {ratio:.2f}x self_distill "
                  f"(rounds: {min(spread):.2f}-{max(spread):.2f})")
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
        "reference": reference_results(phases, reference_rates, torch_version),
    })


if __name__ == "__main__":
    common.run(main)
