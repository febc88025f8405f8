#!/usr/bin/env python3
"""Does MetaDistiller's meta objective prefer informative soft targets? A probe of finished runs.

    python benchmarks/metadistiller_lookahead_probe.py --workdir=RUN [--workdir=RUN2 ...] [--pairs=16] [--add]

The label generator learns only from the one-step lookahead (Algorithm 1): the CE on a D_test
batch after one SGD step of the network on a D_train batch supervised by the generated targets.
After training, those targets are close to uniform (benchmarks/metadistiller_targets.py). This
probe asks whether the objective itself would reward better targets: at a run's best checkpoint,
on the same pairs of disjoint training batches, it evaluates the lookahead's outer loss with the
exits' soft targets T_k taken from

  - the run's learned label generator (what Algorithm 1 found),
  - the uniform distribution,
  - the final exit's softmax (self-distillation's target),
  - the one-hot labels,

and, as the reference, the outer loss with no inner step (zeta = 0). Each at the inner step size
zeta of the run's three learning-rate phases (lr, lr/10, lr/100). Reported: paired differences to
the learned generator, mean and 95% CI over the batch pairs. A difference near 0 for every kind
of target means the objective hardly tells targets apart, so its gradient gives the generator
little to learn from; a clearly negative one means better targets exist that the generator's
optimisation did not reach. Writes benchmarks/results/<name>.json.
"""
import datetime
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import flags  # noqa: E402

import common  # noqa: E402

flags.DEFINE_multi_string("workdir", [], "Finished MetaDistiller run folders.")
flags.DEFINE_integer("pairs", 16, "(D_train, D_test) batch pairs per step size.")
flags.DEFINE_integer("seed", 0, "Seed of the batch draws.")
flags.DEFINE_string("name", "metadistiller_lookahead_probe", "Result file name under benchmarks/results/.")
flags.DEFINE_bool("add", False, "Keep the runs already in the results file and add these.")
flags.DEFINE_integer("generator_steps", 0, "If > 0, also train the generator alone from the checkpoint (network "
                     "frozen, a fresh Adam) for this many meta steps at each --generator_lrs, and track its outer "
                     "loss on the probe's batch pairs.")
flags.DEFINE_list("generator_lrs", ["0.001", "0.01", "0.1"], "Adam learning rates of the generator-only runs.")
flags.DEFINE_integer("eval_every", 50, "Generator-only runs: meta steps between evaluations.")
FLAGS = flags.FLAGS

KINDS = ("learned generator", "uniform", "final exit's softmax (SD's target)", "one-hot labels")


def targets_for(kind, method):
    """``targets_instead`` for MetaDistiller.lookahead_loss (None: the learned generator)."""
    import tensorflow as tf

    exits = method.output_names_ordered[:-1]
    if kind == "learned generator":
        return None
    if kind == "uniform":
        return lambda logits, labels: {n: tf.ones_like(logits[n]) / tf.cast(tf.shape(logits[n])[-1], logits[n].dtype)
                                       for n in exits}
    if kind == "one-hot labels":
        return lambda logits, labels: {n: tf.one_hot(labels, tf.shape(logits[n])[-1], dtype=logits[n].dtype)
                                       for n in exits}
    return lambda logits, labels: {n: tf.nn.softmax(tf.stop_gradient(logits["final"]) / method.tau) for n in exits}


def restored(workdir, config):
    """(the run's MetaDistiller at its best checkpoint, {kind: outer loss function (a, b, zeta)}).
    The functions read the variables when called, so they follow a generator trained further."""
    import tensorflow as tf

    from tfkd import visualize

    method, _ = visualize.restore_metadistiller(workdir)
    method.weight_decay = float(config.train.weight_decay)  # the inner step as training took it

    def values():
        return [[tf.convert_to_tensor(v) for v in variables] for variables in (
            method.generator.trainable_variables, method.network.trainable_variables,
            method.network.non_trainable_variables, method.generator.non_trainable_variables)]

    return method, {kind: tf.function(lambda a, b, zeta, kind=kind: method.lookahead_loss(
        *values(), a, b, zeta, targets_instead=targets_for(kind, method))) for kind in KINDS}


def target_summary(method, pairs):
    """What the generator's targets T_k look like on the D_train batches of ``pairs``, as the
    lookahead sees them (training-mode BatchNorm): mean entropy (nats), argmax accuracy, mean
    probability of the true class."""
    import numpy as np
    import tensorflow as tf

    rows = {}
    for (x, y), _ in pairs:
        logits, features = method.network(x, training=True, return_features=True)
        targets = method.generator(method.stage_features(features), training=True)
        for name, probs in method.soft_targets(targets, tf.float32).items():
            p, labels = np.asarray(probs), np.asarray(y)
            rows.setdefault(name, []).append([float(-(p * np.log(np.clip(p, 1e-12, 1))).sum(1).mean()),
                                              float((p.argmax(1) == labels).mean()),
                                              float(p[np.arange(len(labels)), labels].mean())])
    return {name: dict(zip(("entropy", "argmax_accuracy", "true_class_probability"), np.mean(v, 0).tolist()))
            for name, v in rows.items()}


