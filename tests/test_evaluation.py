"""Few-shot evaluation protocols: all-way draws, top-k, 1-NN floor, validation-class probe."""
import numpy as np
import pytest

from tfkd import evaluation
from tfkd.data.episodes import EpisodeSampler


def test_all_way_draw_disjoint_nested_and_capped():
    labels = np.repeat(np.arange(4), [30, 30, 30, 8])  # class 3 has only 8 examples
    support, available, query, query_labels = evaluation.all_way_draw(labels, range(4), 20, 5, seed=0, draw=0)
    assert support.shape == (4, 20) and query.shape == (20,)
    np.testing.assert_array_equal(available, [20, 20, 20, 3])  # 8 - 5 queries: the effective k is capped
    for c in range(4):
        real = support[c, : available[c]]
        assert (labels[real] == c).all() and len(set(real)) == len(real)
        assert not set(real) & set(query[query_labels == c])  # support and query disjoint
    np.testing.assert_array_equal(labels[query], query_labels)
    again = evaluation.all_way_draw(labels, range(4), 20, 5, seed=0, draw=0)
    np.testing.assert_array_equal(again[0], support)  # seeded
    other = evaluation.all_way_draw(labels, range(4), 20, 5, seed=0, draw=1)
    assert not np.array_equal(other[2], query)


def test_all_way_protocol_top_k_and_nesting():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(12, 16))
    labels = np.repeat(np.arange(12), 25)
    features = centers[labels] + 0.8 * rng.normal(size=(len(labels), 16))
    out = evaluation.all_way_protocol(evaluation.fixed(evaluation.cosine_prototype_predictor), features, labels, np.arange(12),
                                      shots=(1, 5, 20), draws=3, n_query=5)
    rows = out["shots"]
    assert rows["1"]["top1"]["mean"] < rows["20"]["top1"]["mean"]  # more shots help
    for k in rows:
        assert rows[k]["top5"]["mean"] >= rows[k]["top1"]["mean"]
        assert len(rows[k]["top1"]["per_draw"]) == 3
        hits = rows[k]["top1"]["per_query"]  # 0/1 per query of every draw, for paired comparisons
        assert len(hits) == 3 * 12 * 5 and set(hits) <= {0, 1}
        assert np.mean(hits) == pytest.approx(rows[k]["top1"]["mean"])
    assert rows["20"]["mean_effective_k"] == 20


def test_top_k_accuracy_by_hand():
    scores = np.array([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05], [0.2, 0.3, 0.5]])
    labels = np.array([2, 0, 0])
    assert evaluation._accuracy(scores, labels, 1) == pytest.approx(1 / 3)
    assert evaluation._accuracy(scores, labels, 2) == pytest.approx(2 / 3)


def test_nearest_neighbour_matches_brute_force_and_ignores_masked_shots():
    rng = np.random.default_rng(1)
    support = rng.normal(size=(3, 4, 5))
    mask = np.array([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]], bool)
    query = rng.normal(size=(7, 5))
    scores = evaluation.nearest_neighbour_predictor(support, mask, query)
    for i, q in enumerate(query):
        for c in range(3):
            d = min(((q - s) ** 2).sum() for s, m in zip(support[c], mask[c]) if m)
            assert scores[i, c] == pytest.approx(-d, rel=1e-6, abs=1e-9)


def test_episode_protocol_is_paired_across_predictors():
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(8), 20)
    features = rng.normal(size=(len(labels), 6)) + labels[:, None]
    sampler = EpisodeSampler(labels, range(8), 5, 1, 3, seed=5)
    a = evaluation.episode_protocol(evaluation.cosine_prototype_predictor, features, labels, sampler, 40)
    b = evaluation.episode_protocol(evaluation.nearest_neighbour_predictor, features, labels, sampler, 40)
    # 1-shot: nearest neighbour and Euclidean prototypes coincide; both see the same 40 episodes.
    assert len(a["accuracies"]) == len(b["accuracies"]) == 40
    assert a["mean"] == pytest.approx(np.mean(a["accuracies"]))
    assert a["ci95"] == pytest.approx(1.96 * np.std(a["accuracies"]) / np.sqrt(40))
