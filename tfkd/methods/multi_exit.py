"""Baselines of the MetaDistiller paper: plain training, DSN and self-distillation."""
import ml_collections
import tensorflow as tf

from tfkd import losses, method_config
from tfkd.errors import ConfigError
from tfkd.methods.base import MultiExitMethod
from tfkd.registry import METHODS


@METHODS.register("baseline")
class Baseline(MultiExitMethod):
    """Cross-entropy on the final output only; the exits are neither computed nor trained."""

    loss_names = ("ce_final",)
    uses_exits = False

    def compute_losses(self, images, labels, training):
        logits = self(images, training=training)
        return {"ce_final": losses.cross_entropy(labels, logits["final"])}, logits


@METHODS.register("dsn")
class DeeplySupervised(MultiExitMethod):
    """Deeply-supervised net (Lee et al. 2015): hard-label CE at every exit and the final output."""

    loss_names = ("ce_final", "ce_exits")

    def compute_losses(self, images, labels, training):
        logits = self.network(images, training=training)
        exits = [losses.cross_entropy(labels, logits[n]) for n in self.output_names_ordered[:-1]]
        return {"ce_final": losses.cross_entropy(labels, logits["final"]), "ce_exits": tf.add_n(exits)}, logits


@METHODS.register("self_distill")
class SelfDistillation(MultiExitMethod):
    """Self-distillation (Zhang et al. 2019) as the MetaDistiller paper's SD baseline, Eq. 3-4.

    L = CE(y, S_K) + sum_k [alpha CE(y, S_k) + (1 - alpha) tau^2 KL(T_k || S_k)], T_k = softmax of
    the final output (stop-gradient). ``hint_weight`` > 0 adds BYOT's feature hint: the L2 distance
    between each exit's features and the final stage's features (stop-gradient), off by default as
    in the MetaDistiller paper's baseline.
    """

    loss_names = ("ce_final", "ce_exits", "kd_exits", "hint")
    config_section = method_config.SelfDistillationConfig

    def __init__(self, network, alpha=0.5, tau=1.0, hint_weight=0.0, **kwargs):
        self.check_config(ml_collections.ConfigDict({"alpha": alpha, "tau": tau, "hint_weight": hint_weight}))
        self.alpha, self.tau, self.hint_weight = float(alpha), float(tau), float(hint_weight)
        if not self.hint_weight:
            self.loss_names = ("ce_final", "ce_exits", "kd_exits")
        elif not getattr(network, "supports_feature_hint", True):
            raise ConfigError(f"config.self_distill.hint_weight={hint_weight}: the {type(network).__name__} exits "
                              f"pool their features (no map of the last stage's shape to match); set it to 0")
        super().__init__(network, **kwargs)

    def compute_losses(self, images, labels, training):
        logits, features = self.network(images, training=training, return_features=True)
        exit_names = self.output_names_ordered[:-1]
        teacher = logits["final"]  # kd_loss stops its gradient
        terms = {
            "ce_final": losses.cross_entropy(labels, logits["final"]),
            "ce_exits": self.alpha * tf.add_n([losses.cross_entropy(labels, logits[n]) for n in exit_names]),
            "kd_exits": (1.0 - self.alpha) * tf.add_n(
                [losses.kd_loss(teacher, logits[n], self.tau) for n in exit_names]),
        }
        if self.hint_weight:
            final_features = features[f"stage_{self.network.num_stages}"]
            terms["hint"] = self.hint_weight * tf.add_n(
                [losses.feature_hint_loss(features[f"{n}_features"], final_features) for n in exit_names])
        return terms, logits

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "tau": self.tau, "hint_weight": self.hint_weight}
