"""Training procedures, each a registered keras.Model subclass with its own train_step."""
from tfkd.methods import distill, fewshot, metadistiller, multi_exit, teacher_student  # noqa: F401  (registers the methods)
from tfkd.methods.base import MultiExitMethod, resolve_method_config
from tfkd.registry import METHODS


def build_method(method_name, network, method_config, **kwargs):
    """Instantiates method ``method_name`` around ``network`` with its resolved config."""
    cls = METHODS.get(method_name)
    return cls(network, **dict(method_config), **kwargs)


__all__ = ["METHODS", "MultiExitMethod", "build_method", "resolve_method_config"]
