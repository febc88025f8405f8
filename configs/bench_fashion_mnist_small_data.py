"""Self-boosting table where the network overfits (benchmarks/self_boosting_table.py
--regime=small_data): Fashion-MNIST with 2,000 training images (200 a class) instead of 10,000,
so the gap between training and held-out accuracy that self-distillation's soft targets are meant
to close is large, as on CIFAR-100 in the papers. Only the data differs from the convergent
regime: the same network (ResNet18, width 0.125), batch, lr, weight decay and method knobs, and
100 epochs with the papers' step schedule (lr / 10 at 50% and 75%) so that training still runs
~1,500 updates (40 epochs of 10,000 images are ~3,100). Measured epoch (two runs side by side,
one thread each): ~4 s baseline, ~5 s a MetaDistiller main epoch, ~10 s a meta epoch, most of it
the 6,000 validation images. Validation (10% of the training split, stratified) and test
(10,000) are the convergent regime's."""
from tfkd.config import sibling_config


def get_config():
    c = sibling_config(__file__, "bench_fashion_mnist_converge")
    c.data.max_train_examples = 2000
    c.train.epochs = 100
    c.train.lr_boundaries = (50, 75)
    c.metadistiller.meta_every_epochs = 5  # the paper's M: meta epochs 1, 6, ..., 96
    return c
