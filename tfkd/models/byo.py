"""Bring your own backbone: any functional Keras model, split at named layers, becomes a
multi-exit network -- tfkd attaches BYOT exit heads after every stage but the last, the label
generator fuses the stage outputs, and every method (baseline, dsn, self_distill,
metadistiller, kd, fitnet, at, dml) trains it.

    --config.model.arch=keras_application --config.model.application=MobileNetV2 \\
    --config.model.stage_layers='("block_2_add", "block_5_add", "block_12_add", "out_relu")'

``application`` names a ``keras.applications`` constructor (built with ``weights=None``,
``include_top=False``; ``model.width`` becomes ``alpha`` for the MobileNets), or ``builder`` names
your own function ``"package.module:function"`` called as ``function(input_shape)`` and returning
a functional model. Images smaller than the model's minimum size (32 px for keras.applications)
are resized in the graph. The last stage layer's output feeds the global pooling and the head.
"""
import importlib

import keras
from keras import ops

from tfkd.errors import ConfigError
from tfkd.models.multi_exit import MultiExitNetwork
from tfkd.registry import BACKBONES

MIN_APPLICATION_SIZE = 32


def _functional_model(application, builder, input_shape, width):
    if builder:
        module_name, _, function = builder.partition(":")
        try:
            fn = getattr(importlib.import_module(module_name), function)
        except (ImportError, AttributeError, ValueError) as e:
            raise ConfigError(f"config.model.builder={builder!r}: cannot import it as 'module:function' ({e})") from None
        return fn(tuple(input_shape))
    constructor = getattr(keras.applications, application, None)
    if constructor is None or not callable(constructor):
        raise ConfigError(f"config.model.application={application!r} is not a keras.applications model "
                          f"(e.g. MobileNetV2, ResNet50V2, EfficientNetB0)")
    kwargs = {"weights": None, "include_top": False, "input_shape": tuple(input_shape)}
    if width != 1.0:
        if "MobileNet" not in application:
            raise ConfigError(f"config.model.width={width}: only the MobileNet applications take a width (alpha)")
        kwargs["alpha"] = width
    return constructor(**kwargs)


@keras.saving.register_keras_serializable("tfkd")
class FunctionalBackbone(MultiExitNetwork):
    def __init__(self, stage_layers=(), application="", builder="", width=1.0, stem="auto", input_shape=(32, 32, 3),
                 **kwargs):
        self.stage_layers = tuple(str(n) for n in stage_layers)
        if len(self.stage_layers) < 2:
            raise ConfigError(f"config.model.stage_layers={self.stage_layers}: name at least two layers (the stage "
                              f"outputs, in order; the last feeds the classifier)")
        if not (application or builder):
            raise ConfigError("config.model.application or config.model.builder must name the model to split")
        self.application, self.builder, self.width, self.stem_type = application, builder, float(width), stem
        self.num_stages = len(self.stage_layers)
        self.default_exits = tuple(range(1, self.num_stages))
        h = tuple(input_shape)[0]
        size = max(h, MIN_APPLICATION_SIZE) if application else h
        self.model_input_shape = (size, size, tuple(input_shape)[-1])
        super().__init__(input_shape=input_shape, **kwargs)

    def _create_backbone(self):
        base = _functional_model(self.application, self.builder, self.model_input_shape, self.width)
        missing = [n for n in self.stage_layers if n not in {layer.name for layer in base.layers}]
        if missing:
            raise ConfigError(f"config.model.stage_layers: {missing} are not layers of {base.name}; "
                              f"its layers include {[layer.name for layer in base.layers][-8:]} (last 8)")
        self.body = keras.Model(base.inputs, [base.get_layer(n).output for n in self.stage_layers], name="body")
        self.stage_channels = tuple(int(o.shape[-1]) for o in self.body.outputs)

    def backbone(self, images, training=None):
        x = self.normalize(images)
        if tuple(x.shape[1:3]) != self.model_input_shape[:2]:
            x = ops.image.resize(x, self.model_input_shape[:2], interpolation="bilinear")
        return list(self.body(x, training=training))

    def arch_config(self):
        return {"stage_layers": self.stage_layers, "application": self.application, "builder": self.builder,
                "width": self.width, "stem": self.stem_type}


def build_functional_backbone(**kwargs):
    return FunctionalBackbone(**kwargs)


build_functional_backbone.options = ("stage_layers", "application", "builder")
BACKBONES.register("keras_application")(build_functional_backbone)
