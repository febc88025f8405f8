"""Few-shot step 2: episodic meta-training on base-alphabet features and evaluation on the novel
alphabets (features from configs/glyphs_fewshot_backbone.py + bin/extract_features).

    bin/train --method=gen         --config=configs/glyphs_fewshot.py --workdir=runs/glyphs_gen
    bin/train --method=dist        --config=configs/glyphs_fewshot.py --workdir=runs/glyphs_dist
    bin/train --method=progressive --config=configs/glyphs_fewshot.py --workdir=runs/glyphs_dist_down
    bin/train --method=progressive --config=configs/glyphs_fewshot.py --workdir=runs/glyphs_dist_up \\
              --config.progressive.direction=strengthen --config.progressive.k_start=1 --config.progressive.k_end=20
    (add --config.fewshot.features_dir=DIR if the features are elsewhere)

No embedding f (Appendix A, miniImageNet setting: with f, meta-training overfits the base
classes; on glyphs a 256-256 f lowered novel 5-way 1-shot accuracy from 97.98 to 97.37, see
benchmarks/results). Teacher: every base example of each class (k_teacher = 0; classes have
24-40). Weaken: k_train 16 -> 1 on a log scale over the first 750 of 1250 steps, G fills each class up to
16 examples; snapshots at k = 16, 8, 4, 2, 1 serve the 20/10/5/2/1-shot tests.
Evaluation (novel alphabets, shared seeded episodes): 5-way and 20-way-within-one-alphabet at 1
and 5 shots over 1000 episodes, and all 165 novel letters at once at k = 1, 2, 5, 10, 20.
"""
from tfkd.config import base_config


def get_config():
    c = base_config()
    c.method = "gen"
    c.fewshot.features_dir = "runs/glyphs_features"
    c.fewshot.n_way = 5
    c.fewshot.k_shot = 1
    c.fewshot.n_query = 5  # the smallest base letters have 24 images: 16 + 5 fit with room
    c.fewshot.episodes_per_epoch = 500
    c.fewshot.episodes_per_batch = 4
    c.fewshot.val_episodes = 300
    c.fewshot.test_episodes = 1000
    c.fewshot.test_shots = (1, 5)
    c.fewshot.test_queries = 10  # the smallest novel letters have 15 images: 5 shots + 10 queries
    c.fewshot.within_group_way = 20
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
