"""Self-boosting table at a convergent regime (benchmarks/self_boosting_table.py --regime=converge),
Fashion-MNIST part. The 6-epoch bench_fashion_mnist regime stops long before the plateau where
self-distillation's regularisation is expected to pay off (the papers train 200 epochs); this one
trains 40 epochs with the papers' step schedule (lr / 10 at 50% and 75% of training), sized from a
measured epoch on a 2-core CPU: with two runs side by side at one thread each, an epoch takes
~20 s (baseline, SD) to ~30 s (MetaDistiller main epoch) and ~90 s (meta epoch), i.e. 8-27 min a run.
Width stays 0.125: 0.25 measured 2.5x slower per epoch, which would not fit 3 seeds x 4 methods."""
from tfkd.config import sibling_config


def get_config():
    c = sibling_config(__file__, "bench_fashion_mnist")
    c.train.epochs = 40
    c.train.lr_boundaries = (20, 30)
    c.metadistiller.meta_every_epochs = 5  # the paper's M: meta epochs 1, 6, ..., 36
    return c