def generator_only(workdir, config, batch_pair, zeta):
    """The generator trained alone from the checkpoint by Algorithm 1's meta step (the network
    frozen, a fresh Adam per learning rate, zeta = the first phase's step): its outer loss on fixed
    evaluation pairs every --eval_every steps, against SD's target and uniform ones on the same pairs."""
    import numpy as np
    import tensorflow as tf

    from tfkd import optimizers

    evaluation = [batch_pair() for _ in range(FLAGS.pairs)]
    zeta = tf.constant(zeta, tf.float32)
    out = {}
    for lr in [float(x) for x in FLAGS.generator_lrs]:
        method, losses = restored(workdir, config)
        variables = method.generator.trainable_variables
        adam = optimizers.Adam(lr)
        adam.build(variables)

        @tf.function
        def meta_step(a, b):
            _, grads = method.meta_gradient(a, b, zeta)
            adam.apply_gradients(zip(grads, variables))

        def outer(kind):
            return float(np.mean([float(losses[kind](a, b, zeta)) for a, b in evaluation]))

        if not out:  # the checkpoint's own targets, before any generator-only step
            out["targets_at_checkpoint"] = target_summary(method, evaluation)
        curve = [[0, outer("learned generator")]]
        for step in range(1, FLAGS.generator_steps + 1):
            meta_step(*batch_pair())
            if step % FLAGS.eval_every == 0 or step == FLAGS.generator_steps:
                curve.append([step, outer("learned generator")])
                print(f"{workdir} generator-only lr {lr:g} step {step}: outer loss {curve[-1][1]:.4f}", flush=True)
        out[f"{lr:g}"] = {"curve": curve, "targets": target_summary(method, evaluation)}
        print(f"{workdir} generator-only lr {lr:g} targets: {out[f'{lr:g}']['targets']}", flush=True)
    out["reference"] = {kind: outer(kind) for kind in KINDS[1:]}  # the network is frozen: fixed levels
    out["zeta"] = float(zeta)
    return out


def probe(workdir):
    import numpy as np
    import tensorflow as tf

    from tfkd import io, runs
    from tfkd.data import load_dataset

    config = runs.read_config(workdir)
    method, losses = restored(workdir, config)
    data = load_dataset(config.data)
    images, labels = data.train.images, data.train.labels.astype(np.int32)
    batch = int(config.train.batch_size)
    rng = np.random.default_rng(FLAGS.seed)

    def batch_pair():
        order = rng.permutation(len(labels))[:2 * batch]  # two disjoint batches, as the halves D_train / D_test
        return ((tf.constant(images[order[:batch]], tf.float32), tf.constant(labels[order[:batch]])),
                (tf.constant(images[order[batch:]], tf.float32), tf.constant(labels[order[batch:]])))

    lr = float(config.train.learning_rate)
    zetas = [lr, lr * config.train.lr_decay, lr * config.train.lr_decay ** 2]
    out = {}
    for zeta in zetas:
        rows = {kind: [] for kind in KINDS + ("no inner step",)}
        for _ in range(FLAGS.pairs):
            a, b = batch_pair()
            for kind in KINDS:
                rows[kind].append(float(losses[kind](a, b, tf.constant(zeta, tf.float32))))
            rows["no inner step"].append(float(losses["learned generator"](a, b, tf.constant(0.0, tf.float32))))
        learned = np.array(rows["learned generator"])
        out[f"{zeta:g}"] = {kind: {"mean": float(np.mean(v)),
                                   "minus_learned_mean": float(np.mean(np.array(v) - learned)),
                                   "minus_learned_ci95": float(1.96 * np.std(np.array(v) - learned, ddof=1)
                                                               / np.sqrt(len(v)))}
                            for kind, v in rows.items()}
        print(f"{workdir} zeta {zeta:g}: " + ", ".join(f"{k} {v['mean']:.4f}" for k, v in out[f'{zeta:g}'].items()),
              flush=True)
    extra = {"generator_only": generator_only(workdir, config, batch_pair, lr)} if FLAGS.generator_steps else {}
    state = runs.read_state(runs.resolve_checkpoint(workdir, "best"))
    measured = {"command": " ".join([os.path.relpath(sys.argv[0], common.REPO)] + sys.argv[1:]),
                "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                "git_revision": io.git_revision()}  # per run: --add keeps rows of several invocations
    return {**extra, "measured_by": measured, "workdir": workdir, "dataset": config.data.name, "seed": config.seed,
            "best_epoch": state["best_epoch"], "batch_size": batch, "pairs": FLAGS.pairs,
            "metadistiller": config.metadistiller.to_dict(), "learning_rate": lr,
            "weight_decay": method.weight_decay, "run_git_revision": runs.read_run_json(
                os.path.join(workdir, runs.RUN_INFO), kind=list)[0]["git_revision"],
            "outer_loss": out}


def main(argv):
    del argv
    if not FLAGS.workdir:
        common.refuse("no --workdir given; expected one or more --workdir=RUN, each a MetaDistiller run folder")
    if FLAGS.pairs < 2:
        common.refuse(f"--pairs={FLAGS.pairs}: expected at least 2 batch pairs (for a confidence interval)")
    from tfkd import layout

    for workdir in FLAGS.workdir:  # every folder before the first one's minutes of work
        layout.require_run_folder(workdir)  # a missing or damaged run file: one line (common.run)
        method = layout.read_config(workdir).method
        if method != "metadistiller":
            common.refuse(f"--workdir={workdir} holds a {method!r} run; expected a MetaDistiller run")
    common.hold_results(FLAGS.name)
    results = []
    if FLAGS.add:
        try:
            results = [r for r in common.read_result(FLAGS.name)["runs"] if r["workdir"] not in FLAGS.workdir]
        except FileNotFoundError:
            pass
    for workdir in FLAGS.workdir:
        results.append(probe(workdir))
        common.write_result(FLAGS.name, {"benchmark": "metadistiller_lookahead_probe", "kinds": list(KINDS),
                                         "runs": results})


if __name__ == "__main__":
    common.run(main)
