"""SavedModel export of the inference path (backbone + final head; exits and generators dropped).

Signatures:
* ``serving_default``: ``images`` uint8 [batch, H, W, C] (dynamic batch) ->
  ``probabilities`` float32 [batch, classes], ``top_k_classes`` int32 [batch, k],
  ``top_k_probabilities`` float32 [batch, k];
* ``logits``: same input -> ``logits`` float32 [batch, classes].
Normalisation happens inside the graph. A request of the wrong dtype or shape is rejected by the
signature (TensorFlow raises naming the expected TensorSpec) instead of producing wrong answers.
Any batch size is served in slices of ``SERVING_CHUNK`` images, so a large request costs the
memory of one slice, not of the whole batch.
Metadata (method, config, git revision, class names) is written to ``assets.extra/tfkd.json``.

Layer: reads run folders through tfkd.runs (and tfkd.teachers for old teacher-student
checkpoints); never imports a driver.
"""
import os

import tensorflow as tf

from tfkd import io, runs, teachers

METADATA_FILE = runs.METADATA_FILE
# Images per forward pass inside a signature: activation memory stays that of SERVING_CHUNK images
# whatever the request's batch size (4096 28x28 images in one pass peaked at 1 GB).
SERVING_CHUNK = 256


def in_chunks(fn, images, out_dim, chunk=SERVING_CHUNK):
    """``fn`` ([k, ...] -> [k, out_dim] float32) over ``images`` [n, ...] in slices of ``chunk`` rows,
    one after another (parallel iterations would bring the whole batch's memory back)."""
    n = tf.shape(images)[0]
    steps = (n + chunk - 1) // chunk
    parts = tf.TensorArray(tf.float32, size=steps, infer_shape=False, element_shape=tf.TensorShape([None, out_dim]))

    def body(i, parts):
        return i + 1, parts.write(i, tf.cast(fn(images[i * chunk:(i + 1) * chunk]), tf.float32))

    _, parts = tf.while_loop(lambda i, _: i < steps, body, (tf.constant(0), parts), parallel_iterations=1)
    return tf.ensure_shape(parts.concat(), [None, out_dim])


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
            return {"logits": in_chunks(lambda x: network.predict_final(tf.cast(x, tf.float32)), images,
                                        int(network.num_classes))}

        # serve calls the logits tf.function, so the network is traced (and saved) once, not twice.
        self.logits = tf.function(logits, input_signature=[spec])

        def serve(images):
            probabilities = tf.nn.softmax(self.logits(images)["logits"], axis=-1)
            top = tf.math.top_k(probabilities, k=top_k)
            return {"probabilities": probabilities, "top_k_classes": top.indices,
                    "top_k_probabilities": top.values}

        self.serve = tf.function(serve, input_signature=[spec])


def export_saved_model(network, path, metadata=None, top_k=5):
    """Writes the SavedModel atomically: to a temp folder, then renamed over ``path``."""
    module = InferenceModule(network, top_k)
    # Refused up front when it cannot fit (variables + a few MB of graph), instead of failing midway.
    needed = runs.variables_nbytes(module.inference_variables) + (8 << 20)
    with io.atomic_directory(path, needed_bytes=needed) as tmp:
        tf.saved_model.save(module, tmp, signatures={"serving_default": module.serve, "logits": module.logits})
        meta = dict(metadata or {})
        meta.update({"input_shape": list(network.image_shape), "num_classes": int(network.num_classes),
                     "top_k": module.top_k, "signatures": ["serving_default", "logits"]})
        io.write_json_atomic(os.path.join(tmp, METADATA_FILE), meta)
    return path


def load_metadata(path):
    return runs.load_metadata(path)


def restore_network(workdir, checkpoint="best"):
    """Rebuilds a run's network from its workdir (no data needed) and loads a checkpoint:
    'best', 'latest', or the path of a checkpoint folder (tfkd.runs.restore_network; a
    teacher-student run's old full-model checkpoint is restored with its teacher)."""
    return runs.restore_network(workdir, checkpoint, load_teacher=teachers.Teacher)


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


# ---------------------------------------------------------------------- few-shot predictors


def pad_by_label(support_features, support_labels):
    """(n, d) features and (n,) labels in 0..C-1 -> (C, k_max, d) support and (C, k_max) mask, the
    static-shape layout the few-shot methods use (k_max = the largest class's count)."""
    labels = tf.cast(support_labels, tf.int32)
    num_classes = tf.reduce_max(labels) + 1
    one_hot = tf.one_hot(labels, num_classes, dtype=tf.int32)
    position = tf.reduce_sum(tf.cumsum(one_hot, axis=0) * one_hot, axis=1) - 1  # rank within its class
    counts = tf.reduce_sum(one_hot, axis=0)
    k_max = tf.reduce_max(counts)
    indices = tf.stack([labels, position], axis=1)
    d = tf.shape(support_features)[1]
    support = tf.scatter_nd(indices, support_features, tf.stack([num_classes, k_max, d]))
    mask = tf.scatter_nd(indices, tf.ones_like(labels, tf.bool), tf.stack([num_classes, k_max]))
    return support, mask, counts


