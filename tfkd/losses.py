"""Distillation losses, as plain functions of tensors (batch means, float32).

Conventions (MetaDistiller Eq. 1, 4): ``kd_loss`` is tau^2 * KL(T || S) with T the teacher's and S
the student's softmax at temperature tau; the teacher side is a target, so callers pass it through
``stop_gradient`` (done here for logits teachers) unless gradients into the teacher are intended.
"""
import tensorflow as tf


def cross_entropy(labels, logits):
    """Mean sparse categorical cross-entropy from logits (float32, or float64 for float64 logits)."""
    logits = tf.cast(logits, tf.float64 if logits.dtype == tf.float64 else tf.float32)
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(labels, tf.int32),
                                                                         logits=logits))


def kl_divergence(teacher_probs, student_log_probs):
    """Mean over the batch of KL(T || S) = sum_c T_c (log T_c - log S_c); 0 log 0 = 0."""
    per_example = tf.reduce_sum(
        tf.math.xlogy(teacher_probs, teacher_probs) - teacher_probs * student_log_probs, axis=-1)
    return tf.reduce_mean(per_example)


def kd_loss(teacher_logits, student_logits, tau=1.0, teacher_is_probs=False, stop_teacher_gradient=True):
    """tau^2 * KL(softmax(t / tau) || softmax(s / tau)); by default no gradient flows into the teacher.

    With ``teacher_is_probs`` the teacher is already a distribution (e.g. the MetaDistiller label
    generator's T_k) and tau only softens the student. ``stop_teacher_gradient=False`` is for the
    MetaDistiller lookahead, where d(loss)/d(teacher) carries the meta-gradient to the generator.
    """
    dtype = tf.float64 if student_logits.dtype == tf.float64 else tf.float32
    tau = tf.cast(tau, dtype)
    student = tf.nn.log_softmax(tf.cast(student_logits, dtype) / tau, axis=-1)
    teacher = tf.cast(teacher_logits, dtype)
    if stop_teacher_gradient:
        teacher = tf.stop_gradient(teacher)
    if not teacher_is_probs:
        teacher = tf.nn.softmax(teacher / tau, axis=-1)
    return tau * tau * kl_divergence(teacher, student)


def feature_hint_loss(student_features, teacher_features):
    """Mean squared distance between feature maps (BYOT's hint); the teacher side is a target."""
    diff = tf.cast(student_features, tf.float32) - tf.stop_gradient(tf.cast(teacher_features, tf.float32))
    return tf.reduce_mean(tf.square(diff))


def l2_penalty(variables):
    """0.5 * sum ||w||^2: its gradient is w, i.e. PyTorch-style (coupled) weight decay."""
    if not variables:
        return tf.constant(0.0)
    dtype = tf.float64 if variables[0].dtype == tf.float64 else tf.float32
    return 0.5 * tf.add_n([tf.reduce_sum(tf.square(tf.cast(v, dtype))) for v in variables])


def soft_cross_entropy(target_probs, student_log_probs):
    """Mean over the batch of CE(q, p) = -sum_c q_c log p_c."""
    return tf.reduce_mean(-tf.reduce_sum(target_probs * student_log_probs, axis=-1))


def progressive_kd_loss(labels, student_logits, teacher_logits, gamma, temperature):
    """Eq. 1 of progressive distillation: CE(softmax(s), e_y) + gamma * T^2 * CE(softmax(s/T), softmax(t/T)).

    Returns (total, hard term, soft term without gamma). The teacher is a fixed target (no
    gradient); T may be a learnable variable and receives gradient through both softmaxes.
    """
    hard = cross_entropy(labels, student_logits)
    t = tf.cast(temperature, tf.float32)
    student = tf.nn.log_softmax(tf.cast(student_logits, tf.float32) / t, axis=-1)
    teacher = tf.nn.softmax(tf.stop_gradient(tf.cast(teacher_logits, tf.float32)) / t, axis=-1)
    soft = t * t * soft_cross_entropy(teacher, student)
    return hard + gamma * soft, hard, soft
