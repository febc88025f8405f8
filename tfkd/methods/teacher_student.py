"""Classic teacher-student methods the MetaDistiller paper compares against (its Table 3), with a
frozen teacher trained by this package (tfkd.teachers), plus deep mutual learning (no teacher).

* ``kd`` (Hinton et al. 2015): (1 - alpha) CE(y, s) + alpha T^2 KL(softmax(t/T) || softmax(s/T)),
  the soft term computed by Keras' own ``keras.distillation.LogitsDistillation``.
  Defaults alpha = 0.9, T = 4 (the values of the CRD benchmark code most comparisons reuse).
* ``fitnet`` (Romero et al. 2015): CE + beta MSE(r(F_s), F_t) between a student stage map,
  through a learned 1x1 conv regressor r, and the teacher's map at the hint stage (resized
  bilinearly when the sizes differ). Single-stage as in the CRD benchmark; beta = 100.
* ``at`` (Zagoruyko & Komodakis 2017): CE + beta/2 sum over stage pairs of the mean squared
  difference of L2-normalised attention maps mean_c(F^2); beta = 1000. Student and teacher stages
  are paired from the last one backwards.
* ``dml`` (Zhang et al. 2018): two students trained together, each with CE + KL(p_other || p_self)
  (the peer a stop-gradient target). The first is the exported model; the second has the same
  architecture and its own initialisation.

Only the student's final head is trained and evaluated (``uses_exits = False``). The teacher is
passed in already loaded (``teacher=``, see ``TeacherStudentMethod``): this module never reads run
folders.
"""
import keras
import tensorflow as tf
from keras import layers

from tfkd import losses, method_config
from tfkd.errors import ConfigError
from tfkd.methods.base import MultiExitMethod, trained_network_variables
from tfkd.registry import METHODS


def student_stages_and_logits(network, images, training):
    stages = network.backbone(images, training=training)
    return stages, network.classifier(network.head_features(stages[-1], training=training))


class TeacherStudentMethod(MultiExitMethod):
    uses_exits = False
    config_section = method_config.TeacherStudentConfig

    def __init__(self, network, teacher=None, **kwargs):
        """``teacher``: a loaded frozen teacher (``tfkd.teachers.Teacher`` or any object with
        ``logits``, ``stages``, ``require_stages`` and ``check_compatible``); the drivers load it
        from ``config.<method>.teacher``."""
        super().__init__(network, **kwargs)
        if self.config_section.needs_teacher:
            if teacher is None or isinstance(teacher, str):
                raise TypeError(f"{type(self).__name__} takes a loaded teacher (tfkd.teachers.Teacher(path, field)), "
                                f"got {teacher!r}")
            # Kept out of Keras' attribute tracking: the teacher is never trained or checkpointed.
            self.__dict__["teacher"] = teacher
            self.teacher.check_compatible(network.num_classes, network.image_shape)


@METHODS.register("kd")
class KnowledgeDistillation(TeacherStudentMethod):
    config_section = method_config.KnowledgeDistillationConfig
    loss_names = ("ce_final", "kd")

    def __init__(self, network, alpha=0.9, temperature=4.0, **kwargs):
        super().__init__(network, **kwargs)
        self.alpha, self.temperature = float(alpha), float(temperature)
        # A KLDivergence *instance*: with the default string "kl_divergence" (Keras 3.15) the loss is
        # applied to the tempered logits as if they were probabilities, without T^2 (see the test).
        # reduction=None: a Keras Loss reducing by itself also divides by the replica count under
        # tf.distribute, and MultiExitMethod already does (loss_for_gradients) -- it would count twice.
        self.distillation = keras.distillation.LogitsDistillation(temperature=self.temperature,
                                                                  loss=keras.losses.KLDivergence(reduction=None))

    def compute_losses(self, images, labels, training):
        logits = self.network.final_logits(images, training=training)
        teacher = self.teacher.logits(images)
        soft = self.distillation.compute_loss(teacher, tf.cast(logits, tf.float32))
        return ({"ce_final": (1.0 - self.alpha) * losses.cross_entropy(labels, logits), "kd": self.alpha * soft},
                {"final": logits})


