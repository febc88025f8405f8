"""One worker of tests/test_multi_worker.py: python multi_worker_run.py TF_CONFIG_JSON WORKDIR OUT_JSON.
Trains the tiny baseline run with --strategy=multi_worker and writes the metrics this worker
measured (both workers evaluate the best checkpoint, collectively)."""
import json
import os
import sys

os.environ["TF_CONFIG"] = sys.argv[1]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.conftest import tiny_config  # noqa: E402
from tfkd import train  # noqa: E402


def main():
    # Few steps: start-up and tracing under the collective strategy are the cost, not the data.
    # The baseline: what is under test is the cluster (one writer, collective evaluation, resume);
    # each method's replica logic is checked under MirroredStrategy (tests/methods/test_distributed.py),
    # and self_distill here cost 1.8x the CPU time.
    config = tiny_config(method="baseline", epochs=2, train_examples=320, eval_examples=96)
    config.model.arch, config.model.width = "resnet10", 0.0625
    config.train.batch_size = 64  # 32 per worker
    config.export.enabled = False
    metrics = train.run(config, sys.argv[2], strategy="multi_worker")
    with open(sys.argv[3], "w") as f:
        json.dump(metrics, f)


if __name__ == "__main__":
    main()
