"""Few-shot quick offline default, step 2: meta-training on 3-way episodes of the 3 base classes
of Fashion-MNIST, selection on 2-way validation episodes, 5-way tests on the 5 novel classes (so
every test episode has the same classes; only the examples change). Method settings are those of
configs/glyphs_fewshot.py (loaded from it); k_teacher = 0 takes every base example (~6,000 per class).

    bin/train --config=configs/fashion_mnist_fewshot_backbone.py --workdir=runs/fashion_mnist_backbone
    bin/extract_features --workdir=runs/fashion_mnist_backbone --output=runs/fashion_mnist_features
    bin/train --method=progressive --config=configs/fashion_mnist_fewshot.py --workdir=runs/fmnist_dist_down
"""
from tfkd.config import sibling_config


def get_config():
    c = sibling_config(__file__, "glyphs_fewshot")
    c.fewshot.features_dir = "runs/fashion_mnist_features"
    c.fewshot.n_way = 3  # all 3 base classes
    c.fewshot.test_queries = 15
    c.fewshot.within_group_way = 0  # no class groups
    return c
