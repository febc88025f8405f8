"""Few-shot episodes: sampler invariants, determinism, static shapes, clear errors, CI formula,
and the glyphs alphabet split file."""
import json
import os

import numpy as np
import pytest

from tests.conftest import REPO
from tfkd.data.episodes import EpisodeSampler, load_class_split, mean_confidence_interval
from tfkd.errors import ConfigError, DataError

SPLIT_FILE = os.path.join(REPO, "configs", "splits", "glyphs_alphabets.json")


def _labels(num_classes=12, per_class=20):
    return np.repeat(np.arange(num_classes), per_class)


def test_episode_invariants():
    labels = _labels()
    split = np.arange(2, 12)
    sampler = EpisodeSampler(labels, split, n_way=5, k_shot=3, n_query=4, seed=1, k_max=6)
    for i in range(50):
        ep = sampler.episode(i)
        assert ep.support.shape == (5, 6) and ep.query.shape == (5, 4) and ep.support_mask.shape == (5, 6)
        assert ep.support_mask.sum(1).tolist() == [3] * 5 and ep.support_mask[:, :3].all()
        assert len(set(ep.classes.tolist())) == 5 and set(ep.classes.tolist()) <= set(split.tolist())
        for row, c in enumerate(ep.classes):
            assert (labels[ep.support[row]] == c).all() and (labels[ep.query[row]] == c).all()
            assert not set(ep.support[row]) & set(ep.query[row])
            assert len(set(ep.support[row])) == 6


def test_episodes_are_a_function_of_seed_and_index():
    labels = _labels()
    a = EpisodeSampler(labels, range(12), 5, 1, 3, seed=7)
    b = EpisodeSampler(labels, range(12), 5, 1, 3, seed=7)
    c = EpisodeSampler(labels, range(12), 5, 1, 3, seed=8)
    np.testing.assert_array_equal(a.episode(42).support, b.episode(42).support)
    np.testing.assert_array_equal(a.episode(3).query, b.episode(3).query)
    assert not np.array_equal(a.episode(42).support, c.episode(42).support)
    assert not np.array_equal(a.episode(0).support, a.episode(1).support)
    # Order of access does not matter.
    first = [a.episode(i).classes.tolist() for i in (5, 6)]
    assert first == [b.episode(i).classes.tolist() for i in (5, 6)]


def test_within_group_episodes_stay_in_one_group():
    labels = _labels(num_classes=12)
    groups = np.array(["x"] * 6 + ["y"] * 6)
    sampler = EpisodeSampler(labels, range(12), 5, 1, 2, seed=0, class_groups=groups, within_group=True)
    for i in range(30):
        assert len(set(groups[sampler.episode(i).classes].tolist())) == 1


def test_clear_errors():
    labels = _labels(num_classes=6, per_class=8)
    with pytest.raises(DataError, match="k_max \\+ n_query = 10"):
        EpisodeSampler(labels, range(6), 5, 5, 5, seed=0)
    with pytest.raises(ConfigError, match="only 6 classes"):
        EpisodeSampler(labels, range(6), 10, 1, 1)
    with pytest.raises(ConfigError, match="k_shot"):
        EpisodeSampler(labels, range(6), 5, 3, 1, k_max=2)


def test_confidence_interval_formula():
    acc = np.array([0.5, 0.7, 0.6, 0.9])
    mean, half = mean_confidence_interval(acc)
    assert mean == pytest.approx(0.675)
    assert half == pytest.approx(1.96 * np.sqrt(np.mean((acc - 0.675) ** 2)) / 2)
    rng = np.random.default_rng(0)  # coverage: ~95% of intervals contain the true mean
    hits = 0
    for _ in range(400):
        m, h = mean_confidence_interval(rng.binomial(1, 0.6, size=300))
        hits += abs(m - 0.6) <= h
    assert 0.92 < hits / 400 < 0.98


def test_glyphs_alphabet_split_file():
    with open(SPLIT_FILE) as f:
        spec = json.load(f)
    alphabets = sum((spec[s] for s in ("base", "validation", "novel")), [])
    assert len(alphabets) == len(set(alphabets)) == 16
    groups = np.array([a for a in alphabets for _ in range(3)])  # 3 classes per alphabet
    split = load_class_split(SPLIT_FILE, groups)
    assert sum(len(v) for v in split.values()) == len(groups)
    assert not set(split["base"]) & set(split["novel"])
    assert set(groups[split["novel"]]) == set(spec["novel"])


def test_split_file_errors(tmp_path):
    bad = tmp_path / "split.json"
    bad.write_text(json.dumps({"base": ["A"], "validation": ["A"], "novel": ["B"]}))
    with pytest.raises(DataError, match="both"):
        load_class_split(str(bad), ["A", "B"])
    bad.write_text(json.dumps({"base": ["A"], "validation": [], "novel": ["Z"]}))
    with pytest.raises(DataError, match="unknown group 'Z'"):
        load_class_split(str(bad), ["A", "B"])
    bad.write_text(json.dumps({"base": ["A"], "validation": [], "novel": []}))
    with pytest.raises(DataError, match="in no split"):
        load_class_split(str(bad), ["A", "B"])
    with pytest.raises(DataError, match="missing class-split file"):
        load_class_split(str(tmp_path / "nope.json"), ["A"])


def test_real_glyphs_split_and_episodes():
    from tfkd.data.sources import default_glyphs_path

    path = default_glyphs_path()
    if not os.path.exists(path):
        pytest.skip(f"glyphs file not found at {path}")
    data = np.load(path)
    split = load_class_split(SPLIT_FILE, data["alphabets"])
    assert [len(split[s]) for s in ("base", "validation", "novel")] == [449, 147, 165]
    labels = data["labels"]
    five_way = EpisodeSampler(labels, split["novel"], 5, 5, 15, seed=0)
    assert five_way.episode(0).support.shape == (5, 5)
    within = EpisodeSampler(labels, split["novel"], 20, 1, 5, seed=0, class_groups=data["alphabets"],
                            within_group=True)
    ep = within.episode(0)
    assert len(set(data["alphabets"][ep.classes].tolist())) == 1
