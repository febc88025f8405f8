#!/usr/bin/env python3
"""tfkd and the PyTorch reference trained in lockstep: the same initial weights, the same batches.

    python benchmarks/reference_step_match.py --reference_python=/tmp/torchref/bin/python
        [--config=configs/bench_fashion_mnist_small_data.py] [--seeds=0,1,2]
        [--reference_edits=benchmarks/reference_edits/tf_same_padding.json]

The reference tables (benchmarks/reference_table.py) compare the two implementations end to end,
where each draws its own training subset, hold-out, initialisation, batch order and augmentation,
so a difference in level can come from any of them. Here only the code differs: for each seed,
tfkd builds the baseline of ``--config`` (its network, optimizer, learning-rate schedule and
weight decay) and draws every training batch of the whole run from its own input pipeline
(subset, order, crop and flip); its initial backbone and final classifier are copied into the
reference's network (``byot_bench.MultiExitResNet18``), and both train on those batches, the
reference with PyTorch's SGD (momentum 0.9, coupled weight decay 5e-4, the same step schedule).
Recorded per seed: the initial inference logits of both on the test images (equal networks give
equal logits), the training loss of every epoch, and the final exit's test accuracy of each after
the last step (no checkpoint choice). Float sums differ in order between the two frameworks, so
the two trajectories drift apart within a few steps; the question is whether one ends
systematically higher, read as the difference paired by seed.

Only the baseline (no exits) is trained: the level gap between the two implementations is largest
there relative to what the exits add. The reference runs in its own python; nothing of it is
imported here.
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import flags  # noqa: E402

import common  # noqa: E402
from reference_support import (check_reference_python, edited_sources, read_edits, reference_name, to_torch_layout,  # noqa: E402
                               write_edited_copy)

flags.DEFINE_string("reference_python", None, "Python of a virtual environment with PyTorch.")
flags.DEFINE_string("reference_dir", os.path.join(os.path.dirname(common.REPO), "shared", "reference"),
                    "Folder holding byot_bench.py.")
flags.DEFINE_string("reference_edits", None, "JSON file of text edits applied to a copy of the reference "
                    "(benchmarks/reference_support.py); none by default.")
flags.DEFINE_string("config", "configs/bench_fashion_mnist_small_data.py", "tfkd config whose regime is run.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (tfkd's initialisation and input pipeline).")
flags.DEFINE_integer("epochs", 0, "Epochs (0: the config's); fewer for a quick check, with the learning-rate steps "
                     "at 50 % and 75 % of them.")
flags.DEFINE_integer("threads", 1, "PyTorch threads.")
flags.DEFINE_string("name", "reference_step_match", "Result file name under benchmarks/results/.")
FLAGS = flags.FLAGS

# The reference's optimizer is fixed; a config with other values would not be the same run.
REFERENCE_FIXED = {"train.optimizer": "sgd", "train.momentum": 0.9, "train.nesterov": False,
                   "train.weight_decay": 5e-4, "train.lr_schedule": "step", "train.lr_decay": 0.1,
                   "model.arch": "resnet18", "data.name": "fashion_mnist"}

# The stem, stages, BatchNorm statistics and final classifier of a ResNet18 (exits left out).
BACKBONE_TENSORS = 102

# Runs in the reference's python, in the (edited) reference folder.
TORCH_SIDE = r"""
import json, sys
import numpy as np
import torch
import torch.nn.functional as F
from byot_bench import MultiExitResNet18

data = np.load(sys.argv[1])
spec = json.loads(sys.argv[2])
torch.set_num_threads(spec["threads"])
model = MultiExitResNet18(spec["width"], 10, 1)
state = model.state_dict()
for key in [k for k in data.files if k.startswith("w:")]:
    name = key[2:]
    assert tuple(state[name].shape) == data[key].shape, (name, tuple(state[name].shape), data[key].shape)
    state[name] = torch.from_numpy(data[key])
model.load_state_dict(state)
mean, std = spec["mean"], spec["std"]

def prepare(x):
    return ((torch.from_numpy(x.astype(np.float32)) - mean) / std).permute(0, 3, 1, 2).contiguous()

@torch.no_grad()
def final_logits(x):
    model.eval()
    out = torch.cat([model(prepare(x[i:i + 500]), with_exits=False)[0][0] for i in range(0, len(x), 500)])
    model.train()
    return out.numpy()

