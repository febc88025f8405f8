"""Run as a script (tests/methods/test_distributed.py does): the few-shot methods' steps under
MirroredStrategy (2 logical CPUs, one episode per replica) equal one-device steps on the same
batch of two episodes. Prints the largest weight difference per method as JSON."""
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from tfkd.data.episodes import EpisodeSampler, episode_dataset  # noqa: E402
from tfkd.distribute import get_strategy  # noqa: E402
from tfkd.registry import METHODS  # noqa: E402
import tfkd.methods  # noqa: E402,F401

D = 16
COMMON = {"embedding_units": (8,), "scale_init": 10.0}
GEN = {**COMMON, "num_generated": 2, "generator_hidden": (8,)}
CONFIGS = {
    "cosine": (COMMON, 1),
    "gen": (GEN, 1),
    "dist": ({**GEN, "gamma": 2.0, "k_teacher": 10}, 1),
    "progressive": ({**GEN, "gamma": 2.0, "k_teacher": 10, "direction": "weaken", "k_start": 4, "k_end": 1,
                     "schedule_steps": 2}, 4),
}


def data():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(6), 20)
    features = (rng.normal(size=(6, D))[labels] + 0.5 * rng.normal(size=(len(labels), D))).astype(np.float32)
    return features, labels


def make(name, strategy, features, labels, classes):
    cfg, _ = CONFIGS[name]
    keras.utils.set_random_seed(0)
    with strategy.scope():
        method = METHODS.get(name)(D, **cfg)
        method.build_from_dim(batch=2)
        method.compile(optimizer=keras.optimizers.Adam(1e-2))
        method.optimizer.build(method.trainable_variables)
    method.use_base_split(features, labels, classes)
    return method


def main():
    mirrored = get_strategy("mirrored")
    assert mirrored.num_replicas_in_sync == 2
    features, labels = data()
    out = {}
    for name in sys.argv[1:] or list(CONFIGS):
        k = CONFIGS[name][1]
        sampler = EpisodeSampler(labels, range(6), 3, k, 4, seed=0, k_max=k)
        multi = make(name, mirrored, features, labels, sampler.classes)
        single = make(name, tf.distribute.get_strategy(), features, labels, sampler.classes)
        single.set_weights(multi.get_weights())
        initial = [w.copy() for w in single.get_weights()]
        for model in (multi, single):
            ds = episode_dataset(features, labels, sampler, episodes_per_batch=2, num_episodes=4)
            model.fit(ds, epochs=1, steps_per_epoch=2, verbose=0, shuffle=False)
        diffs = [float(np.max(np.abs(a - b))) for a, b in zip(multi.get_weights(), single.get_weights())]
        moved = [float(np.max(np.abs(a - b))) for a, b in zip(initial, single.get_weights()) if a.dtype.kind == "f"]
        out[name] = {"max_diff": max(diffs), "max_update": max(moved)}
        if hasattr(single, "generator"):
            out[name]["generator_max_diff"] = max(
                float(np.max(np.abs(a.numpy() - b.numpy())))
                for a, b in zip(multi.generator.trainable_variables, single.generator.trainable_variables))
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
