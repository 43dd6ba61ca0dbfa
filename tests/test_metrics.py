from __future__ import annotations

import numpy as np
import pytest

from scelmo import metrics
from scelmo.errors import InputError


@pytest.fixture
def blobs():
    rng = np.random.default_rng(0)
    centers = np.eye(4)[:3] * 10
    X = np.vstack([c + rng.standard_normal((60, 4)) for c in centers])
    y = np.repeat(["a", "b", "c"], 60)
    return X, y


def test_clustering_scores_perfect_and_random(blobs):
    _, y = blobs
    assert metrics.ari(y, y) == 1 and metrics.nmi(y, y) == 1
    shuffled = np.random.default_rng(1).permutation(y)
    assert abs(metrics.ari(y, shuffled)) < 0.05


def test_silhouette_and_purity(blobs):
    X, y = blobs
    assert metrics.silhouette(X, y, metric="euclidean") > 0.8
    assert metrics.knn_purity(X, y, k=10) > 0.95
    # strongly connected components of the directed kNN graph (scib-metrics): a few cells that
    # no other cell of their blob picks as a neighbour stand alone, so < 1 even for clean blobs
    assert metrics.graph_connectivity(X, y, k=10) > 0.9
    assert metrics.graph_connectivity(X, np.random.default_rng(2).permutation(y), k=10) < 0.5
    with pytest.raises(InputError):
        metrics.silhouette(X, ["a"] * len(y))


def test_batch_mixing_metrics(blobs):
    X, y = blobs
    rng = np.random.default_rng(2)
    mixed = rng.choice(["b1", "b2"], len(y))
    separated = np.where(np.arange(len(y)) % 60 < 30, "b1", "b2")
    Xs = X + np.where(separated == "b1", 0, 5)[:, None] * np.array([0, 0, 0, 1])
    exp = metrics.expected_same_batch_fraction(mixed)
    assert abs(metrics.same_batch_fraction(X, mixed, k=20) - exp) < 0.1
    assert metrics.same_batch_fraction(Xs, separated, k=20) > 0.95
    assert metrics.ilisi(X, mixed, k=20) > 1.7 and metrics.ilisi(Xs, separated, k=20) < 1.1
    assert metrics.silhouette_batch(X, mixed, y, metric="euclidean") > 0.9
    assert metrics.silhouette_batch(Xs, separated, y, metric="euclidean") < 0.5


def test_annotation_scores():
    t = ["a", "a", "b", "c"]
    p = ["a", "b", "b", "c"]
    s = metrics.annotation_scores(t, p)
    assert s["accuracy"] == 0.75
    assert s["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    cm = metrics.confusion(t, p)
    assert cm.loc["a", "b"] == 1 and cm.values.sum() == 4
    with pytest.raises(InputError, match="different lengths"):
        metrics.accuracy(t, p[:2])
