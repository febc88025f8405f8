"""The MetaDistiller paper's CIFAR-100 setting (Table 1): ResNet18, SGD momentum 0.9, lr 0.1,
200 epochs, x0.1 at epochs 80 and 140, weight decay 5e-4, alpha 0.5, tau 1.

Needs CIFAR-100 prepared for TFDS (`tfds build cifar100`) or --config.data.allow_download=True.
"""
from tfkd.config import base_config


def get_config():
    c = base_config()
    c.method = "self_distill"
    c.data.name = "cifar100"
    c.data.val_fraction = 0.1
    c.model.arch = "resnet18"
    c.train.epochs = 200
    c.train.batch_size = 128
    c.train.learning_rate = 0.1
    c.train.lr_boundaries = (80, 140)
    c.train.weight_decay = 5e-4
    c.self_distill.alpha = 0.5
    c.self_distill.tau = 1.0
    return c
