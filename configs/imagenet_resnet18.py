"""ImageNet (ILSVRC2012) ResNet18 with the 7x7 stem, streamed from TFDS (Table 2 of MetaDistiller).

imagenet2012 needs its manual download placed in the TFDS manual dir; set --config.data.data_dir.
"""
from tfkd.config import base_config


def get_config():
    c = base_config()
    c.method = "self_distill"
    c.data.name = "imagenet2012"
    c.data.in_memory = False
    c.data.image_size = 224
    c.data.val_fraction = 0.01
    c.data.test_split = "validation"
    c.model.arch = "resnet18"
    c.model.stem = "imagenet"
    c.train.epochs = 100
    c.train.batch_size = 256
    c.train.learning_rate = 0.1
    c.train.lr_boundaries = (30, 60, 90)
    c.train.weight_decay = 1e-4
    c.train.mixed_precision = True
    return c
