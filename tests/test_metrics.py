"""Statistical correctness: sklearn equality, bootstrap coverage, null rejection rate, DeLong, clusters."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from chexcut.evaluation import metrics
from chexcut.evaluation.metrics import _LabelIndex


def test_auroc_equals_sklearn_with_many_ties():
    rng = np.random.default_rng(0)
    for _trial in range(50):
        n = int(rng.integers(5, 400))
        y = rng.integers(0, 2, n)
        if y.min() == y.max():
            continue
        s = rng.integers(0, rng.integers(2, 12), n) / 7.0  # heavy ties
        assert abs(metrics.auroc(y, s) - roc_auc_score(y, s)) < 1e-12


def test_one_class_is_nan_not_half():
    assert np.isnan(metrics.auroc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert np.isnan(metrics.auroc([], []))


def test_weighted_auroc_equals_sklearn_on_resampled_rows():
    """A replicate's weighted AUROC == sklearn on the explicitly repeated rows (ties included)."""
    rng = np.random.default_rng(1)
    n = 120
    y = rng.integers(0, 2, n)
    s = rng.integers(0, 6, n) / 5
    clusters = rng.integers(0, 40, n)
    li = _LabelIndex(y, s, np.arange(n), clusters)
    counts = metrics.bootstrap_counts(40, 20, rng)
    got = li.weighted(counts)
    for b in range(20):
        rows = np.repeat(np.arange(n), counts[b, clusters].astype(int))
        ref = roc_auc_score(y[rows], s[rows]) if 0 < y[rows].sum() < len(rows) else np.nan
        assert got[b] == pytest.approx(ref, abs=1e-6) or (np.isnan(got[b]) and np.isnan(ref))


def test_cluster_resampling_keeps_a_patients_rows_together():
    rng = np.random.default_rng(2)
    patients = np.repeat(np.arange(30), 4)
    clusters = metrics.cluster_ids(patients.astype(str))
    counts = metrics.bootstrap_counts(clusters.max() + 1, 50, rng)
    weights = counts[:, clusters]
    for p in range(30):
        rows = np.flatnonzero(patients == p)
        assert (weights[:, rows] == weights[:, rows[:1]]).all()  # every row of a patient: same count
    assert (counts.sum(1) == 30).all()  # K draws per replicate


def _binormal(rng, n_pos, n_neg, d):
    """Scores N(0,1) for negatives, N(d,1) for positives: true AUROC = Phi(d / sqrt 2)."""
    y = np.r_[np.ones(n_pos), np.zeros(n_neg)]
    s = np.r_[rng.normal(d, 1, n_pos), rng.normal(0, 1, n_neg)]
    return y, s


def test_bootstrap_interval_covers_the_truth():
    from scipy.stats import norm

    rng = np.random.default_rng(3)
    d = 1.0
    truth = norm.cdf(d / np.sqrt(2))
    covered = 0
    sims = 200
    for k in range(sims):
        y, s = _binormal(rng, 60, 90, d)
        reps = metrics.bootstrap_aurocs(y[:, None], [s[:, None]], np.ones((150, 1)), np.arange(150), 400, seed=k)[0]
        iv = metrics.percentile_interval(metrics.auroc(y, s), reps[:, 0], 0.95)
        covered += iv.low <= truth <= iv.high
    assert 0.90 * sims <= covered <= 0.99 * sims, covered


def _paired(rng, n_pos, n_neg, d, noise):
    """Two models' scores sharing a patient effect: each = latent + independent noise."""
    y, latent = _binormal(rng, n_pos, n_neg, d)
    return y, latent + rng.normal(0, noise, len(y)), latent + rng.normal(0, noise, len(y))


def test_paired_test_under_the_null_rejects_rarely():
    from chexcut.evaluation.evaluate import EvalRows, evaluate

    rng = np.random.default_rng(4)
    rejections = 0
    sims = 200
    for k in range(sims):
        y, a, b = _paired(rng, 50, 70, 1.0, 0.8)  # exchangeable: same distribution
        n = len(y)
        es = EvalRows([str(i) for i in range(n)], ("Edema",), y[:, None], np.ones((n, 1)), np.arange(n), np.arange(n))
        r = evaluate(es, a[:, None], bootstrap=300, seed=k, compare=b[:, None], cluster="none")
        rejections += r["compare"]["labels"][0]["p"] < 0.05
    assert rejections <= 0.10 * sims, rejections