class FewShotPredictorModule(tf.Module):
    """Signatures (any number of classes and shots; ``C`` = classes of the request):

    * ``serving_default``: support_features [n, d] float32, support_labels [n] int32 in 0..C-1,
      query_features [m, d] float32 -> probabilities [m, C];
    * ``serving_int64``: the same with int64 labels (numpy's default integer type);
    * ``class_ids``: support_labels int64, any class ids (e.g. a catalogue's) -> probabilities
      [m, C] with columns in increasing id order, ``class_ids`` [C] (those ids) and
      ``predicted_class_ids`` [m];
    * with the backbone that extracted the features: ``images`` and ``images_class_ids``, the same
      with support_images / query_images uint8 [n, H, W, C] embedded in the graph (in slices of
      SERVING_CHUNK images).

    On the loaded object, the functions ``serve``, ``class_ids``, ``images`` and ``images_class_ids``
    take int32 or int64 labels alike. A malformed request (lengths, widths, labels, NaN or inf
    features) fails with an error naming the input instead of returning NaN probabilities.

    ``variants`` = [(k_threshold, [members])]: progressive runs keep one variant per snapshot, and
    a request uses the variant with the largest threshold <= its smallest class's shot count (the
    paper tests k shots with the model trained at that k; below the smallest snapshot, the best
    checkpoint). Members of an ensemble
    are averaged in probability. Generators draw stateless noise from a fixed seed, so the same
    request always gets the same answer.
    """

    def __init__(self, variants, feature_dim, backbone=None):
        super().__init__(name="tfkd_fewshot_predictor")
        self.thresholds = [int(k) for k, _ in variants]
        members = [m for _, ms in variants for m in ms]
        # Only what prediction needs is tracked (no optimizer, no teacher support).
        self.prediction_variables = [v for m in members for v in m.variables]
        for i, m in enumerate(members):
            if hasattr(m, "serving_seed"):
                m.serving_seed = tf.constant([int(getattr(m.generator, "seed", 0)), i], tf.int32)
        d = int(feature_dim)

        def predict(support_features, support_labels, query_features,
                    names=("support_features", "query_features")):
            for x, name in zip((support_features, query_features), names):
                if x.shape.rank != 2 or x.shape[-1] not in (None, d):  # known when traced: refuse at once
                    raise ValueError(f"{name} must be float32 [n, {d}], got shape {x.shape}")
            n = tf.shape(support_labels, out_type=support_labels.dtype)[0]
            checks = [
                tf.debugging.assert_equal(tf.shape(support_features)[0], tf.shape(support_labels)[0],
                                          message=f"{names[0]} and support_labels must have the same length"),
                tf.debugging.assert_greater(tf.size(support_labels), 0, message="the support set is empty"),
                tf.debugging.assert_non_negative(support_labels, message="support_labels must be in 0..C-1"),
                # C <= n (every class has an example): also keeps a huge label from sizing the tensors.
                tf.debugging.assert_less(support_labels, n, message="support_labels must be 0..C-1 with every "
                                         "class present (the class_ids signature takes any class ids)"),
                tf.debugging.assert_equal(tf.shape(support_features)[1], d, message=f"{names[0]} must have {d} columns"),
                tf.debugging.assert_equal(tf.shape(query_features)[1], d, message=f"{names[1]} must have {d} columns"),
            ]
            with tf.control_dependencies(checks):
                # One NaN in the support spoils every prototype, hence every query's probabilities.
                support_features = tf.debugging.assert_all_finite(support_features, f"{names[0]} contains NaN or inf")
                query_features = tf.debugging.assert_all_finite(query_features, f"{names[1]} contains NaN or inf")
                support, mask, counts = pad_by_label(support_features, tf.cast(support_labels, tf.int32))
            with tf.control_dependencies([tf.debugging.assert_positive(
                    counts, message="every class 0..C-1 needs at least one support example")]):
                probabilities = self.members_probabilities(support, mask, query_features, tf.reduce_min(counts))
            return {"probabilities": probabilities}

        def members_probabilities(support, mask, query, shots):
            episode = {"support": support[None], "support_mask": mask[None], "query": query[None]}

            def variant(ms):
                return lambda: tf.reduce_mean(
                    tf.stack([tf.nn.softmax(tf.cast(m(episode, training=False)[0], tf.float32)) for m in ms]), 0)

            branches = [variant(ms) for _, ms in variants]
            usable = tf.constant(self.thresholds) <= shots
            chosen = tf.reduce_max(tf.where(usable, tf.range(len(branches)), 0))
            return tf.switch_case(chosen, branches) if len(branches) > 1 else branches[0]()

        # Every signature calls this one function, so the members' graphs (variants x members) are
        # traced and saved once instead of once per signature and label dtype (8 copies).
        self.members_probabilities = tf.function(members_probabilities, input_signature=[
            tf.TensorSpec((None, None, d), tf.float32), tf.TensorSpec((None, None), tf.bool),
            tf.TensorSpec((None, d), tf.float32), tf.TensorSpec((), tf.int32)])

        def by_class_id(predict_fn):
            """predict_fn with any class ids: mapped to 0..C-1 in increasing id order, returned too."""
            def predict_ids(support, support_labels, query):
                class_ids = tf.sort(tf.unique(support_labels).y)
                probabilities = predict_fn(support, tf.searchsorted(class_ids, support_labels), query)["probabilities"]
                return {"probabilities": probabilities, "class_ids": class_ids,
                        "predicted_class_ids": tf.gather(class_ids, tf.argmax(probabilities, axis=-1))}
            return predict_ids

        def traced(fn, shape, dtype, kind):
            """(tf.function, {label dtype: concrete function}): traced for int32 and int64 labels."""
            function = tf.function(fn, reduce_retracing=True)
            concrete = {labels: function.get_concrete_function(
                tf.TensorSpec(shape, dtype, name=f"support_{kind}"), tf.TensorSpec((None,), labels, name="support_labels"),
                tf.TensorSpec(shape, dtype, name=f"query_{kind}")) for labels in (tf.int32, tf.int64)}
            return function, concrete

        self.serve, serve = traced(predict, (None, d), tf.float32, "features")
        self.class_ids, class_ids = traced(by_class_id(predict), (None, d), tf.float32, "features")
        self._signatures = {"serving_default": serve[tf.int32], "serving_int64": serve[tf.int64],
                            "class_ids": class_ids[tf.int64]}
        self.images = None
        if backbone is not None:
            # The image variant: the backbone that produced the features embeds the images in-graph.
            self.backbone_variables = list(backbone.inference_variables())
            image_spec = (None,) + tuple(backbone.image_shape)
            expected = tf.constant(backbone.image_shape, tf.int32)
            feature_width = int(backbone.embed(tf.zeros((1,) + tuple(backbone.image_shape))).shape[-1])

            def embed(images, name):
                shape = tf.shape(images)
                ok = tf.logical_and(tf.equal(tf.size(shape), 4),
                                    tf.reduce_all(tf.equal(tf.pad(shape, [[0, 4]])[1:4], expected)))
                check = tf.debugging.Assert(ok, [f"{name} must be uint8 [n, {', '.join(map(str, backbone.image_shape))}]",
                                                 "got shape", shape])
                with tf.control_dependencies([check]):
                    images = tf.identity(images)
                return self.embed_images(images)

            # Shared by both image signatures and label dtypes: the backbone's graph is saved once.
            self.embed_images = tf.function(
                lambda images: in_chunks(lambda x: backbone.embed(tf.cast(x, tf.float32)), images, feature_width),
                input_signature=[tf.TensorSpec(image_spec, tf.uint8)])

            # uint8 pixels cannot be NaN; the finite check still guards the embedded features.
            def predict_images(support_images, support_labels, query_images):
                return predict(embed(support_images, "support_images"), support_labels,
                               embed(query_images, "query_images"),
                               names=("support_images' features", "query_images' features"))

            self.images, images = traced(predict_images, image_spec, tf.uint8, "images")
            self.images_class_ids, images_class_ids = traced(by_class_id(predict_images), image_spec, tf.uint8,
                                                             "images")
            self._signatures.update(images=images[tf.int32], images_class_ids=images_class_ids[tf.int64])

    def signatures(self):
        """{name: concrete function} for tf.saved_model.save."""
        return dict(self._signatures)


