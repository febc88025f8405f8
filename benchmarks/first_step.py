#!/usr/bin/env python3
"""Where a training step's first-call time goes, per method and phase: Python tracing of the
method's ``train_step`` into a graph, then the rest of the first call of Keras' train function
(its own wrapper's tracing, TensorFlow's graph optimisation and kernel set-up, one step),
against the step's steady time.

    python benchmarks/first_step.py [--config=configs/fashion_mnist_resnet18.py] [--batch_size=128]

Each (method, phase) runs in a fresh process, as a user's run does (nothing traced or
optimised before), through the function ``fit`` calls (``make_train_function``) on a dataset
iterator. Grappler's share of the first call is read from TensorFlow's own log of every
optimizer pass (``TF_CPP_VMODULE=meta_optimizer=1`` in that process; ``common.grappler_seconds``).
``benchmarks/step_cost.py`` records the whole first ``fit`` step (this plus fit's own start-up:
callbacks, the epoch iterator).

``--against=DIR`` (a checkout of another revision, e.g. ``git worktree add /tmp/old HEAD~1``)
measures every step in both checkouts, alternating, ``--repeats`` times each, and records the
ratio of their first calls: a before/after comparison from one run, under the same load.
``--against_grappler_off`` does the same with this checkout and Grappler turned off in the other
process (``disable_meta_optimizer``), and records the ratio of the steady steps too: what the first
call saves against what every later step costs.
"""
import functools
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import flags  # noqa: E402

import common  # noqa: E402

flags.DEFINE_string("config", os.path.join(common.REPO, "configs", "fashion_mnist_resnet18.py"), "Config file.")
flags.DEFINE_integer("batch_size", 128, "Global batch size.")
flags.DEFINE_integer("steps", 5, "Steady calls timed after the first (median reported).")
flags.DEFINE_integer("seed", 0, "Seed.")
flags.DEFINE_string("name", "first_step", "Result file name under benchmarks/results/.")
flags.DEFINE_string("against", "", "Another checkout to measure alternately with this one (ratios recorded).")
flags.DEFINE_bool("against_grappler_off", False, "Measure every step also with Grappler off, alternately "
                  "(ratios of first call and steady step recorded).")
flags.DEFINE_integer("repeats", 1, "With --against / --against_grappler_off: fresh processes per step and setting.")
flags.DEFINE_string("only", "", "Internal: measure one 'label' of STEPS in this process, print JSON.")
flags.DEFINE_bool("grappler_off", False, "Internal, with --only: Grappler's meta optimizer disabled in this process.")
FLAGS = flags.FLAGS

# label -> (method, phase, metadistiller knobs)
STEPS = {"baseline": ("baseline", None, {}), "dsn": ("dsn", None, {}), "self_distill": ("self_distill", None, {}),
         "metadistiller [main]": ("metadistiller", "main", {}),
         "metadistiller [meta]": ("metadistiller", "meta", {}),
         "metadistiller [meta, shared]": ("metadistiller", "meta", {"share_inner_gradient": True})}


def measure(label):
    import tensorflow as tf

    from tfkd import data as data_lib
    from tfkd import train

    if FLAGS.grappler_off:  # process-wide, before anything is traced
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    method_name, phase, knobs = STEPS[label]
    base, data = common.timing_setup(FLAGS.config, FLAGS.batch_size)
    config = train.resolve(base, method=method_name, seed=FLAGS.seed)
    if knobs:
        config.metadistiller.update(knobs)
    method = common.fresh_method(config, data, FLAGS.seed)
    method.set_phase(phase)
    batches = iter(data_lib.train_dataset(data, batch_size=FLAGS.batch_size, seed=FLAGS.seed,
                                          augment=base.data.augment,
                                          meta_split=method.phase_needs_meta_split(phase)))
    traces = []
    train_step = method.train_step

    def timed_train_step(data):  # runs only while Keras traces the step: times that tracing
        graph, start = tf.compat.v1.get_default_graph(), time.perf_counter()
        ops_before = len(graph.get_operations())
        logs = train_step(data)
        traces.append((time.perf_counter() - start, len(graph.get_operations()) - ops_before))
        return logs

    method.train_step = timed_train_step
    method.make_train_function(force=True)
    start = time.perf_counter()
    tf.nest.map_structure(lambda t: t.numpy(), method.train_function(batches))
    first_call_s = time.perf_counter() - start
    times = []
    for _ in range(FLAGS.steps):
        start = time.perf_counter()
        tf.nest.map_structure(lambda t: t.numpy(), method.train_function(batches))
        times.append(time.perf_counter() - start)
    (trace_s, graph_ops), = traces  # traced once
    return {"trace_s": trace_s, "first_call_s": first_call_s, "rest_of_first_call_s": first_call_s - trace_s,
            "step_s": statistics.median(times), "graph_ops": graph_ops}