def test_paired_test_detects_a_real_difference():
    from chexcut.evaluation.evaluate import EvalRows, evaluate

    rng = np.random.default_rng(5)
    hits = 0
    for k in range(20):
        y, latent = _binormal(rng, 80, 120, 1.5)
        good = latent + rng.normal(0, 0.3, len(y))
        bad = latent + rng.normal(0, 2.0, len(y))
        n = len(y)
        es = EvalRows([str(i) for i in range(n)], ("Edema",), y[:, None], np.ones((n, 1)), np.arange(n), np.arange(n))
        r = evaluate(es, good[:, None], bootstrap=300, seed=k, compare=bad[:, None], cluster="none")
        c = r["compare"]["labels"][0]
        hits += c["p"] < 0.05 and c["delta"] > 0
        d = evaluate(es, good[:, None], bootstrap=0, compare=bad[:, None], method="delong")
        assert d["compare"]["labels"][0]["p"] < 0.05
    assert hits >= 18


def test_delong_hand_checked_example():
    """y = 1,1,0,0; s = .9,.4,.5,.1: V10 = (1, .5), V01 = (.5, 1) -> var = .125/2 + .125/2."""
    aucs, cov = metrics.delong(np.array([1, 1, 0, 0]), [np.array([0.9, 0.4, 0.5, 0.1])])
    assert aucs[0] == pytest.approx(0.75)
    assert cov[0, 0] == pytest.approx(0.125)


def test_delong_auc_matches_sklearn_and_identical_models_have_no_p():
    rng = np.random.default_rng(6)
    y = rng.integers(0, 2, 300)
    s = rng.integers(0, 20, 300).astype(float)
    aucs, _ = metrics.delong(y, [s])
    assert aucs[0] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    t = metrics.delong_test(y, s, s)  # zero variance: undefined, never p = 0 (nor a tidy CI)
    assert t.delta == 0 and t.p is None and t.ci_low is None and "zero DeLong variance" in t.reason


def test_bootstrap_p_value():
    assert metrics.bootstrap_p(np.full(999, 0.1)) == pytest.approx(2 / 1000)
    assert metrics.bootstrap_p(np.r_[np.full(500, -0.1), np.full(500, 0.1)]) == 1.0


def test_chunking_changes_nothing_but_memory():
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, (200, 3))
    s = rng.random((200, 3))
    m = np.ones((200, 3))
    a = metrics.bootstrap_aurocs(y, [s], m, np.arange(200), 64, seed=1, chunk=16)[0]
    b = metrics.bootstrap_aurocs(y, [s], m, np.arange(200), 64, seed=1, chunk=64)[0]
    assert np.array_equal(a, b)  # the same resamples whether drawn 16 or 64 at a time
    assert not np.array_equal(a, metrics.bootstrap_aurocs(y, [s], m, np.arange(200), 64, seed=2, chunk=16)[0])


def test_the_curve_primitive_is_scikit_learns_binary_clf_curve():
    """descending_ties + cumulative counts at its ends = scikit-learn's curve (roc_curve without dropping points:
    its _binary_clf_curve's tps, fps, thresholds), with ties and sample weights; operating.Curve (ROC points,
    operating points) is built on it."""
    from sklearn.metrics import roc_curve

    from chexcut.evaluation.metrics import descending_ties
    from chexcut.evaluation.operating import Curve

    rng = np.random.default_rng(5)
    y = rng.random(300) < 0.3
    s = np.round(rng.random(300), 2)  # many ties
    w = rng.integers(1, 4, 300).astype(float)  # (scikit-learn drops zero-weight rows before its curve)
    fpr, tpr, thr = roc_curve(y, s, sample_weight=w, drop_intermediate=False)  # its _binary_clf_curve, scaled
    tps, fps, thr = tpr[1:] * (w * y).sum(), fpr[1:] * (w * ~y).sum(), thr[1:]
    order, ends = descending_ties(s)
    assert np.array_equal(s[order][ends], thr)
    assert np.allclose(np.cumsum((w * y)[order])[ends], tps) and np.allclose(np.cumsum((w * ~y)[order])[ends], fps)
    tp, fp = Curve(y.astype(float), s, np.arange(300)).counts(w[None, :])
    assert np.allclose(tp[0, 1:], tps) and np.allclose(fp[0, 1:], fps)