def export_fewshot_predictor(workdir, path, metadata=None):
    """SavedModel few-shot predictor of a finished few-shot run or ensemble (see FewShotPredictorModule)."""
    network = runs.read_network_info(workdir)
    member_dirs = [os.path.join(workdir, m) for m in network.get("ensemble_members", [])] or [workdir]
    snapshots = runs.snapshot_dirs(member_dirs[0])  # the intact ones, {k_train: folder}
    variants, config = [], None
    sources = [(k, lambda d, name=os.path.basename(folder): os.path.join(d, runs.SNAPSHOTS, name))
               for k, folder in sorted(snapshots.items())]
    if not sources or sources[0][0] > 1:
        sources.insert(0, (0, runs.verified_best))
    for threshold, folder in sources:
        members = []
        for d in member_dirs:
            method, config = runs.restore_fewshot_method(d)
            method.load_weights(os.path.join(folder(d), runs.WEIGHTS))
            members.append(method)
        variants.append((threshold, members))
    backbone, backbone_dir = None, None
    features_meta = os.path.join(runs.fewshot_features_dir(member_dirs[0], config), "features.json")
    if os.path.exists(features_meta):
        source = runs.read_run_json(features_meta)
        if os.path.exists(os.path.join(source.get("workdir", ""), runs.NETWORK)):
            backbone, _, _, _ = restore_network(source["workdir"], source["checkpoint"])
            backbone_dir = source["workdir"]
            if int(backbone.embed(tf.zeros((1,) + tuple(backbone.image_shape))).shape[-1]) != network["feature_dim"]:
                backbone, backbone_dir = None, None  # not the extractor of these features
    module = FewShotPredictorModule(variants, network["feature_dim"], backbone)
    signatures = module.signatures()
    variables = module.prediction_variables + getattr(module, "backbone_variables", [])
    needed = runs.variables_nbytes(variables) + (8 << 20)  # refused up front when it cannot fit
    with io.atomic_directory(path, needed_bytes=needed) as tmp:
        tf.saved_model.save(module, tmp, signatures=signatures)
        meta = dict(metadata or {})
        meta.update({"task": "fewshot", "method": network["method"], "feature_dim": network["feature_dim"],
                     "ensemble_members": len(member_dirs), "variants_by_min_shots": list(module.thresholds),
                     "signatures": sorted(signatures), "backbone_workdir": backbone_dir,
                     "git_revision": io.git_revision(),
                     "inputs": "support_features [n, d] float32, support_labels [n] int32 in 0..C-1 "
                               "(serving_int64: int64; class_ids: int64, any ids), query_features [m, d] float32; "
                               "images*: support_images / query_images uint8 [n, H, W, C] instead of features",
                     "outputs": "probabilities [m, C] (class_ids*: also class_ids [C], predicted_class_ids [m])"})
        io.write_json_atomic(os.path.join(tmp, METADATA_FILE), meta)
    return path, module


