"""Every method's config section (``config.<method name>``): its knobs, their defaults and their
range checks, registered by the method's name in ``METHOD_CONFIGS``.

Kept apart from the method classes (tfkd.methods, which need Keras) so that reading and checking a
config needs no TensorFlow: ``bin/train --config.self_distill.alpha=1.5`` fails in a fraction of a
second instead of after seconds of imports. Each method class points at its section
(``config_section``) and its ``default_config`` / ``check_config`` are the section's.

Layer: base (imports only ml_collections, errors and the registry).
"""
import ml_collections

from tfkd.errors import ConfigError
from tfkd.registry import METHOD_CONFIGS

CLASSIFICATION, FEWSHOT = "classification", "fewshot"


class MethodConfig:
    """A section with no knobs. ``task`` says which driver trains the method: ``classification``
    (tfkd.train, on images) or ``fewshot`` (tfkd.train_fewshot, on feature files)."""

    task = CLASSIFICATION
    needs_teacher = False  # a frozen teacher named by the section's ``teacher`` field

    @classmethod
    def default_config(cls):
        return ml_collections.ConfigDict()

    @classmethod
    def check_config(cls, cfg):
        """Raises ConfigError for out-of-range knobs (called before any data is loaded)."""


def resolve_method_config(section, overrides, method_name):
    """Defaults of ``section`` (a MethodConfig or a method class) updated by ``config.<method_name>``;
    an unknown field or an out-of-range value is a ConfigError."""
    cfg = section.default_config()
    if overrides is None:
        return cfg
    for key, value in overrides.items():
        if key not in cfg:
            raise ConfigError(f"config.{method_name}.{key} is not a field of method {method_name!r}; "
                              f"its fields are: {', '.join(sorted(cfg.keys())) or '(none)'}")
        try:
            cfg[key] = value
        except TypeError as e:
            raise ConfigError(f"config.{method_name}.{key}={value!r}: {e}") from None
    section.check_config(cfg)
    return cfg


def _check_all(section_name, checks, cfg):
    """``checks``: (holds, field, expected) triples; the first that fails is the error."""
    for ok, field, expected in checks:
        if not ok:
            raise ConfigError(f"config.{section_name}.{field}={cfg[field]!r}: expected {expected}")


# ------------------------------------------------------------------ self-boosting (MetaDistiller paper)

METHOD_CONFIGS.register("baseline")(MethodConfig)
METHOD_CONFIGS.register("dsn")(MethodConfig)


@METHOD_CONFIGS.register("self_distill")
class SelfDistillationConfig(MethodConfig):
    @classmethod
    def default_config(cls):
        return ml_collections.ConfigDict({"alpha": 0.5, "tau": 1.0, "hint_weight": 0.0})

    @classmethod
    def check_config(cls, cfg):
        if not 0.0 <= cfg.alpha <= 1.0:
            raise ConfigError(f"config.self_distill.alpha must be in [0, 1], got {cfg.alpha}")
        if cfg.tau <= 0:
            raise ConfigError(f"config.self_distill.tau must be > 0, got {cfg.tau}")
        if cfg.hint_weight < 0:
            raise ConfigError(f"config.self_distill.hint_weight must be >= 0, got {cfg.hint_weight}")


@METHOD_CONFIGS.register("metadistiller")
class MetaDistillerConfig(MethodConfig):
    @classmethod
    def default_config(cls):
        return ml_collections.ConfigDict({
            "alpha": 0.5,
            "tau": 1.0,
            "meta_every_epochs": 5,  # M
            "meta_every_steps": 1,  # within a meta epoch: a meta step after every n-th main step
            "generator_lr": 1e-3,  # Adam
            "fusion_channels": 0,  # 0 = the main model's first-stage width
            # BatchNorm + ReLU after each 3x3 fusion conv of the label generator (tfkd's addition);
            # False = Eq. 5 as written: linear 1x1 / 3x3 convolutions with biases.
            "fusion_norm": True,
            "outer_outputs": "all",  # all | final
            # In a meta step, train on the D_train batch with the lookahead's own gradient instead
            # of a separate main step on a batch of D (one forward/backward fewer; see
            # tfkd/methods/metadistiller.py). With meta_every_steps = n, every n-th update of a meta
            # epoch is such a shared step.
            "share_inner_gradient": False,
            # > 0: the lookahead uses only the first meta_batch_size examples of each D_train / D_test batch
            # (global; split evenly over replicas), a cheaper meta step; with share_inner_gradient the
            # D_train batch is the real update's, so only the D_test batch is cut. 0 = the whole batches.
            "meta_batch_size": 0,
        })

    @classmethod
    def check_config(cls, cfg):
        _check_all("metadistiller", [
            (0.0 <= cfg.alpha <= 1.0, "alpha", "in [0, 1]"), (cfg.tau > 0, "tau", "> 0"),
            (cfg.meta_every_epochs >= 1, "meta_every_epochs", ">= 1"),
            (cfg.meta_every_steps >= 1, "meta_every_steps", ">= 1"),
            (cfg.generator_lr > 0, "generator_lr", "> 0"),
            (cfg.fusion_channels >= 0, "fusion_channels", ">= 0"),
            (isinstance(cfg.fusion_norm, bool), "fusion_norm", "True or False"),
            (cfg.outer_outputs in ("all", "final"), "outer_outputs", "'all' or 'final'"),
            (cfg.meta_batch_size >= 0, "meta_batch_size", ">= 0 (0 = the whole batch)")], cfg)


