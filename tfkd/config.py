"""Experiment configuration: the base ConfigDict every file in ``configs/`` starts from, and its
validation.

The base config is locked: a config file or a ``--config.a.b=v`` flag that names a field that
does not exist fails at once with ml_collections' "Key ... does not exist" error. Each registered
method has a section named after it (``config.self_distill.alpha``) holding its own knobs
(tfkd.method_config).

Needs no TensorFlow, so a config mistake is reported before seconds of imports; the one check that
needs the backbones' registry (``model.arch``) is tfkd.train.resolve's.
Layer: just above the base (errors, io, method_config); below the run folder and the drivers.
"""
import importlib.util
import json
import os

import ml_collections

from tfkd.errors import ConfigError
from tfkd.io import SEED_LIMIT, check_seed  # noqa: F401  (check_seed is part of this module's API)
from tfkd.method_config import METHOD_CONFIGS, resolve_method_config


def base_config():
    c = ml_collections.ConfigDict()
    c.method = "self_distill"
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.name = "fashion_mnist"  # a local dataset (fashion_mnist, glyphs) or any TFDS name
    c.data.data_dir = ""  # '' = the dataset's default location
    c.data.val_fraction = 0.1  # carved from train, stratified, deterministic (split_seed)
    c.data.split_seed = 0
    c.data.max_train_examples = 0  # 0 = all; >0 = a deterministic class-balanced subset
    c.data.max_eval_examples = 0
    c.data.augment = "auto"  # auto | none | crop | crop_flip | rrc | rrc_flip
    c.data.allow_download = False  # TFDS: fail fast on unprepared datasets unless True
    c.data.in_memory = True  # TFDS: load splits into memory (exact resume); False streams them
    c.data.train_split = "train"
    c.data.test_split = ""  # '' = 'test' if the dataset has it, else 'validation'
    c.data.image_size = 0  # streaming TFDS only: model input size (0 = 224)
    # Few-shot backbones: train on one class split only (glyphs: configs/splits/glyphs_alphabets.json).
    c.data.class_split = ""  # '' = all classes; base | validation | novel
    c.data.class_split_file = ""  # '' = the dataset's default split file
    c.data.mean = ml_collections.config_dict.placeholder(tuple)  # None = from train data
    c.data.std = ml_collections.config_dict.placeholder(tuple)

    c.model = ml_collections.ConfigDict()
    c.model.arch = "resnet18"
    c.model.width = 1.0  # multiplier on the stage widths (64, 128, 256, 512)
    c.model.stem = "auto"  # auto (cifar below 128 px, imagenet above) | cifar | imagenet
    # Cross-replica BatchNorm under tf.distribute (no effect on one device): a multi-replica step
    # then equals a one-device step on the global batch. Turn off to save all-reduces.
    c.model.sync_bn = True
    # model.arch=keras_application: a functional model split at named layers (tfkd/models/byo.py).
    c.model.application = ""  # a keras.applications constructor, e.g. MobileNetV2
    c.model.builder = ""  # or "package.module:function" returning your functional model
    c.model.stage_layers = ()  # layer names of the stage outputs, in order
    c.model.head = "linear"  # linear | cosine (few-shot "cosine" pre-trained features, Chen et al. 2019)
    # The exits' design: auto (the backbone's own: ResNets' residual bottleneck blocks, VGG's pooling)
    # | bottleneck | conv_chain (1x1, a 3x3 stride-2 conv per later stage, 1x1; not residual) | pool.
    c.model.exit_head = "auto"

    # Few-shot backbones (data.class_split=base): each epoch, the validation *classes* are embedded
    # and scored on seeded N-way k-shot prototype episodes -> val_fewshot_accuracy, which
    # train.select_metric can select on (the few-shot paper's "select on validation classes").
    c.fewshot_val = ml_collections.ConfigDict()
    c.fewshot_val.episodes = 0  # 0 = off
    c.fewshot_val.n_way = 5
    c.fewshot_val.k_shot = 1
    c.fewshot_val.n_query = 5
    c.fewshot_val.max_images = 3000  # validation-class images embedded per epoch (class-balanced)

    c.train = ml_collections.ConfigDict()
    c.train.epochs = 200
    c.train.batch_size = 128  # global batch, split over replicas
    c.train.eval_batch_size = 256
    c.train.optimizer = "sgd"  # sgd | adam
    c.train.learning_rate = 0.1  # for train.batch_size; scale it yourself if you change the batch
    c.train.momentum = 0.9
    c.train.nesterov = False
    c.train.weight_decay = 5e-4  # coupled (PyTorch-style) L2 on all trainable weights
    c.train.lr_schedule = "step"  # step | cosine | constant
    c.train.lr_boundaries = (80, 140)  # epochs, for 'step'
    c.train.lr_decay = 0.1
    c.train.select_metric = "val_final_accuracy"  # validation metric that picks the best checkpoint
    # False: no test-set evaluation at the end (bin/tune's trials: a search never sees test).
    c.train.evaluate_test = True
    c.train.keep_checkpoints = 2
    c.train.mixed_precision = False
    c.train.jit_compile = False
    # TensorFlow's thread pools (0 = TensorFlow's choice, or TF_NUM_INTRAOP_THREADS /
    # TF_NUM_INTEROP_THREADS): threads that split one op, and ops run side by side. Fixed when
    # TensorFlow's runtime starts, so bin/train sets them first. Small networks on few cores run
    # faster with intra_op_threads=1 (docs/benchmarks.md, step-cost tables); big ops want the default.
    c.train.intra_op_threads = 0
    c.train.inter_op_threads = 0
    c.train.steps_per_execution = 1
    c.train.verbose = 1  # Keras progress bar: 1 bar (one line per epoch off a terminal), 2 one line per epoch, 0 silent

    # Episodic few-shot methods (cosine, gen, ...; tfkd/train_fewshot.py): meta-trained on base-class
    # feature episodes, selected on validation-class episodes, tested on novel-class episodes.
    # The train section's optimizer, learning_rate, lr_schedule and epochs apply to them too.
    c.fewshot = ml_collections.ConfigDict()
    c.fewshot.features_dir = ""  # folder with base / validation / novel .h5 or .npz (bin/extract_features)
    c.fewshot.n_way = 5  # meta-training episodes
    c.fewshot.k_shot = 1
    c.fewshot.k_max = 0  # support examples drawn per class (0 = k_shot); the mask keeps k_shot
    c.fewshot.n_query = 10
    c.fewshot.episodes_per_epoch = 500
    c.fewshot.episodes_per_batch = 1  # episodes per step (split over replicas under tf.distribute)
    c.fewshot.val_episodes = 300  # validation-class episodes per epoch (model selection)
    # Ways of those episodes: 0 = n_way; capped at the number of validation classes, so a large
    # value (e.g. 10000) selects on the all-way protocol.
    c.fewshot.val_way = 0
    # False: no novel-class evaluation at the end (bin/tune's trials: a search never sees test).
    c.fewshot.evaluate_novel = True
    c.fewshot.eval_seed = 2020  # seed of the validation and test episodes: shared by every method
    c.fewshot.test_episodes = 1000
    c.fewshot.test_way = 5
    c.fewshot.test_shots = (1, 5)
    c.fewshot.test_queries = 10
    c.fewshot.within_group_way = 20  # also N-way episodes within one group (alphabet); 0 = off
    c.fewshot.all_way_shots = (1, 2, 5, 10, 20)  # () = skip the all-way protocol
    c.fewshot.all_way_draws = 5
    c.fewshot.all_way_queries = 5
    # Pre-trained teacher embeddings (dist / progressive with teacher_embedding_units) are kept in
    # this folder, relative to features_dir, and reused by later runs with the same inputs (a search's
    # trials share one); "" = train every time.
    c.fewshot.teacher_cache = "teacher_cache"

    # bin/tune (tfkd/tuning.py): Keras Tuner searches; every trial is a bin/train run.
    c.tune = ml_collections.ConfigDict()
    c.tune.tuner = "random"  # random | bayesian | hyperband (budget = train.epochs)
    c.tune.max_trials = 10
    c.tune.space = ()  # "field=kind:args" strings (float|log|int|choice); () = the method's default space
    c.tune.objective = ""  # '' = train.select_metric (few-shot: val_accuracy)
    c.tune.max_consecutive_failed_trials = 3
    c.tune.hyperband_factor = 3

    c.export = ml_collections.ConfigDict()
    c.export.enabled = True
    c.export.top_k = 5

    for name in METHOD_CONFIGS.names():
        c[name] = METHOD_CONFIGS.get(name).default_config()
    c.lock()
    return c