@functools.lru_cache(maxsize=None)
def config_thread_environment():
    """The config file's thread pools as environment entries, for both checkouts: this one sets them
    from the config file itself, an older one (--against) may know only TensorFlow's variables."""
    from tfkd.io import thread_environment

    train = common.load_config(FLAGS.config).train
    return thread_environment(train.get("intra_op_threads", 0), train.get("inter_op_threads", 0))


def measure_in(repo, label, grappler_off=False):
    """One fresh process of ``repo``'s copy of this benchmark measuring ``label``, with Grappler's
    own log of its passes (whatever the first call spent optimising graphs, this step's included)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="0", TF_CPP_VMODULE="meta_optimizer=1", **config_thread_environment())
    proc = subprocess.run([sys.executable, os.path.join(repo, "benchmarks", "first_step.py"), f"--only={label}",
                           f"--config={FLAGS.config}", f"--batch_size={FLAGS.batch_size}",
                           f"--steps={FLAGS.steps}", f"--seed={FLAGS.seed}"]
                          + (["--grappler_off"] if grappler_off else []),
                          check=True, capture_output=True, text=True, env=env)
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    result["grappler_s"], result["grappler_by_pass_s"] = common.grappler_seconds(proc.stderr)
    return result


def main(argv):
    del argv
    if FLAGS.only:
        print("RESULT " + json.dumps(measure(FLAGS.only)), flush=True)
        return
    if FLAGS.against and FLAGS.against_grappler_off:
        common.refuse("--against and --against_grappler_off: expected at most one of them")
    results, against = {}, {}
    other = os.path.abspath(FLAGS.against) if FLAGS.against else None
    measure_other = None  # the second setting measured beside this checkout's, if any
    if FLAGS.against_grappler_off:
        measure_other = functools.partial(measure_in, common.REPO, grappler_off=True)
    elif other:
        measure_other = functools.partial(measure_in, other)
    for label in STEPS:
        if measure_other:
            ours, theirs = [], []
            for _ in range(FLAGS.repeats):  # alternating, so both see the same load
                theirs.append(measure_other(label))
                ours.append(measure_in(common.REPO, label))
            pick = lambda runs: min(runs, key=lambda r: r["first_call_s"])  # noqa: E731  (least disturbed)
            results[label], against[label] = pick(ours), pick(theirs)
            # The steady step, likewise the least disturbed: the fastest median over the repeats (it
            # may come from another process than the first call kept); every repeat's is recorded.
            for kept, runs in ((results[label], ours), (against[label], theirs)):
                kept["step_s_each"] = [r["step_s"] for r in runs]
                kept["step_s"] = min(kept["step_s_each"])
            against[label]["first_call_ratio"] = results[label]["first_call_s"] / against[label]["first_call_s"]
            against[label]["step_ratio"] = results[label]["step_s"] / against[label]["step_s"]
        else:
            results[label] = measure_in(common.REPO, label)
        r = results[label]
        print(f"{label:>30}: first call {r['first_call_s']:5.1f} s (tracing train_step {r['trace_s']:4.1f} s, "
              f"Grappler {r['grappler_s']:4.1f} s), "
              f"step {1000 * r['step_s']:6.0f} ms, {r['graph_ops']} graph ops"
              + (f"; {against[label]['first_call_ratio']:.2f}x the other checkout's" if other else "")
              + (f"; Grappler off: first call {against[label]['first_call_s']:5.1f} s, "
                 f"step {1000 * against[label]['step_s']:6.0f} ms" if FLAGS.against_grappler_off else ""), flush=True)
    payload = {"benchmark": "first_step", "config_file": os.path.relpath(FLAGS.config, common.REPO),
               "batch_size": FLAGS.batch_size, "seed": FLAGS.seed, "steps": FLAGS.steps, "fresh_process_each": True,
               "load_average_before": os.getloadavg()[0], "steps_measured": results}
    if other:
        from tfkd import io

        payload["against"] = {"path": other, "git_revision": io.git_revision(other), "repeats": FLAGS.repeats,
                              "steps_measured": against}
    elif FLAGS.against_grappler_off:
        payload["against"] = {"grappler": "off", "repeats": FLAGS.repeats, "steps_measured": against}
    common.write_result(FLAGS.name, payload)


if __name__ == "__main__":
    common.run(main)