# ------------------------------------------------------------------ teacher-student baselines

class TeacherStudentConfig(MethodConfig):
    name = ""  # the section's name, for messages
    needs_teacher = True

    @classmethod
    def default_config(cls):
        return ml_collections.ConfigDict({"teacher": ""})

    @classmethod
    def check_config(cls, cfg):
        if cls.needs_teacher and not cfg.teacher:
            raise ConfigError(f"config.{cls.name}.teacher: expected a finished bin/train run folder or a "
                              f"SavedModel from bin/export (the frozen teacher)")


@METHOD_CONFIGS.register("kd")
class KnowledgeDistillationConfig(TeacherStudentConfig):
    name = "kd"

    @classmethod
    def default_config(cls):
        cfg = super().default_config()
        cfg.alpha = 0.9
        cfg.temperature = 4.0
        return cfg

    @classmethod
    def check_config(cls, cfg):
        super().check_config(cfg)
        if not 0.0 <= cfg.alpha <= 1.0:
            raise ConfigError(f"config.kd.alpha={cfg.alpha}: expected a weight in [0, 1]")
        if not cfg.temperature > 0:
            raise ConfigError(f"config.kd.temperature={cfg.temperature}: expected a positive temperature")


@METHOD_CONFIGS.register("fitnet")
class FitNetConfig(TeacherStudentConfig):
    name = "fitnet"

    @classmethod
    def default_config(cls):
        cfg = super().default_config()
        cfg.beta = 100.0
        cfg.student_stage = 2  # the "guided" stage (1-based)
        cfg.teacher_stage = 2  # the "hint" stage (1-based)
        return cfg

    @classmethod
    def check_config(cls, cfg):
        super().check_config(cfg)
        if cfg.beta < 0:
            raise ConfigError(f"config.fitnet.beta={cfg.beta}: expected a non-negative weight")
        if cfg.student_stage < 1 or cfg.teacher_stage < 1:
            raise ConfigError("config.fitnet.student_stage / teacher_stage: expected 1-based stage numbers")


@METHOD_CONFIGS.register("at")
class AttentionTransferConfig(TeacherStudentConfig):
    name = "at"

    @classmethod
    def default_config(cls):
        cfg = super().default_config()
        cfg.beta = 1000.0
        cfg.p = 2.0
        cfg.pairs = 0  # stage pairs, counted from the last stage back; 0 = as many as both networks have
        return cfg

    @classmethod
    def check_config(cls, cfg):
        super().check_config(cfg)
        if cfg.beta < 0 or cfg.p <= 0:
            raise ConfigError(f"config.at: beta={cfg.beta} must be >= 0 and p={cfg.p} > 0")


@METHOD_CONFIGS.register("dml")
class DeepMutualLearningConfig(TeacherStudentConfig):
    """Two students teach each other: no teacher, no knobs."""

    name = "dml"
    needs_teacher = False

    @classmethod
    def default_config(cls):
        return ml_collections.ConfigDict()


# ------------------------------------------------------------------ few-shot (progressive distillation paper)

class EpisodicConfig(MethodConfig):
    task = FEWSHOT

    @classmethod
    def default_config(cls):
        # Appendix A: no embedding, or a 2-layer FC; scale initialised at 75 (150 on ImageNet).
        return ml_collections.ConfigDict({"embedding_units": (), "scale_init": 75.0})

    @classmethod
    def check_config(cls, cfg):
        if any(int(u) <= 0 for u in cfg.embedding_units):
            raise ConfigError(f"embedding_units={tuple(cfg.embedding_units)}: expected positive layer widths")
        if not cfg.scale_init > 0:
            raise ConfigError(f"scale_init={cfg.scale_init}: expected a positive scale")


METHOD_CONFIGS.register("cosine")(EpisodicConfig)


@METHOD_CONFIGS.register("gen")
class GeneratorAugmentedConfig(EpisodicConfig):
    @classmethod
    def default_config(cls):
        cfg = super().default_config()
        cfg.num_generated = 4  # generated features per class and episode
        cfg.generator_hidden = (512,)
        cfg.noise_dim = 0  # 0 = feature dimension
        cfg.seed = 0
        return cfg

    @classmethod
    def check_config(cls, cfg):
        super().check_config(cfg)
        if cfg.num_generated < 1:
            raise ConfigError(f"num_generated={cfg.num_generated}: expected at least 1 generated feature per class")
        if any(int(u) <= 0 for u in cfg.generator_hidden):
            raise ConfigError(f"generator_hidden={tuple(cfg.generator_hidden)}: expected positive layer widths")
        if cfg.noise_dim < 0:
            raise ConfigError(f"noise_dim={cfg.noise_dim}: expected 0 (= feature dimension) or a positive size")


