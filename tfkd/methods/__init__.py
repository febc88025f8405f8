"""Training procedures, each a registered keras.Model subclass with its own train_step.

Layer: above data, models and losses; imports nothing from the run folder (tfkd.runs), export,
teachers or the drivers. A teacher-student method takes an already-loaded teacher object
(tfkd.teachers builds it; the driver injects it)."""
import keras

from tfkd import optimizers
from tfkd.methods import distill, fewshot, metadistiller, multi_exit, teacher_student  # noqa: F401  (registers the methods)
from tfkd.methods.base import EpochPhases, MultiExitMethod, resolve_method_config
from tfkd.methods.distill import Distill, ProgressiveDistill
from tfkd.methods.fewshot import CosinePrototypes, EpisodicMethod, GeneratorAugmented
from tfkd.methods.metadistiller import MetaDistiller
from tfkd.methods.multi_exit import Baseline, DeeplySupervised, SelfDistillation
from tfkd.methods.teacher_student import AttentionTransfer, DeepMutualLearning, FitNet, KnowledgeDistillation
from tfkd.registry import METHODS


def build_method(method_name, network, method_config, **kwargs):
    """Instantiates method ``method_name`` around ``network`` with its resolved config; ``kwargs``
    override config entries (e.g. ``teacher=`` a loaded teacher in place of its path)."""
    cls = METHODS.get(method_name)
    return cls(network, **{**dict(method_config), **kwargs})


def learning_rate(train_cfg, steps):
    """config.train's learning rate (a float or a schedule of the optimizer step)."""
    lr = train_cfg.learning_rate
    if train_cfg.lr_schedule == "constant":
        return lr
    if train_cfg.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(lr, decay_steps=train_cfg.epochs * steps)
    bounds = [int(b) * steps for b in train_cfg.lr_boundaries if b < train_cfg.epochs]
    values = [lr * train_cfg.lr_decay ** i for i in range(len(bounds) + 1)]
    return keras.optimizers.schedules.PiecewiseConstantDecay(bounds, values) if bounds else lr


def build_optimizer(train_cfg, steps):
    """The optimizer of config.train for ``steps`` steps per epoch."""
    lr = learning_rate(train_cfg, steps)
    # Weight decay is coupled (added to the gradients by the method, as PyTorch's SGD does in the
    # papers' code), not the optimizers' decoupled weight_decay.
    if train_cfg.optimizer == "sgd":
        return optimizers.SGD(lr, momentum=train_cfg.momentum, nesterov=train_cfg.nesterov)
    return optimizers.Adam(lr)


def build_fewshot_method(config, feature_dim, strategy, steps):
    """The episodic method of ``config`` over ``feature_dim``-d features, built and compiled in
    ``strategy``'s scope (optimizer variables included, so checkpoints load into it)."""
    cls = METHODS.get(config.method)
    with strategy.scope():
        method = cls(feature_dim, **dict(config[config.method]), weight_decay=config.train.weight_decay,
                     name=config.method)
        method.build_from_dim(batch=config.fewshot.episodes_per_batch)
        method.compile(optimizer=build_optimizer(config.train, steps), jit_compile=config.train.jit_compile)
        method.optimizer.build(method.trainable_variables)
    return method


__all__ = ["METHODS", "AttentionTransfer", "Baseline", "CosinePrototypes", "DeepMutualLearning", "DeeplySupervised",
           "Distill", "EpisodicMethod", "EpochPhases", "FitNet", "GeneratorAugmented", "KnowledgeDistillation",
           "MetaDistiller", "MultiExitMethod", "ProgressiveDistill", "SelfDistillation",
           "build_fewshot_method", "build_method", "build_optimizer",
           "learning_rate", "resolve_method_config"]
