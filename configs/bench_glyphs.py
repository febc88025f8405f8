"""Self-boosting table, glyphs part: 761 letter classes from 16 writing systems, ~22 training
images per class; each class's test images come from font families never seen in training
(tfkd.data.sources.font_family_split). Many classes and few examples per class: the regime where
soft targets matter more."""
from tfkd.config import base_config


def get_config():
    c = base_config()
    c.method = "self_distill"
    c.data.name = "glyphs"
    c.data.val_fraction = 0.1
    c.model.arch = "resnet18"
    c.model.width = 0.125
    c.train.epochs = 6
    c.train.batch_size = 128
    c.train.learning_rate = 0.1
    c.train.lr_boundaries = (3, 5)
    c.train.weight_decay = 5e-4
    c.train.verbose = 2
    c.metadistiller.meta_every_epochs = 3  # meta epochs 1 and 4 of 6
    return c
