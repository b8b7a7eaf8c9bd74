"""hfprune.tasks.metrics gives scikit-learn's and scipy's numbers (both are test-only dependencies)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from hfprune.tasks import metrics


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("num_classes", [2, 3])
def test_classification_metrics_match_sklearn(seed: int, num_classes: int):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, 200)
    predictions = np.where(rng.random(200) < 0.6, labels, rng.integers(0, num_classes, 200))
    assert metrics.accuracy(labels, predictions) == pytest.approx(accuracy_score(labels, predictions), abs=1e-12)
    assert metrics.matthews_correlation(labels, predictions) == pytest.approx(matthews_corrcoef(labels, predictions), abs=1e-12)
    if num_classes == 2:
        assert metrics.binary_f1(labels, predictions) == pytest.approx(f1_score(labels, predictions), abs=1e-12)


def test_degenerate_predictions_match_sklearn():
    labels = np.array([1, 0, 1, 1, 0])
    for constant in (0, 1):
        predictions = np.full(5, constant)
        assert metrics.matthews_correlation(labels, predictions) == 0.0 == matthews_corrcoef(labels, predictions)
        assert metrics.binary_f1(labels, predictions) == pytest.approx(f1_score(labels, predictions, zero_division=0.0))
    assert metrics.binary_f1(np.zeros(4), np.zeros(4)) == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_correlations_match_scipy_with_ties(seed: int):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 6, 100).astype(float)  # many ties, as in STS-B's 0-5 scores
    y = x + rng.normal(0, 1.5, 100)
    y[:10] = y[0]
    assert metrics.pearson(x, y) == pytest.approx(pearsonr(x, y)[0], abs=1e-12)
    assert metrics.spearman(x, y) == pytest.approx(spearmanr(x, y)[0], abs=1e-12)
    assert np.isnan(metrics.pearson(np.ones(5), np.arange(5)))
