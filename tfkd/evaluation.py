"""Few-shot evaluation protocols on novel-class features (progressive-distillation paper, Sec. 4).

* ``episode_protocol``: N-way k-shot episodes (paper: 5-way, k in {1, 5}; here also 20-way
  episodes whose classes all come from one alphabet), mean +- 1.96 std / sqrt(N) over >= 1000
  episodes, with every episode's accuracy kept.
* ``all_way_protocol`` (Table 1, after Hariharan & Girshick): all novel classes at once, k in
  {1, 2, 5, 10, 20} support examples per class, top-1 and top-5 accuracy, averaged over seeded
  support draws. Per draw, each class's examples are shuffled once: the first ``n_query`` are its
  queries and the next k its support, so the k-shot support contains the (k-1)-shot one. A class
  with fewer than n_query + k examples uses all it has left (the effective k is reported), and
  each query's top-1 hit is kept so that two predictors can be compared query by query.

A predictor is ``fn(support (n_way, k_max, d), mask (n_way, k_max), query (n_q, d)) -> scores
(n_q, n_way)``; episode i of a sampler depends only on (seed, i), so every predictor evaluated
with the same seed sees the same episodes and differences are paired.
"""
import keras
import numpy as np

from tfkd.data.episodes import EpisodeSampler, mean_confidence_interval


def _accuracy(scores, labels, k=1):
    scores = np.asarray(scores)
    if k == 1:
        return float(np.mean(scores.argmax(-1) == labels))
    top = np.argsort(-scores, axis=-1)[:, :k]
    return float(np.mean((top == labels[:, None]).any(-1)))


def episode_protocol(predict, features, labels, sampler: EpisodeSampler, num_episodes, progress=None):
    """Query accuracy of ``predict`` on episodes 0 .. num_episodes - 1 of ``sampler``."""
    accs = np.empty(num_episodes)
    for i in range(num_episodes):
        ep = sampler.episode(i)
        support = features[ep.support].astype(np.float32)
        query = features[ep.query.reshape(-1)].astype(np.float32)
        truth = np.repeat(np.arange(sampler.n_way), sampler.n_query)
        accs[i] = _accuracy(np.asarray(predict(support, ep.support_mask, query)), truth)
        if progress is not None:
            progress.add(1)
    mean, ci = mean_confidence_interval(accs)
    return {"mean": mean, "ci95": ci, "episodes": int(num_episodes), "n_way": sampler.n_way,
            "k_shot": sampler.k_shot, "n_query": sampler.n_query, "seed": sampler.seed,
            "within_group": sampler.groups is not None, "accuracies": accs.tolist()}


def all_way_draw(labels, classes, k_max, n_query, seed, draw):
    """(support (C, k_max) indices, available (C,) support counts, query (C * n_query,), query labels)."""
    rng = np.random.default_rng([seed, 7919, draw])
    classes = np.asarray(sorted(classes))
    support = np.zeros((len(classes), k_max), np.int64)
    available = np.zeros(len(classes), np.int64)
    query, query_labels = [], []
    for i, c in enumerate(classes):
        idx = rng.permutation(np.flatnonzero(labels == c))
        if len(idx) < n_query + 1:
            raise ValueError(f"class {c} has {len(idx)} examples; the all-way protocol needs n_query + 1 = "
                             f"{n_query + 1}")
        query.append(idx[:n_query])
        query_labels.append(np.full(n_query, i))
        rest = idx[n_query: n_query + k_max]
        available[i] = len(rest)
        support[i, : len(rest)] = rest
        support[i, len(rest):] = rest[0]  # padding, masked out
    return support, available, np.concatenate(query), np.concatenate(query_labels)


def fixed(predict):
    """The same predictor for every shot count (see ``predictor_for_shot`` below)."""
    return lambda k: predict


def all_way_protocol(predictor_for_shot, features, labels, classes, shots=(1, 2, 5, 10, 20), draws=5, n_query=5,
                     seed=0, top_k=(1, 5)):
    """Top-1 / top-5 accuracy over all ``classes`` at once for every k in ``shots``, mean +- CI over
    ``draws`` seeded support draws. ``predictor_for_shot(k)`` gives the predictor used at k shots
    (progressive distillation tests each k with the model trained at that k)."""
    k_max = max(shots)
    out = {"classes": int(len(classes)), "draws": int(draws), "n_query": int(n_query), "seed": int(seed),
           "shots": {}}
    for k in shots:
        predict = predictor_for_shot(k)
        per_top = {f"top{t}": [] for t in top_k}
        correct = []  # per query, every draw: paired comparisons between predictors need it
        effective = []
        for draw in range(draws):
            support_idx, available, query_idx, truth = all_way_draw(labels, classes, k_max, n_query, seed, draw)
            support = features[support_idx].astype(np.float32)
            query = features[query_idx].astype(np.float32)
            mask = np.arange(k_max)[None, :] < np.minimum(available, k)[:, None]
            scores = np.asarray(predict(support, mask, query))
            for t in top_k:
                per_top[f"top{t}"].append(_accuracy(scores, truth, t))
            correct += (scores.argmax(-1) == truth).astype(int).tolist()
            effective.append(float(mask.sum(1).mean()))
        row = {"mean_effective_k": float(np.mean(effective))}
        for name, values in per_top.items():
            mean, ci = mean_confidence_interval(values)
            row[name] = {"mean": mean, "ci95": ci, "per_draw": list(values)}
        row["top1"]["per_query"] = correct
        out["shots"][str(k)] = row
    return out


