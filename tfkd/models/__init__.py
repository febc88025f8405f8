"""Backbones with exits, and (later) the label generator, feature generator and cosine classifier."""
from tfkd.models.resnet import MultiExitResNet
from tfkd.registry import BACKBONES


def build_backbone(name, **kwargs):
    return BACKBONES.get(name)(**kwargs)


__all__ = ["MultiExitResNet", "build_backbone"]
