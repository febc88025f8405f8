#!/usr/bin/env python3
"""How long the README's first command (`make train`: bin/train with configs/fashion_mnist_resnet18.py)
takes on this machine, so the README states a measured duration, not a guess.

    python benchmarks/default_job.py [--repeats=1]

Runs exactly the Makefile's training command in a fresh temporary workdir (setup excluded) and
records wall time, CPU time, the load average before and after (other work on the machine makes
the time an upper bound), and the run's final metrics.
"""
import os
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import flags  # noqa: E402

import common  # noqa: E402

flags.DEFINE_integer("repeats", 1, "Fresh runs; each is reported.")
flags.DEFINE_string("name", "default_job", "Result file name under benchmarks/results/.")
FLAGS = flags.FLAGS

CONFIG = os.path.join("configs", "fashion_mnist_resnet18.py")


def main(argv):
    del argv
    import json

    runs = []
    for _ in range(FLAGS.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            workdir = os.path.join(tmp, "run")
            cmd = [sys.executable, os.path.join("bin", "train"), "--method=metadistiller", f"--config={CONFIG}",
                   f"--workdir={workdir}"]
            load_before = os.getloadavg()[0]
            cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.time()
            proc = subprocess.run(cmd, cwd=common.REPO, capture_output=True, text=True)
            wall = time.time() - start
            cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
            with open(os.path.join(workdir, "metrics.json")) as f:
                metrics = json.load(f)
            with open(os.path.join(workdir, "run_info.json")) as f:
                threads = json.load(f)[-1]["threads"]  # the run's own (its config's), not this process's
            runs.append({"wall_s": wall,
                         "cpu_s": (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime),
                         "load_average_before": load_before, "load_average_after": os.getloadavg()[0],
                         "num_train_examples": metrics["num_train_examples"], "epochs": metrics["epochs"],
                         "test_final_accuracy": metrics["test"]["final_accuracy"], "best_epoch": metrics["best_epoch"],
                         "threads": threads})
            print(f"make train's job: {wall / 60:.1f} min wall, {runs[-1]['cpu_s'] / 60:.1f} CPU-min, "
                  f"test final accuracy {100 * metrics['test']['final_accuracy']:.2f}%", flush=True)
    common.write_result(FLAGS.name, {"benchmark": "default_job", "config_file": CONFIG,
                                     "train_command": "bin/train --method=metadistiller --config=" + CONFIG,
                                     "runs": runs})


if __name__ == "__main__":
    common.run(main)