def nearest_neighbour_predictor(support, mask, query):
    """1-NN on raw features (the pixel floor): score of class c = -min distance to its shots."""
    support, mask, query = np.asarray(support), np.asarray(mask), np.asarray(query)
    n_way, k_max, d = support.shape
    flat = support.reshape(-1, d)
    dist = ((query ** 2).sum(1)[:, None] - 2 * query @ flat.T + (flat ** 2).sum(1)[None, :])
    dist = dist.reshape(len(query), n_way, k_max)
    dist = np.where(mask[None], dist, np.inf)
    return -dist.min(-1)


def protocol_suite(predict, features, labels, classes, cfg, class_groups=None, progress=None):
    """Every protocol of ``cfg`` (config.fewshot): N-way k-shot for each test shot, the
    within-group variant when groups are known, and the all-way protocol. ``predict`` is a
    predictor, or a function k -> predictor (``predictor_for_shot``) when marked with
    ``per_shot=True`` (see ``fixed``)."""
    predictor_for_shot = predict if getattr(predict, "per_shot", False) else fixed(predict)
    results = {}
    for k in cfg.test_shots:
        sampler = EpisodeSampler(labels, classes, cfg.test_way, k, cfg.test_queries, seed=cfg.eval_seed)
        results[f"{cfg.test_way}way_{k}shot"] = episode_protocol(predictor_for_shot(k), features, labels, sampler,
                                                                 cfg.test_episodes, progress)
    if cfg.within_group_way and class_groups is not None:
        for k in cfg.test_shots:
            sampler = EpisodeSampler(labels, classes, cfg.within_group_way, k, cfg.test_queries,
                                     seed=cfg.eval_seed, class_groups=class_groups, within_group=True)
            results[f"{cfg.within_group_way}way_within_group_{k}shot"] = episode_protocol(
                predictor_for_shot(k), features, labels, sampler, cfg.test_episodes, progress)
    if cfg.all_way_shots:
        results["all_way"] = all_way_protocol(predictor_for_shot, features, labels, classes,
                                              tuple(cfg.all_way_shots), cfg.all_way_draws, cfg.all_way_queries,
                                              seed=cfg.eval_seed)
    return results


def per_shot(fn):
    """Marks ``fn`` (k -> predictor) for protocol_suite."""
    fn.per_shot = True
    return fn


def summary_values(results):
    """{protocol: mean accuracy} (all-way: one entry per k and top-k)."""
    out = {}
    for name, r in results.items():
        if name == "all_way":
            for k, row in r["shots"].items():
                out[f"all_way_{k}shot_top1"] = row["top1"]["mean"]
                out[f"all_way_{k}shot_top5"] = row["top5"]["mean"]
        else:
            out[name] = r["mean"]
    return out


def summary_rows(results):
    """[(protocol, value string)] for printing: 'mean +- ci' in percent."""
    rows = []
    for name, r in results.items():
        if name == "all_way":
            for k, row in r["shots"].items():
                rows.append((f"all-way {r['classes']} classes, k={k} (top-1 / top-5)",
                             f"{100 * row['top1']['mean']:.2f} / {100 * row['top5']['mean']:.2f}"))
        else:
            rows.append((name, f"{100 * r['mean']:.2f} +- {100 * r['ci95']:.2f}"))
    return rows


def cosine_prototype_predictor(support, mask, query):
    """Cosine prototypical classifier without learned parts (numpy): the validation-class probe."""
    support, mask, query = np.asarray(support), np.asarray(mask), np.asarray(query)
    m = mask[..., None].astype(np.float32)
    protos = (support * m).sum(1) / np.maximum(m.sum(1), 1.0)
    protos /= np.maximum(np.linalg.norm(protos, axis=-1, keepdims=True), 1e-12)
    q = query / np.maximum(np.linalg.norm(query, axis=-1, keepdims=True), 1e-12)
    return q @ protos.T


class ValidationClassEpisodes(keras.callbacks.Callback):
    """Keras callback for few-shot backbones: after each epoch, embeds images of the held-out
    validation *classes* and logs ``val_fewshot_accuracy``, the mean accuracy of a cosine
    prototype classifier on seeded N-way k-shot episodes (the same episodes every epoch), so
    train.select_metric can pick the epoch whose features transfer best to unseen classes."""

    def __init__(self, images, labels, cfg, seed, batch_size=512):
        super().__init__()
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.sampler = EpisodeSampler(labels, np.unique(labels), cfg.n_way, cfg.k_shot, cfg.n_query, seed=seed)
        self.episodes = cfg.episodes

    def on_epoch_end(self, epoch, logs=None):
        network = self.model.network
        feats = np.concatenate([np.asarray(network.embed(self.images[i: i + self.batch_size]))
                                for i in range(0, len(self.images), self.batch_size)])
        result = episode_protocol(cosine_prototype_predictor, feats, self.labels, self.sampler, self.episodes)
        if logs is not None:
            logs["val_fewshot_accuracy"] = result["mean"]


def validation_class_images(data, max_images, seed):
    """Images and original labels of the validation classes (class-balanced subset)."""
    from tfkd.data.sources import ArraySplit, subsample

    everything = data.all_images
    keep = np.isin(everything.labels, data.class_split["validation"])
    subset = subsample(ArraySplit(everything.images[keep], everything.labels[keep]), max_images, seed)
    return subset.images, subset.labels