x_test, y_test = data["x_test"], data["y_test"]
initial = final_logits(x_test)
params = [p for n, p in model.named_parameters() if not n.startswith("exits.")]
opt = torch.optim.SGD(params, lr=spec["lr"], momentum=0.9, weight_decay=5e-4)
model.train()
losses = []
for step, (x, y) in enumerate(zip(data["x_batches"], data["y_batches"])):
    epoch = step // spec["steps_per_epoch"]
    for group in opt.param_groups:
        group["lr"] = spec["lr"] * 0.1 ** sum(epoch >= b for b in spec["boundaries"])
    outs, _ = model(prepare(x), with_exits=False)
    loss = F.cross_entropy(outs[-1], torch.from_numpy(y.astype(np.int64)))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    losses.append(float(loss))
final = final_logits(x_test)
np.savez(sys.argv[3], losses=np.array(losses), initial_logits=initial,
         test_accuracy=np.array(float((final.argmax(1) == y_test).mean())))
print(torch.__version__)
"""


def check_flags(config_path):
    """Every bad request fails here, before any training, with what was expected."""
    check_reference_python(FLAGS.reference_python)
    if not os.path.isfile(os.path.join(FLAGS.reference_dir, "byot_bench.py")):
        common.refuse(f"--reference_dir={FLAGS.reference_dir!r} has no byot_bench.py")
    if not os.path.isfile(config_path):
        common.refuse(f"--config={FLAGS.config!r} does not exist")
    try:
        seeds = [int(s) for s in FLAGS.seeds]
    except ValueError:
        common.refuse(f"--seeds={','.join(FLAGS.seeds)}: expected integers")
    if FLAGS.epochs < 0 or FLAGS.threads < 1:
        common.refuse("--epochs must be >= 0 and --threads >= 1")
    config = common.load_config(config_path)
    for dotted, expected in REFERENCE_FIXED.items():
        section, key = dotted.split(".")
        if config[section][key] != expected:
            common.refuse(f"--config={FLAGS.config}: {dotted}={config[section][key]!r}; the reference "
                          f"runs only {expected!r}")
    edits = read_edits(FLAGS.reference_edits) if FLAGS.reference_edits else None
    sources = edited_sources(FLAGS.reference_dir, edits) if edits else None
    return config, seeds, edits, sources


def run_seed(config, seed, folder, work):
    """One seed in lockstep: returns its record."""
    import keras
    import numpy as np
    import tensorflow as tf

    from tfkd import data as data_lib

    data = data_lib.load_dataset(config.data)
    batch, epochs = config.train.batch_size, config.train.epochs
    steps_per_epoch = data_lib.steps_per_epoch(data, batch)
    method = common.fresh_method(config, data, seed)
    network = method.network
    shared = {v.path: reference_name(v.path) for v in network.variables}
    shared = {path: name for path, name in shared.items() if name}
    if len(set(shared.values())) != BACKBONE_TENSORS:  # else the reference would keep its own initialisation
        raise RuntimeError(f"{len(set(shared.values()))} of the network's tensors map onto the reference's; "
                           f"expected {BACKBONE_TENSORS}")
    initial = {shared[v.path]: to_torch_layout(keras.ops.convert_to_numpy(v))
               for v in network.variables if v.path in shared}

    # Every batch of the run, from tfkd's own pipeline (subset, order, crop, flip): whole pixel
    # values, so uint8 holds them exactly.
    stream = data_lib.train_dataset(data, batch_size=batch, seed=seed, end_epoch=epochs)
    x_batches, y_batches = [], []
    for x, y in stream.take(epochs * steps_per_epoch):
        x_batches.append(np.asarray(x, np.float32).round().astype(np.uint8))
        y_batches.append(np.asarray(y, np.int64))
    x_batches, y_batches = np.stack(x_batches), np.stack(y_batches)
    x_test, y_test = np.asarray(data.test.images), np.asarray(data.test.labels, np.int64)

    def test_logits():
        return np.concatenate([np.asarray(network.predict_final(tf.cast(x_test[i:i + 500], tf.float32)))
                               for i in range(0, len(x_test), 500)])

    tfkd_initial = test_logits()
    start = time.time()
    running = []  # fit logs the loss's running mean over the steps
    method.fit(tf.data.Dataset.from_tensor_slices((x_batches, y_batches)).map(
        lambda x, y: (tf.cast(x, tf.float32), y)), epochs=1, shuffle=False, verbose=0,
        callbacks=[keras.callbacks.LambdaCallback(
            on_train_batch_end=lambda step, logs: running.append(float(logs["ce_final"])))])
    tfkd_seconds = time.time() - start
    tfkd_losses = [(i + 1) * m - i * (running[i - 1] if i else 0.0) for i, m in enumerate(running)]
    tfkd_accuracy = float((test_logits().argmax(1) == y_test).mean())

    shared_file, out_file = os.path.join(work, f"shared_{seed}.npz"), os.path.join(work, f"torch_{seed}.npz")
    np.savez(shared_file, x_batches=x_batches, y_batches=y_batches, x_test=x_test, y_test=y_test,
             **{"w:" + name: value for name, value in initial.items()})
    del x_batches
    spec = {"width": config.model.width, "mean": float(data.mean[0]), "std": float(data.std[0]),
            "lr": config.train.learning_rate, "boundaries": [int(b) for b in config.train.lr_boundaries],
            "steps_per_epoch": steps_per_epoch, "threads": FLAGS.threads}
    start = time.time()
    proc = subprocess.run([FLAGS.reference_python, "-c", TORCH_SIDE, shared_file, json.dumps(spec), out_file],
                          cwd=folder, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"the reference side failed:\n{proc.stderr[-3000:]}")
    reference_seconds = time.time() - start
    torch_side = dict(np.load(out_file))
    os.remove(shared_file)

    def per_epoch(values):
        return [round(statistics.mean(values[e * steps_per_epoch:(e + 1) * steps_per_epoch]), 5)
                for e in range(epochs)]

    return {
        "seed": seed, "torch": proc.stdout.strip().splitlines()[-1],
        "initial_logits_max_abs_diff": float(np.abs(tfkd_initial - torch_side["initial_logits"]).max()),
        "initial_logits_scale": float(np.abs(tfkd_initial).max()),
        "initial_prediction_agreement": float(np.mean(tfkd_initial.argmax(1) == torch_side["initial_logits"].argmax(1))),
        "first_step_loss": {"tfkd": tfkd_losses[0], "reference": float(torch_side["losses"][0])},
        "tfkd_test_final": tfkd_accuracy, "reference_test_final": float(torch_side["test_accuracy"]),
        "tfkd_epoch_loss": per_epoch(tfkd_losses), "reference_epoch_loss": per_epoch(list(torch_side["losses"])),
        "steps": len(tfkd_losses), "tfkd_seconds": tfkd_seconds, "reference_seconds": reference_seconds,
    }


def main(argv):
    del argv
    config_path = FLAGS.config if os.path.isabs(FLAGS.config) else os.path.join(common.REPO, FLAGS.config)
    config, seeds, edits, sources = check_flags(config_path)
    from tfkd import config as config_lib

    if FLAGS.epochs:
        config.train.epochs = FLAGS.epochs
        config.train.lr_boundaries = tuple(b * FLAGS.epochs // 100 for b in (50, 75))
    config = config_lib.resolve(config, method="baseline")
    common.hold_results(FLAGS.name)
    try:
        results = common.read_result(FLAGS.name)
    except FileNotFoundError:
        results = {"benchmark": "reference_step_match", "runs": []}
    regime = {"config_file": os.path.relpath(config_path, common.REPO), "epochs": config.train.epochs,
              "lr_boundaries": list(config.train.lr_boundaries), "max_train_examples": config.data.max_train_examples,
              "width": config.model.width, "batch_size": config.train.batch_size,
              "learning_rate": config.train.learning_rate, "method": "baseline"}
    if results.get("regime", regime) != regime or (results["runs"] and results.get("reference_edits") != edits):
        common.refuse(f"benchmarks/results/{FLAGS.name}.json holds runs of another regime or other edits; "
                      "give another --name")
    results.update({"regime": regime, "reference_edits": edits, "threads": FLAGS.threads})
    for key in ("command", "date_utc", "machine", "git_revision"):
        results.pop(key, None)  # rewritten for this invocation
    done = {r["seed"] for r in results["runs"]}
    work = tempfile.mkdtemp(prefix="step_match_")
    try:
        folder = FLAGS.reference_dir
        if edits:
            folder = os.path.dirname(write_edited_copy(FLAGS.reference_dir, sources, os.path.join(work, "reference")))
        for seed in seeds:
            if seed in done:
                continue
            record = run_seed(config, seed, folder, work)
            print(f"seed {seed}: tfkd {record['tfkd_test_final']:.4f}, reference {record['reference_test_final']:.4f}, "
                  f"initial logits differ by {record['initial_logits_max_abs_diff']:.2g}", flush=True)
            results["runs"] = sorted(results["runs"] + [record], key=lambda r: r["seed"])
            common.write_result(FLAGS.name, results)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    common.run(main)
