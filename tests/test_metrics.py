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


def test_missing_labels_are_left_out_and_numbers_compare_by_value():
    """Trial finding: labels were compared as str(): NaN became a class "nan" that matched
    itself (accuracy 1.0 on unlabelled cells), and 2 never equalled 2.0."""
    import pandas as pd

    nan = np.nan
    assert metrics.accuracy(["a", "b", nan, nan], ["a", "a", "a", "b"]) == 0.5  # the two labelled cells
    assert metrics.accuracy(["a", "b"], ["a", None]) == 0.5  # a missing prediction is wrong
    assert metrics.macro_f1(["a", "b", nan, nan], ["a", "b", "a", "a"]) == 1.0
    assert metrics.accuracy(pd.Categorical(["a", None, "b"]), pd.Categorical(["a", None, "a"])) == 0.5
    assert metrics.accuracy([0, 1, 2], [0.0, 1.0, 2.0]) == 1.0
    assert metrics.ari([0, 0, 1, 1, nan], [5.0, 5.0, 7.0, 7.0, 5.0]) == 1.0
    with pytest.raises(InputError, match="Every true label is missing"):
        metrics.accuracy([nan, nan], ["a", "b"])
    rng = np.random.default_rng(0)
    X = rng.normal(size=(6, 3))
    labels = ["a", "a", "a", "b", "b", None]
    assert metrics.knn_purity(X, labels, k=2) == metrics.knn_purity(X[:5], labels[:5], k=2)  # left out
    # each missing prediction is a cluster of its own, not one cluster of the unassigned (review finding)
    assert metrics.ari(["a", "a", "b", "b"], ["x", "x", None, None]) < 1.0
    assert metrics.clustering_scores(["a", "a", nan], ["x", "x", "y"])["n_clusters"] == 1.0
    with pytest.raises(InputError, match="no cells"):
        metrics.accuracy([], [])


def test_silhouettes_follow_scib_on_rare_labels_and_refuse_tiny_inputs():
    """Trial finding: a label whose every cell is in its own batch crashed silhouette_batch
    (scib-metrics skips it); a silhouette on as many labels as cells gave sklearn's raw error."""
    from sklearn.metrics import silhouette_samples

    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 10))
    y = np.array(["T"] * 100 + ["B"] * 97 + ["rare"] * 3)
    b = np.array(["b1", "b2"] * 100, dtype=object)
    b[-3:] = ["b1", "b2", "b3"]
    ref = np.mean([np.mean(1 - np.abs(silhouette_samples(X[y == lab], b[y == lab]))) for lab in ["B", "T"]])
    assert metrics.silhouette_batch(X, b, y, metric="euclidean") == pytest.approx(ref)
    with pytest.raises(InputError, match="more cells than labels"):
        metrics.silhouette(X[:3], ["a", "b", "c"])