FEWSHOT_CHECK_SCRIPT = r"""
import sys
import numpy as np, tensorflow as tf
path, data = sys.argv[1], sys.argv[2]
arrays = np.load(data)
loaded = tf.saved_model.load(path)
out = loaded.signatures["serving_default"](support_features=tf.constant(arrays["s"]),
                                           support_labels=tf.constant(arrays["l"]),
                                           query_features=tf.constant(arrays["q"]))
np.save(data + ".out.npy", out["probabilities"].numpy())
"""


def check_fewshot_export(module, path, requests, atol=1e-5):
    """Each request (support, labels, query) answered by the in-memory module and by the export
    reloaded in a fresh process; returns the max |difference| (raises above ``atol``)."""
    import subprocess
    import sys
    import tempfile

    import numpy as np

    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for i, (s, l, q) in enumerate(requests):
            expected = module.serve(tf.constant(s, tf.float32), tf.constant(l, tf.int32),
                                    tf.constant(q, tf.float32))["probabilities"].numpy()
            data = os.path.join(tmp, f"request{i}.npz")
            np.savez(data, s=np.asarray(s, np.float32), l=np.asarray(l, np.int32), q=np.asarray(q, np.float32))
            proc = subprocess.run([sys.executable, "-c", FEWSHOT_CHECK_SCRIPT, path, data], capture_output=True,
                                  text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
            if proc.returncode != 0:
                raise RuntimeError(f"reloading {path} in a fresh process failed:\n{proc.stderr[-2000:]}")
            worst = max(worst, float(np.max(np.abs(np.load(data + ".out.npy") - expected))))
    if not worst <= atol:
        raise RuntimeError(f"export {path} disagrees with the checkpoint: max |diff| = {worst:.3g} > {atol}")
    return worst


def fewshot_check_requests(features, labels, shots=(1, 5), n_way=5, n_query=3, seed=0):
    """Requests (support, labels, query) drawn from real features, one per shot count."""
    import numpy as np

    rng = np.random.default_rng(seed)
    counts = {c: int((labels == c).sum()) for c in np.unique(labels)}
    requests = []
    for k in shots:
        classes = rng.choice([c for c, n in counts.items() if n >= k + n_query], n_way, replace=False)
        picked = [rng.choice(np.flatnonzero(labels == c), k + n_query, replace=False) for c in classes]
        support = np.concatenate([p[:k] for p in picked])
        query = np.concatenate([p[k:] for p in picked])
        requests.append((features[support], np.repeat(np.arange(n_way), k).astype(np.int32), features[query]))
    return requests
