#!/usr/bin/env python3
"""What MetaDistiller's label generator teaches: for finished MetaDistiller runs, how accurate and
how soft the generated targets T_k are on validation images, next to the exits they supervise.

    python benchmarks/metadistiller_targets.py --workdir=RUN [--workdir=RUN2 ...] [--images=2000] [--add]

For each run (best checkpoint, inference mode) and each of the final output and T_1..T_{K-1}:
mean entropy (nats), argmax accuracy, mean probability of the true class, and the spread of the
probabilities across images (0 means the generator emits one fixed distribution whatever the
image); plus each exit's own validation accuracy. Writes benchmarks/results/<name>.json.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import flags  # noqa: E402

import common  # noqa: E402

flags.DEFINE_multi_string("workdir", [], "Finished MetaDistiller run folders.")
flags.DEFINE_integer("images", 2000, "Validation images used (the first ones of the split).")
flags.DEFINE_string("name", "metadistiller_targets", "Result file name under benchmarks/results/.")
flags.DEFINE_bool("add", False, "Keep the runs already in the results file (other workdirs, measured "
                  "earlier, maybe on another machine) and add these.")
FLAGS = flags.FLAGS


def main(argv):
    del argv

    from tfkd import layout  # TensorFlow-free: a bad request is refused before seconds of imports

    if not FLAGS.workdir:
        common.refuse("no --workdir given; expected one or more --workdir=RUN, each a MetaDistiller run folder")
    for workdir in FLAGS.workdir:  # every folder before the first one's minutes of work
        layout.require_run_folder(workdir)
        layout.read_run_json(layout.require_run_file(workdir, layout.RUN_INFO), kind=list)
    common.hold_results(FLAGS.name)

    import numpy as np

    from tfkd import runs, visualize
    from tfkd.data import load_dataset
    results, earlier_commands = [], []
    if FLAGS.add:
        try:
            previous = common.read_result(FLAGS.name)
        except FileNotFoundError:
            previous = {"runs": []}
        results = [r for r in previous["runs"] if r["workdir"] not in FLAGS.workdir]
        if results:  # the kept runs' provenance: the commands that measured them
            earlier_commands = previous.get("earlier_commands", []) + [
                {k: previous[k] for k in ("command", "date_utc", "git_revision") if k in previous}]
    for workdir in FLAGS.workdir:
        method, _ = visualize.restore_metadistiller(workdir)
        config = runs.read_config(workdir)
        data = load_dataset(config.data)
        images, labels = data.val.images[:FLAGS.images], data.val.labels[:FLAGS.images]
        out = visualize.metadistiller_targets(method, images)
        logits = method.network(images.astype(np.float32), training=False)
        heads = {}
        for name, probs in out.items():
            entropy = -(probs * np.log(np.clip(probs, 1e-12, 1.0))).sum(1)
            heads[name] = {"entropy": float(entropy.mean()),
                           "argmax_accuracy": float((probs.argmax(1) == labels).mean()),
                           "true_class_probability": float(probs[np.arange(len(labels)), labels].mean()),
                           "spread_across_images": float(probs.std(0).mean())}
            if name != "final":  # the exit this target supervises
                heads[name]["exit_accuracy"] = float((np.asarray(logits[name]).argmax(1) == labels).mean())
        revision = layout.read_run_json(os.path.join(workdir, layout.RUN_INFO), kind=list)[0]["git_revision"]
        state = runs.read_state(runs.resolve_checkpoint(workdir, "best"))
        results.append({"workdir": workdir, "generator_lr": config.metadistiller.generator_lr,
                        "config": {"epochs": config.train.epochs, "width": config.model.width,
                                   "dataset": config.data.name, "seed": config.seed,
                                   "metadistiller": config.metadistiller.to_dict()},
                        "best_epoch": state["best_epoch"], "run_git_revision": revision,
                        "num_classes": int(data.num_classes), "images": int(len(labels)), "heads": heads})
        print(workdir)
        for name, h in heads.items():
            print(f"  {name:>7}: " + ", ".join(f"{k} {v:.3f}" for k, v in h.items()), flush=True)
    common.write_result(FLAGS.name, {"benchmark": "metadistiller_targets", "runs": results,
                                     **({"earlier_commands": earlier_commands} if earlier_commands else {})})


if __name__ == "__main__":
    common.run(main)
