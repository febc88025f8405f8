"""Few-shot step 1: a feature extractor trained on the *base* alphabets of glyphs only
(configs/splits/glyphs_alphabets.json: 449 base / 147 validation / 165 novel letters), selected
on validation-class episodes (5-way 1-shot cosine prototypes on letters of unseen alphabets).

    bin/train --method=baseline --config=configs/glyphs_fewshot_backbone.py --workdir=runs/glyphs_backbone
    bin/extract_features --workdir=runs/glyphs_backbone --output=runs/glyphs_features

``--config.model.head=cosine`` trains the paper's "cosine" pre-trained features instead of
the standard linear head.
"""
from tfkd.config import base_config


def get_config():
    c = base_config()
    c.method = "baseline"
    c.data.name = "glyphs"
    c.data.class_split = "base"
    c.data.val_fraction = 0.1
    c.model.arch = "resnet18"
    c.model.width = 0.25
    c.model.head = "linear"
    c.train.epochs = 12
    c.train.batch_size = 128
    c.train.learning_rate = 0.1
    c.train.lr_schedule = "cosine"
    c.train.weight_decay = 5e-4
    c.train.select_metric = "val_fewshot_accuracy"
    c.train.verbose = 2
    c.fewshot_val.episodes = 300
    c.fewshot_val.n_way = 5
    c.fewshot_val.k_shot = 1
    c.fewshot_val.n_query = 5
    return c
