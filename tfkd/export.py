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
    def __init__(self, network, top_k=5):
        super().__init__(name="tfkd_inference")
        self.network = network
        self.top_k = int(min(top_k, network.num_classes))
        spec = tf.TensorSpec((None,) + tuple(network.image_shape), tf.uint8, name="images")
        self.serve = tf.function(self._serve, input_signature=[spec])
        self.logits = tf.function(self._logits, input_signature=[spec])

    def _logits(self, images):
        return {"logits": tf.cast(self.network.predict_final(tf.cast(images, tf.float32)), tf.float32)}

    def _serve(self, images):
        probabilities = tf.nn.softmax(self._logits(images)["logits"], axis=-1)
        top = tf.math.top_k(probabilities, k=self.top_k)
        return {"probabilities": probabilities, "top_k_classes": top.indices,
                "top_k_probabilities": top.values}


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
