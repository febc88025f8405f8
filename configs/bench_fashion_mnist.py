"""Self-boosting table (benchmarks/self_boosting_table.py), Fashion-MNIST part: a narrow
multi-exit ResNet18 on a 10k-image class-balanced training subset, sized so that all methods x
3 seeds fit a CPU budget. Validation (10% of train, stratified) picks the checkpoint; test is
the full 10k test set."""
from tfkd.config import base_config


def get_config():
    c = base_config()
    c.method = "self_distill"
    c.data.name = "fashion_mnist"
    c.data.max_train_examples = 10000
    c.data.max_eval_examples = 0
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
