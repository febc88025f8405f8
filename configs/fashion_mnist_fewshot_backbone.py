"""Few-shot quick offline default, step 1: a backbone on the 3 base classes of Fashion-MNIST
(configs/splits/fashion_mnist.json: base Trouser, Sneaker, T-shirt/top; validation Dress, Sandal;
novel Pullover, Coat, Shirt, Bag, Ankle boot), selected on 2-way 1-shot validation-class episodes.
Only 10 classes: a smoke-scale default, not a benchmark of few-shot transfer."""
from tfkd.config import base_config


def get_config():
    c = base_config()
    c.method = "baseline"
    c.data.name = "fashion_mnist"
    c.data.class_split = "base"
    c.model.arch = "resnet18"
    c.model.width = 0.125
    c.train.epochs = 3
    c.train.batch_size = 128
    c.train.learning_rate = 0.1
    c.train.lr_schedule = "cosine"
    c.train.weight_decay = 5e-4
    c.train.select_metric = "val_fewshot_accuracy"
    c.train.verbose = 2
    c.fewshot_val.episodes = 300
    c.fewshot_val.n_way = 2
    c.fewshot_val.k_shot = 1
    c.fewshot_val.n_query = 5
    return c
