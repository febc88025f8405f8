"""Self-boosting table at a convergent regime, glyphs part (all 761 letter classes): the
bench_glyphs data and network, trained 40 epochs with the step schedule of
configs/bench_fashion_mnist_converge.py (lr / 10 at epochs 20 and 30, MetaDistiller M = 5)."""
import importlib.util
import os


def _load(name):
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_config():
    c = _load("bench_glyphs").get_config()
    c.train.epochs = 40
    c.train.lr_boundaries = (20, 30)
    c.metadistiller.meta_every_epochs = 5
    return c
