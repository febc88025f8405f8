"""Self-boosting table at a convergent regime, glyphs part (all 761 letter classes): the
bench_glyphs data and network, trained 40 epochs with the step schedule of
configs/bench_fashion_mnist_converge.py (lr / 10 at epochs 20 and 30, MetaDistiller M = 5)."""
from tfkd.config import sibling_config


def get_config():
    c = sibling_config(__file__, "bench_glyphs")
    c.train.epochs = 40
    c.train.lr_boundaries = (20, 30)
    c.metadistiller.meta_every_epochs = 5
    return c
