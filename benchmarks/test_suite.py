#!/usr/bin/env python3
"""The test suite's duration and its slowest tests, for the README's testing section.

    python benchmarks/test_suite.py                 # runs `make test`'s pytest command, then records it
    python benchmarks/test_suite.py --log=FILE      # records a finished run from its saved output

Records the total wall time, the pass/skip counts, the slowest tests (pytest --durations) and
the load average (other work on the machine makes the times upper bounds).
"""
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import flags  # noqa: E402

import common  # noqa: E402

flags.DEFINE_string("log", "", "Saved output of a finished `make test` / pytest --durations run.")
flags.DEFINE_string("note", "", "What else ran on the machine meanwhile.")
flags.DEFINE_string("name", "test_suite", "Result file name under benchmarks/results/.")
FLAGS = flags.FLAGS

PYTEST = [sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadfile", "--durations=15", "tests"]  # as `make test`


def parse(text):
    summary = re.findall(r"^(?:=+ )?(\d+ (?:passed|failed|skipped|errors?).*?) in ([\d.]+)s", text, flags=re.M)  # -q: no "="
    if not summary:
        raise ValueError("no pytest summary line found")
    counts_text, seconds = summary[-1]
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|warnings?)", counts_text)}
    slowest = [{"seconds": float(s), "phase": phase, "test": test}
               for s, phase, test in re.findall(r"^([\d.]+)s (call|setup|teardown)\s+(\S+)$", text, flags=re.M)]
    return {"seconds": float(seconds), "counts": counts, "slowest": slowest}


def main(argv):
    del argv
    if FLAGS.log:
        with open(FLAGS.log) as f:
            text = f.read()
        load = None
    else:
        load_before = os.getloadavg()[0]
        start = time.time()
        proc = subprocess.run(PYTEST, cwd=common.REPO, capture_output=True, text=True)
        text = proc.stdout
        load = {"before": load_before, "after": os.getloadavg()[0], "wall_s": time.time() - start}
    result = parse(text)
    common.write_result(FLAGS.name, {"benchmark": "test_suite", "pytest_command": " ".join(["python"] + PYTEST[1:]),
                                     **result, "load_average": load, "note": FLAGS.note,
                                     "source": "saved log" if FLAGS.log else "run by this script"})
    print(f"{result['seconds'] / 60:.1f} min, {result['counts']}")


if __name__ == "__main__":
    common.run(main)
