"""SavedModel export of the inference path (backbone + final head; exits and generators dropped).

Signatures:
* ``serving_default``: ``images`` uint8 [batch, H, W, C] (dynamic batch) ->
  ``probabilities`` float32 [batch, classes], ``top_k_classes`` int32 [batch, k],
  ``top_k_probabilities`` float32 [batch, k];
* ``logits``: same input -> ``logits`` float32 [batch, classes].
Normalisation happens inside the graph. A request of the wrong dtype or shape is rejected by the
signature (TensorFlow raises naming the expected TensorSpec) instead of producing wrong answers.
Metadata (method, config, git revision, class names) is written to ``assets.extra/tfkd.json``.
"""
import json
import os

import tensorflow as tf

from tfkd import io

METADATA_FILE = os.path.join("assets.extra", "tfkd.json")


class InferenceModule(tf.Module):
    """Tracks only the inference path's variables, so exits (and any generator) are not saved."""

    def __init__(self, network, top_k=5):
        super().__init__(name="tfkd_inference")
        # The network itself is deliberately not an attribute: tracking it would save every
        # variable it owns, exit heads included.
        self.inference_variables = list(network.inference_variables())
        self.top_k = top_k = int(min(top_k, network.num_classes))
        spec = tf.TensorSpec((None,) + tuple(network.image_shape), tf.uint8, name="images")

        expected = tf.constant(network.image_shape, tf.int32)
        message = f"images must be uint8 of shape [batch, {', '.join(map(str, network.image_shape))}]"

        def logits(images):
            # Signature callers are not held to the static shape: check it in the graph.
            shape = tf.shape(images)
            ok = tf.logical_and(tf.equal(tf.size(shape), 4),
                                tf.reduce_all(tf.equal(tf.pad(shape, [[0, 4]])[1:4], expected)))
            check = tf.debugging.Assert(ok, [message, "got shape", shape])
            with tf.control_dependencies([check]):  # before any kernel sees a malformed tensor
                images = tf.identity(images)
            return {"logits": tf.cast(network.predict_final(tf.cast(images, tf.float32)), tf.float32)}

        def serve(images):
            probabilities = tf.nn.softmax(logits(images)["logits"], axis=-1)
            top = tf.math.top_k(probabilities, k=top_k)
            return {"probabilities": probabilities, "top_k_classes": top.indices,
                    "top_k_probabilities": top.values}

        self.serve = tf.function(serve, input_signature=[spec])
        self.logits = tf.function(logits, input_signature=[spec])


def export_saved_model(network, path, metadata=None, top_k=5):
    """Writes the SavedModel atomically: to a temp folder, then renamed over ``path``."""
    module = InferenceModule(network, top_k)
    with io.atomic_directory(path) as tmp:
        tf.saved_model.save(module, tmp, signatures={"serving_default": module.serve, "logits": module.logits})
        meta = dict(metadata or {})
        meta.update({"input_shape": list(network.image_shape), "num_classes": int(network.num_classes),
                     "top_k": module.top_k, "signatures": ["serving_default", "logits"]})
        io.write_json_atomic(os.path.join(tmp, METADATA_FILE), meta)
    return path


def load_metadata(path):
    with open(os.path.join(path, METADATA_FILE)) as f:
        return json.load(f)


def restore_network(workdir, checkpoint="best"):
    """Rebuilds a run's network from its workdir (no data needed) and loads a checkpoint:
    'best', 'latest', or the path of a checkpoint folder."""
    import ml_collections

    from tfkd.errors import WorkdirError
    from tfkd.methods import build_method
    from tfkd.models import build_backbone
    from tfkd import train

    for name in ("config.json", "network.json"):
        if not os.path.exists(os.path.join(workdir, name)):
            raise WorkdirError(f"--workdir={workdir} has no {name}: not a tfkd run folder")
    with open(os.path.join(workdir, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    with open(os.path.join(workdir, "network.json")) as f:
        net = json.load(f)
    if checkpoint == "best":
        ckpt = os.path.join(workdir, train.CHECKPOINTS, "best")
    elif checkpoint == "latest":
        ckpt = train.latest_checkpoint(workdir)
    else:
        ckpt = checkpoint
    if not ckpt or not os.path.exists(os.path.join(ckpt, train.WEIGHTS)):
        raise WorkdirError(f"--checkpoint={checkpoint}: no {train.WEIGHTS} found in {ckpt or workdir}")
    kwargs = dict(net["kwargs"])
    kwargs["input_shape"] = tuple(kwargs["input_shape"])
    network = build_backbone(net["arch"], **kwargs)
    network.ensure_built()
    method = build_method(config.method, network, config[config.method], weight_decay=0.0)
    method(tf.zeros((1,) + tuple(network.image_shape)), training=False)
    method.compile(optimizer=train.build_optimizer(config.train, steps=1))
    method.build_state()
    method.load_weights(os.path.join(ckpt, train.WEIGHTS))
    return network, config, net.get("class_names"), ckpt


CHECK_SCRIPT = r"""
import json, sys
import numpy as np, tensorflow as tf
path, images_file = sys.argv[1], sys.argv[2]
images = np.load(images_file)
loaded = tf.saved_model.load(path)
out = loaded.signatures["serving_default"](images=tf.constant(images))
np.save(images_file + ".out.npy", out["probabilities"].numpy())
"""


def check_export(network, path, num_images=8, seed=0, atol=1e-5):
    """Reloads the SavedModel in a fresh process and compares its probabilities with the in-memory
    network's on random uint8 images. Returns the max absolute difference; raises if > atol."""
    import subprocess
    import sys
    import tempfile

    import numpy as np

    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(num_images,) + tuple(network.image_shape), dtype=np.uint8)
    expected = tf.nn.softmax(network.predict_final(tf.cast(images, tf.float32))).numpy()
    with tempfile.TemporaryDirectory() as tmp:
        images_file = os.path.join(tmp, "images.npy")
        np.save(images_file, images)
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
        proc = subprocess.run([sys.executable, "-c", CHECK_SCRIPT, path, images_file], capture_output=True,
                              text=True, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"reloading {path} in a fresh process failed:\n{proc.stderr[-2000:]}")
        got = np.load(images_file + ".out.npy")
    diff = float(np.max(np.abs(got - expected)))
    if not diff <= atol:
        raise RuntimeError(f"export {path} disagrees with the checkpoint: max |diff| = {diff:.3g} > {atol}")
    return diff
