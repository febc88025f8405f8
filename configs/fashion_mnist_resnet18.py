"""Default experiment: multi-exit ResNet18 (width 0.25) on Fashion-MNIST, read offline from the
Debian package's IDX files. Sized for a laptop CPU (a few minutes per epoch on 2 cores).

    bin/train --workdir=runs/fmnist_sd                     # self-distillation (the default method)
    bin/train --method=dsn --workdir=runs/fmnist_dsn
"""
from tfkd.config import base_config


def get_config():
    c = base_config()
    c.method = "self_distill"
    c.data.name = "fashion_mnist"
    c.model.arch = "resnet18"
    c.model.width = 0.25
    c.train.epochs = 6
    c.train.batch_size = 128
    c.train.learning_rate = 0.05
    c.train.lr_schedule = "step"
    c.train.lr_boundaries = (3, 5)  # the paper's x0.1 steps at 40% and 70% of training
    c.train.weight_decay = 5e-4
    return c
