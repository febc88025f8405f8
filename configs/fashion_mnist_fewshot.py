"""Few-shot quick offline default, step 2: meta-training on 3-way episodes of the 3 base classes
of Fashion-MNIST, selection on 2-way validation episodes, 5-way tests on the 5 novel classes (so
every test episode has the same classes; only the examples change). Method settings as in
configs/glyphs_fewshot.py; k_teacher = 0 takes every base example (about 6,000 per class).

    bin/train --config=configs/fashion_mnist_fewshot_backbone.py --workdir=runs/fashion_mnist_backbone
    bin/extract_features --workdir=runs/fashion_mnist_backbone --output=runs/fashion_mnist_features
    bin/train --method=progressive --config=configs/fashion_mnist_fewshot.py --workdir=runs/fmnist_dist_down
"""
from tfkd.config import base_config


def get_config():
    c = base_config()
    c.method = "gen"
    c.fewshot.features_dir = "runs/fashion_mnist_features"
    c.fewshot.n_way = 3  # all 3 base classes
    c.fewshot.k_shot = 1
    c.fewshot.n_query = 5
    c.fewshot.episodes_per_epoch = 500
    c.fewshot.episodes_per_batch = 4
    c.fewshot.val_episodes = 300  # 2-way: the validation split has 2 classes
    c.fewshot.test_episodes = 1000
    c.fewshot.test_shots = (1, 5)
    c.fewshot.test_queries = 15
    c.fewshot.within_group_way = 0  # no class groups
    c.train.epochs = 10
    c.train.optimizer = "adam"
    c.train.learning_rate = 1e-3
    c.train.lr_schedule = "cosine"
    c.train.weight_decay = 0.0
    c.train.verbose = 2
    for method in ("cosine", "gen", "dist", "progressive"):
        c[method].embedding_units = ()
        c[method].scale_init = 10.0
    for method in ("gen", "dist", "progressive"):
        c[method].num_generated = 4
        c[method].generator_hidden = (256,)
    for method in ("dist", "progressive"):
        c[method].gamma = 5.0  # paper, miniImageNet
        c[method].temperature_init = 7.0
        c[method].k_teacher = 0
    c.progressive.direction = "weaken"
    c.progressive.schedule = "log"
    c.progressive.k_start = 16
    c.progressive.k_end = 1
    c.progressive.schedule_steps = 750  # of 1250 steps (10 epochs x 125): the last 4 epochs train at k = 1
    return c
