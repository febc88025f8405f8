"""MultiWorkerMirroredStrategy on loopback: two worker processes with TF_CONFIG train the same
baseline run, end with the same weights (they evaluate the best checkpoint to the same
numbers), only the chief writes, and a run resumed from the chief's checkpoint ends as the
uninterrupted one."""
import json
import os
import shutil
import socket
import subprocess
import sys

from tests.conftest import SUBPROCESS_TIMEOUT

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multi_worker_run.py")


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def run_workers(workdir, out_dir):
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]}
    procs = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        procs.append(subprocess.Popen([sys.executable, SCRIPT, tf_config, workdir,
                                       os.path.join(out_dir, f"worker{index}.json")],
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")))
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=SUBPROCESS_TIMEOUT)[0])
    finally:
        for p in procs:  # never leave a worker waiting on a collective
            if p.poll() is None:
                p.kill()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    results = []
    for i in range(2):
        with open(os.path.join(out_dir, f"worker{i}.json")) as f:
            results.append(json.load(f))
    return results


def test_two_workers_on_loopback_agree_and_resume(tmp_path):
    workdir = str(tmp_path / "run")
    chief, worker = run_workers(workdir, str(tmp_path))
    for split in ("val", "test"):
        for key, value in chief[split].items():
            assert abs(worker[split][key] - value) < 1e-6, (split, key)  # same weights on both workers
    with open(os.path.join(workdir, "metrics.json")) as f:
        assert json.load(f)["test"] == chief["test"]  # written by the chief
    with open(os.path.join(workdir, "run_info.json")) as f:
        starts = json.load(f)
    assert len(starts) == 1 and starts[0]["replicas"] == 2  # one writer, two replicas
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["best", "epoch_0001", "epoch_0002"]
    # Interrupt after epoch 1 (what a kill leaves behind) and resume with both workers.
    ckpts = os.path.join(workdir, "checkpoints")
    os.remove(os.path.join(workdir, "metrics.json"))
    shutil.rmtree(os.path.join(ckpts, "epoch_0002"))
    with open(os.path.join(ckpts, "epoch_0001", "state.json")) as f:
        best_was_first = json.load(f)["best_epoch"] == 1
    if best_was_first:
        shutil.rmtree(os.path.join(ckpts, "best"))
        shutil.copytree(os.path.join(ckpts, "epoch_0001"), os.path.join(ckpts, "best"))
    resumed, resumed_worker = run_workers(workdir, str(tmp_path))
    for key, value in chief["test"].items():
        assert abs(resumed["test"][key] - value) < 1e-4, key
        assert abs(resumed_worker["test"][key] - value) < 1e-4, key
