"""Few-shot step 2: episodic meta-training on base-alphabet features and evaluation on the novel
alphabets (features from configs/glyphs_fewshot_backbone.py + bin/extract_features).

    bin/train --method=gen    --config=configs/glyphs_fewshot.py --workdir=runs/glyphs_gen \\
              --config.fewshot.features_dir=runs/glyphs_features
    bin/train --method=cosine --config=configs/glyphs_fewshot.py --workdir=runs/glyphs_cosine \\
              --config.fewshot.features_dir=runs/glyphs_features

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
    c.fewshot.n_query = 10
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
    c.cosine.embedding_units = (256, 256)  # Appendix A: a 2-layer FC embedding f
    c.cosine.scale_init = 10.0
    c.gen.embedding_units = (256, 256)
    c.gen.scale_init = 10.0
    c.gen.num_generated = 4
    c.gen.generator_hidden = (256,)
    return c