def sibling_config(config_file, name):
    """``get_config()`` of ``<name>.py`` in the folder of ``config_file``: a config file built on
    another (call it with ``__file__``). Loaded by path, as ``--config`` loads it: config files are
    not a package."""
    path = os.path.join(os.path.dirname(os.path.abspath(config_file)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def resolve(config, method=None, seed=None):
    """Applies flag overrides (--method, --seed), validates, and returns a new resolved config."""
    config = ml_collections.ConfigDict(config.to_dict())  # an unlocked copy
    if method:
        config.method = method
    if seed is not None:
        check_seed(seed, "--seed")
        config.seed = int(seed)
    validate(config)
    # Only the chosen method's section is kept: it is what the run used.
    method_cfg = resolve_method_config(METHOD_CONFIGS.get(config.method), config.get(config.method), config.method)
    for name in METHOD_CONFIGS.names():
        if name in config and name != config.method:
            del config[name]
    config[config.method] = method_cfg
    _absolute_paths(config)
    return config


def _absolute_paths(config):
    """Relative paths are made absolute, so config.json means the same files wherever bin/export,
    bin/evaluate or bin/extract_features run later (URLs such as gs://... are kept as given)."""
    fields = [(config.data, "data_dir"), (config.data, "class_split_file"), (config.fewshot, "features_dir"),
              (config[config.method], "teacher")]
    for section, key in fields:
        value = section.get(key)
        if isinstance(value, str) and value and "://" not in value:
            section[key] = os.path.abspath(os.path.expanduser(value))


def config_json(config):
    """The config as plain JSON values (what config.json holds and is compared against)."""
    return json.loads(config.to_json_best_effort(sort_keys=True))


def default_config_json():
    """config_json of the default config (every method's section): what a field that a newer tfkd
    added means for a run folder written before it existed (a new field's default keeps the old
    behaviour, so resuming such a run with the default is not a change of config)."""
    return config_json(base_config())


OUTPUT_METRICS = ("final", "ensemble", "exit_1", "exit_2", "exit_3")


def _seed_fields(node, prefix=""):
    for key, value in node.items():
        if isinstance(value, ml_collections.ConfigDict):
            yield from _seed_fields(value, f"{prefix}{key}.")
        elif key == "seed" or key.endswith("_seed"):
            yield prefix + key, value


def validate(config):
    """Checks values that the lock cannot (names, ranges); raises ConfigError naming the field."""
    def fail(field, expected):
        raise ConfigError(f"config.{field}={_get(config, field)!r}: expected {expected}")

    for field, value in _seed_fields(config):
        check_seed(value, f"config.{field}")
    if config.method not in METHOD_CONFIGS:
        fail("method", f"one of {METHOD_CONFIGS.names()}")
    # config.model.arch is checked by tfkd.train.resolve: the backbones register with Keras imported.
    if config.model.head not in ("linear", "cosine"):
        fail("model.head", "'linear' or 'cosine'")
    if config.model.exit_head not in ("auto", "bottleneck", "conv_chain", "pool"):
        fail("model.exit_head", "'auto', 'bottleneck', 'conv_chain' or 'pool'")
    if config.model.stem not in ("auto", "cifar", "imagenet"):
        fail("model.stem", "'auto', 'cifar' or 'imagenet'")
    if not config.model.width > 0:
        fail("model.width", "a positive multiplier")
    if not (isinstance(config.train.epochs, int) and config.train.epochs > 0):
        fail("train.epochs", "a positive integer")
    if not (isinstance(config.train.batch_size, int) and config.train.batch_size > 0):
        fail("train.batch_size", "a positive integer")
    if not config.train.learning_rate > 0:
        fail("train.learning_rate", "a positive number")
    if config.train.optimizer not in ("sgd", "adam"):
        fail("train.optimizer", "'sgd' or 'adam'")
    if config.train.lr_schedule not in ("step", "cosine", "constant"):
        fail("train.lr_schedule", "'step', 'cosine' or 'constant'")
    if config.train.weight_decay < 0:
        fail("train.weight_decay", "a non-negative number")
    if list(config.train.lr_boundaries) != sorted(config.train.lr_boundaries):
        fail("train.lr_boundaries", "increasing epochs")
    metric = config.train.select_metric
    if metric == "val_fewshot_accuracy":
        if not (config.data.class_split and config.fewshot_val.episodes > 0):
            fail("train.select_metric", "a val_<head>_accuracy metric, or val_fewshot_accuracy together with "
                 "data.class_split and fewshot_val.episodes > 0")
    elif not (metric.startswith("val_") and metric.endswith("_accuracy") and metric[4:-9] in OUTPUT_METRICS):
        fail("train.select_metric", f"val_<head>_accuracy with head in {OUTPUT_METRICS}, or "
             f"val_fewshot_accuracy (validation only)")
    if config.fewshot_val.episodes < 0:
        fail("fewshot_val.episodes", "0 (off) or a positive number of episodes")
    if config.fewshot_val.episodes and not config.data.class_split:
        fail("fewshot_val.episodes", "0 unless data.class_split is set (validation classes must be held out)")
    if not 0.0 <= config.data.val_fraction < 1.0:
        fail("data.val_fraction", "a fraction in [0, 1)")
    if config.data.val_fraction == 0.0:
        fail("data.val_fraction", "> 0: model selection needs a validation split carved from train")
    if config.data.max_train_examples < 0 or config.data.max_eval_examples < 0:
        fail("data.max_train_examples", "0 (all) or a positive count")
    if (config.data.mean is None) != (config.data.std is None):
        fail("data.mean", "data.mean and data.std set together")
    if config.export.top_k < 1:
        fail("export.top_k", "a positive integer")
    if config.train.keep_checkpoints < 1:
        fail("train.keep_checkpoints", "at least 1")
    for field in ("intra_op_threads", "inter_op_threads"):
        if not (isinstance(config.train[field], int) and config.train[field] >= 0):
            fail(f"train.{field}", "0 (TensorFlow's choice) or a positive number of threads")
    if METHOD_CONFIGS.get(config.method).task == "fewshot":
        validate_fewshot(config, fail)


def validate_fewshot(config, fail):
    f = config.fewshot
    if not f.features_dir:
        fail("fewshot.features_dir", "a folder with base / validation / novel feature files "
             "(written by bin/extract_features)")
    for field in ("n_way", "test_way"):
        if f[field] < 2:
            fail(f"fewshot.{field}", "at least 2 classes per episode")
    for field in ("k_shot", "n_query", "episodes_per_epoch", "episodes_per_batch", "val_episodes",
                  "test_episodes", "test_queries", "all_way_draws", "all_way_queries"):
        if f[field] < 1:
            fail(f"fewshot.{field}", "a positive integer")
    if f.k_max and f.k_max < f.k_shot:
        fail("fewshot.k_max", f"0 or >= fewshot.k_shot={f.k_shot}")
    if not f.test_shots or min(f.test_shots) < 1:
        fail("fewshot.test_shots", "a non-empty tuple of positive shot counts")
    if f.all_way_shots and min(f.all_way_shots) < 1:
        fail("fewshot.all_way_shots", "() or positive shot counts")
    if f.within_group_way == 1 or f.within_group_way < 0:
        fail("fewshot.within_group_way", "0 (off) or at least 2")
    if f.val_way == 1 or f.val_way < 0:
        fail("fewshot.val_way", "0 (= fewshot.n_way) or at least 2")


def _get(config, dotted):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node