@METHOD_CONFIGS.register("dist")
class DistillConfig(GeneratorAugmentedConfig):
    @classmethod
    def default_config(cls):
        cfg = super().default_config()
        cfg.gamma = 5.0  # Eq. 1 trade-off (paper: 5 on miniImageNet, 150 on ImageNet1K)
        cfg.temperature_init = 7.0  # T of Eq. 1
        # The paper: T learned with the student. The loss weighs its soft term by T^2, so the gradient
        # pushes T down, and at a high learning rate to ~0, which switches the term off (docs/benchmarks.md,
        # the MLP-teacher table's last column); False holds T at temperature_init.
        cfg.learn_temperature = True
        cfg.k_teacher = 0  # real examples per class in S_teacher; 0 = every example of the class
        cfg.teacher_seed = 0  # which S_teacher sample (ensemble members use different ones)
        cfg.teacher_scale = 0.0  # cosine scale of the teacher; 0 = scale_init
        # () = none; (d,) = a linear embedding pre-trained on S_teacher (Appendix A, ImageNet); more widths =
        # an MLP (ReLU between layers) like the student's f, for students whose f outgrows a linear teacher
        cfg.teacher_embedding_units = ()
        cfg.teacher_pretrain_steps = 200
        cfg.fill_to = 0  # >0: generate up to this many examples per class in total (at least num_generated)
        cfg.ensemble_size = 1  # independent (teacher, student, generator) triples; prediction = mean probability
        cfg.ensemble_member = -1  # -1 = train every member in turn; i = train member i only (parallel runs)
        return cfg

    @classmethod
    def check_config(cls, cfg):
        super().check_config(cfg)
        if cfg.gamma < 0:
            raise ConfigError(f"gamma={cfg.gamma}: expected a non-negative weight")
        if not cfg.temperature_init > 0:
            raise ConfigError(f"temperature_init={cfg.temperature_init}: expected a positive temperature")
        if cfg.k_teacher < 0:
            raise ConfigError(f"k_teacher={cfg.k_teacher}: expected 0 (all examples) or a positive count")
        if cfg.ensemble_size < 1:
            raise ConfigError(f"ensemble_size={cfg.ensemble_size}: expected at least 1 member")
        if not -1 <= cfg.ensemble_member < cfg.ensemble_size:
            raise ConfigError(f"ensemble_member={cfg.ensemble_member}: expected -1 (all) or 0..{cfg.ensemble_size - 1}")
        if any(int(u) < 1 for u in cfg.teacher_embedding_units):
            raise ConfigError(f"teacher_embedding_units={tuple(cfg.teacher_embedding_units)}: expected positive "
                              f"layer widths, or () for no teacher embedding")


DIRECTIONS = ("weaken", "strengthen")
SCHEDULES = ("log", "linear")


@METHOD_CONFIGS.register("progressive")
class ProgressiveDistillConfig(DistillConfig):
    @classmethod
    def default_config(cls):
        cfg = super().default_config()
        cfg.direction = "weaken"  # weaken (student: k_start -> k_end real shots) | strengthen (teacher)
        cfg.schedule = "log"  # log | linear
        cfg.k_start = 16
        cfg.k_end = 1
        cfg.schedule_steps = 2000  # optimizer steps from k_start to k_end (then held)
        cfg.save_at_k = (16, 8, 4, 2, 1)  # weaken: snapshot the model trained at these k (see KSnapshots)
        return cfg

    @classmethod
    def check_config(cls, cfg):
        super().check_config(cfg)
        if cfg.direction not in DIRECTIONS:
            raise ConfigError(f"direction={cfg.direction!r}: expected one of {DIRECTIONS}")
        if cfg.schedule not in SCHEDULES:
            raise ConfigError(f"schedule={cfg.schedule!r}: expected one of {SCHEDULES}")
        if cfg.k_start < 1 or cfg.k_end < 1:
            raise ConfigError(f"k_start={cfg.k_start}, k_end={cfg.k_end}: expected positive shot counts")
        if cfg.direction == "weaken" and cfg.k_end > cfg.k_start:
            raise ConfigError(f"direction=weaken needs k_end <= k_start (the student loses real shots), got "
                              f"k_start={cfg.k_start}, k_end={cfg.k_end}")
        if cfg.direction == "strengthen" and cfg.k_end < cfg.k_start:
            raise ConfigError(f"direction=strengthen needs k_end >= k_start (the teacher gains real shots), got "
                              f"k_start={cfg.k_start}, k_end={cfg.k_end}")
        if cfg.schedule_steps < 1:
            raise ConfigError(f"schedule_steps={cfg.schedule_steps}: expected a positive number of steps")
        if cfg.direction == "strengthen" and cfg.k_teacher and cfg.k_teacher < cfg.k_end:
            raise ConfigError(f"direction=strengthen: k_teacher={cfg.k_teacher} must be 0 (all) or >= k_end={cfg.k_end}")