@METHODS.register("fitnet")
class FitNet(TeacherStudentMethod):
    config_section = method_config.FitNetConfig
    loss_names = ("ce_final", "hint")

    def __init__(self, network, beta=100.0, student_stage=2, teacher_stage=2, **kwargs):
        super().__init__(network, **kwargs)
        self.teacher.require_stages()
        if student_stage > network.num_stages or teacher_stage > self.teacher.network.num_stages:
            raise ConfigError(f"config.fitnet: student_stage={student_stage} / teacher_stage={teacher_stage} beyond "
                              f"the student's {network.num_stages} / teacher's {self.teacher.network.num_stages} stages")
        self.beta, self.student_stage, self.teacher_stage = float(beta), int(student_stage), int(teacher_stage)
        channels = self.teacher.network.stage_channels[self.teacher_stage - 1]
        # Cross-replica BatchNorm like the network's, so a mirrored step equals a one-device step.
        self.regressor = keras.Sequential([layers.Conv2D(channels, 1, use_bias=False, name="conv"),
                                           layers.BatchNormalization(synchronized=getattr(network, "sync_bn", False),
                                                                     name="bn")], name="regressor")

    def build(self, input_shape=None):
        super().build(input_shape)
        if not self.regressor.built:
            stages = self.network.backbone(tf.zeros((1,) + tuple(self.network.image_shape)), training=False)
            self.regressor(stages[self.student_stage - 1], training=False)

    def update_variables(self):
        return super().update_variables() + self.regressor.trainable_variables

    def compute_losses(self, images, labels, training):
        stages, logits = student_stages_and_logits(self.network, images, training)
        target = self.teacher.stages(images)[self.teacher_stage - 1]
        guided = self.regressor(stages[self.student_stage - 1], training=training)
        if guided.shape[1:3] != target.shape[1:3]:
            guided = tf.image.resize(guided, target.shape[1:3], method="bilinear")
        hint = losses.feature_hint_loss(guided, target)
        return {"ce_final": losses.cross_entropy(labels, logits), "hint": self.beta * hint}, {"final": logits}


def attention_map(feature_map, p=2):
    """Zagoruyko & Komodakis: mean over channels of |F|^p, flattened and L2-normalised."""
    a = tf.reduce_mean(tf.pow(tf.abs(tf.cast(feature_map, tf.float32)), p), axis=-1)
    return tf.math.l2_normalize(tf.reshape(a, (tf.shape(a)[0], -1)), axis=-1), a


def attention_loss(student_map, teacher_map, p=2):
    """Mean squared difference of the normalised attention maps (student resized to the teacher)."""
    _, a_s = attention_map(student_map, p)
    if student_map.shape[1:3] != teacher_map.shape[1:3]:
        a_s = tf.image.resize(a_s[..., None], teacher_map.shape[1:3], method="bilinear")[..., 0]
    s = tf.math.l2_normalize(tf.reshape(a_s, (tf.shape(a_s)[0], -1)), axis=-1)
    t, _ = attention_map(teacher_map, p)
    return tf.reduce_mean(tf.square(s - tf.stop_gradient(t)))


@METHODS.register("at")
class AttentionTransfer(TeacherStudentMethod):
    config_section = method_config.AttentionTransferConfig
    loss_names = ("ce_final", "attention")

    def __init__(self, network, beta=1000.0, p=2.0, pairs=0, **kwargs):
        super().__init__(network, **kwargs)
        self.teacher.require_stages()
        self.beta, self.p, self.pairs = float(beta), float(p), int(pairs)

    def compute_losses(self, images, labels, training):
        stages, logits = student_stages_and_logits(self.network, images, training)
        teacher = self.teacher.stages(images)
        pairs = list(zip(stages[::-1], teacher[::-1]))  # from the last stage backwards
        if self.pairs:
            pairs = pairs[: self.pairs]
        at = tf.add_n([attention_loss(s, t, self.p) for s, t in pairs])
        return ({"ce_final": losses.cross_entropy(labels, logits), "attention": self.beta / 2.0 * at},
                {"final": logits})


@METHODS.register("dml")
class DeepMutualLearning(TeacherStudentMethod):
    config_section = method_config.DeepMutualLearningConfig
    loss_names = ("ce_final", "kl_peer", "ce_peer", "kl_to_first")

    def __init__(self, network, **kwargs):
        super().__init__(network, **kwargs)
        config = network.get_config()
        config["name"] = "peer"
        self.peer = type(network).from_config(config)  # same architecture, its own initialisation
        self.peer_accuracy = keras.metrics.SparseCategoricalAccuracy(name="peer_accuracy")

    def build(self, input_shape=None):
        super().build(input_shape)
        self.peer.ensure_built()

    def update_variables(self):
        return super().update_variables() + trained_network_variables(self.peer, self.uses_exits)

    def compute_losses(self, images, labels, training):
        first = tf.cast(self.network.final_logits(images, training=training), tf.float32)
        second = tf.cast(self.peer.final_logits(images, training=training), tf.float32)
        terms = {
            "ce_final": losses.cross_entropy(labels, first),
            "kl_peer": losses.kd_loss(second, first, 1.0),  # the peer is a stop-gradient target
            "ce_peer": losses.cross_entropy(labels, second),
            "kl_to_first": losses.kd_loss(first, second, 1.0),
        }
        if not training:
            self.peer_accuracy.update_state(labels, second)
        return terms, {"final": first}

    @property
    def metrics(self):
        return super().metrics + [self.peer_accuracy]

    def test_step(self, data):
        logs = super().test_step(data)
        logs["peer_accuracy"] = self.peer_accuracy.result()
        return logs
