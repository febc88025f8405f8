"""tf.distribute strategies by name, and who writes files under multi-worker training."""
import json
import os
import warnings

import tensorflow as tf

from tfkd.errors import ConfigError
from tfkd.io import thread_counts

STRATEGIES = ("default", "one_device", "mirrored", "multi_worker", "tpu")


def get_strategy(name="default"):
    """``default``: no distribution; ``one_device``: the first GPU (else CPU); ``mirrored``: all
    local GPUs (or all logical CPU devices when there is no GPU); ``multi_worker``:
    MultiWorkerMirroredStrategy configured by the TF_CONFIG environment variable; ``tpu``:
    TPUStrategy on the TPU named by $TPU_NAME (or the local one)."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ConfigError("--strategy=multi_worker needs the TF_CONFIG environment variable")
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=os.environ.get("TPU_NAME", ""))
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, RuntimeError, tf.errors.OpError) as e:
            raise ConfigError(f"--strategy=tpu: no TPU reachable ({str(e).splitlines()[0]}); run on a TPU VM or "
                              f"set TPU_NAME") from None
        return tf.distribute.TPUStrategy(resolver)
    raise ConfigError(f"--strategy={name!r}: expected one of {STRATEGIES}")


def set_thread_counts(intra_op, inter_op):
    """TensorFlow's intra-op (threads splitting one op) and inter-op (ops run side by side) thread
    pools, from config.train.intra_op_threads / inter_op_threads; 0 keeps TensorFlow's choice (or
    TF_NUM_INTRAOP_THREADS / TF_NUM_INTEROP_THREADS). The pools are made when TensorFlow's runtime
    starts: bin/train sets them before; in a process where TensorFlow already runs (a notebook) a
    different count cannot be applied, which is said in one warning (run_info.json records the
    counts a run really had)."""
    current = thread_counts()
    for name, key, value, setter in (
            ("intra_op_threads", "intra_op", intra_op, tf.config.threading.set_intra_op_parallelism_threads),
            ("inter_op_threads", "inter_op", inter_op, tf.config.threading.set_inter_op_parallelism_threads)):
        if not value or current[key] == value:
            continue
        try:
            setter(int(value))
        except RuntimeError:
            warnings.warn(f"config.train.{name}={value} not applied: TensorFlow already runs in this process with "
                          f"{current[key] or 'its default number of'} {key} threads (set before TensorFlow's first "
                          f"op, as bin/train does)", RuntimeWarning, stacklevel=2)


def mixed_precision_policy():
    """The Keras mixed policy for config.train.mixed_precision on this machine: float16 (with loss
    scaling) where there is a GPU, bfloat16 elsewhere: CPUs have no fast float16 arithmetic (a tiny
    test run: 24.6 s mixed_float16, 8.8 s mixed_bfloat16, 8.8 s float32 on a 2-core CPU), and TPUs
    compute in bfloat16 natively."""
    return "mixed_float16" if tf.config.list_logical_devices("GPU") else "mixed_bfloat16"


def barrier(strategy):
    """Blocks until every worker gets here (a collective all-reduce); no-op without workers."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.constant(1.0)), axis=None)


def replica_scale(loss):
    """Divides a replica's mean loss by the number of replicas. Optimizers sum gradients over
    replicas, so the update then equals one device's update on the global batch."""
    return loss / tf.cast(tf.distribute.get_strategy().num_replicas_in_sync, loss.dtype)


def is_chief():
    """True unless TF_CONFIG names this process as a non-chief worker (only the chief writes)."""
    tf_config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    task = tf_config.get("task", {})
    cluster = tf_config.get("cluster", {})
    if not task:
        return True
    if task.get("type") == "chief":
        return True
    return task.get("type") == "worker" and task.get("index", 0) == 0 and "chief" not in cluster
