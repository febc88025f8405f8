"""Backbones with exits, and (later) the label generator, feature generator and cosine classifier."""
from tfkd.models import byo, zoo  # noqa: F401  (register the other backbones)
from tfkd.models.multi_exit import MultiExitNetwork
from tfkd.models.resnet import MultiExitResNet
from tfkd.registry import BACKBONES


def build_backbone(name, **kwargs):
    return BACKBONES.get(name)(**kwargs)


__all__ = ["MultiExitNetwork", "MultiExitResNet", "build_backbone"]
