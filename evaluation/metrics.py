"""Scalar metrics of the evaluation (pure numpy; every function ignores NaN pairs).

Conventions: ``pred`` and ``true`` are (N,) arrays; a pair is used only if both are finite. Functions
return NaN when fewer than ``MIN_PAIRS`` pairs remain (no number is better than a noise number).
"""

from __future__ import annotations

import warnings

import numpy as np

MIN_PAIRS = 3
OUTLIER_DZ = 0.05  # catastrophic photo-z outlier: |dz| / (1 + z) > 0.05


def _pairs(pred, true):
    pred = np.asarray(pred, dtype=np.float64)
    true = np.asarray(true, dtype=np.float64)
    ok = np.isfinite(pred) & np.isfinite(true)
    return pred[ok], true[ok]


def sigma_nmad(z_pred, z_true) -> float:
    """Normalised median absolute deviation of dz/(1+z): 1.48 median(|dz - median(dz)| / (1 + z_true))."""
    p, t = _pairs(z_pred, z_true)
    if p.size < MIN_PAIRS:
        return float("nan")
    dz = p - t
    return float(1.48 * np.median(np.abs(dz - np.median(dz)) / (1.0 + t)))


def z_bias(z_pred, z_true) -> float:
    """Median of dz / (1 + z_true)."""
    p, t = _pairs(z_pred, z_true)
    return float(np.median((p - t) / (1.0 + t))) if p.size >= MIN_PAIRS else float("nan")


def outlier_fraction(z_pred, z_true, threshold: float = OUTLIER_DZ) -> float:
    """Fraction with |dz| / (1 + z_true) > threshold; a failed fit (NaN z_pred) counts as an outlier."""
    p = np.asarray(z_pred, dtype=np.float64)
    t = np.asarray(z_true, dtype=np.float64)
    ok = np.isfinite(t)
    if ok.sum() < MIN_PAIRS:
        return float("nan")
    bad = ~np.isfinite(p[ok]) | (np.abs(p[ok] - t[ok]) / (1.0 + t[ok]) > threshold)
    return float(bad.mean())


def pearson(x, y) -> float:
    """Pearson correlation coefficient (NaN if fewer than MIN_PAIRS pairs or a constant input)."""
    p, t = _pairs(x, y)
    if p.size < MIN_PAIRS or np.ptp(p) == 0 or np.ptp(t) == 0:  # constant input: no correlation defined
        return float("nan")
    return float(np.corrcoef(p, t)[0, 1])


def spearman(x, y) -> float:
    """Spearman rank correlation (Pearson of the ranks, ties averaged; NaN as :func:`pearson`)."""
    from scipy.stats import rankdata

    p, t = _pairs(x, y)
    if p.size < MIN_PAIRS or np.ptp(p) == 0 or np.ptp(t) == 0:
        return float("nan")
    return float(np.corrcoef(rankdata(p), rankdata(t))[0, 1])


def robust_scatter(pred, true) -> float:
    """1.4826 x median absolute deviation of (pred - true): a Gaussian-equivalent, outlier-robust sigma."""
    p, t = _pairs(pred, true)
    if p.size < MIN_PAIRS:
        return float("nan")
    d = p - t
    return float(1.4826 * np.median(np.abs(d - np.median(d))))


def median_bias(pred, true) -> float:
    """Median of (pred - true)."""
    p, t = _pairs(pred, true)
    return float(np.median(p - t)) if p.size >= MIN_PAIRS else float("nan")


def confusion_matrix(pred, true, labels) -> np.ndarray:
    """(K, K) counts, rows = true label, columns = predicted label, over ``labels`` (others ignored)."""
    pred = np.asarray(pred)
    true = np.asarray(true)
    idx = {lab: k for k, lab in enumerate(labels)}
    cm = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for p, t in zip(pred, true):
        if p in idx and t in idx:
            cm[idx[t], idx[p]] += 1
    return cm


def accuracy(pred, true) -> float:
    """Fraction of equal labels."""
    pred, true = np.asarray(pred), np.asarray(true)
    return float(np.mean(pred == true)) if true.size else float("nan")


def balanced_accuracy(pred, true) -> float:
    """Mean over the classes PRESENT in ``true`` of the per-class recall."""
    pred, true = np.asarray(pred), np.asarray(true)
    classes = np.unique(true)
    if classes.size == 0:
        return float("nan")
    return float(np.mean([np.mean(pred[true == c] == c) for c in classes]))


def interval_coverage(samples, truth, lo: float = 16.0, hi: float = 84.0) -> float:
    """Fraction of galaxies whose truth lies in the [lo, hi] percentile interval of its samples.

    ``samples`` (N, M), ``truth`` (N,). Rows with a NaN truth or fewer than 2 finite samples are skipped.
    """
    s = np.asarray(samples, dtype=np.float64)
    t = np.asarray(truth, dtype=np.float64)
    ok = np.isfinite(t) & (np.isfinite(s).sum(1) >= 2)
    if ok.sum() == 0:
        return float("nan")
    q = np.nanpercentile(s[ok], [lo, hi], axis=1)
    return float(np.mean((t[ok] >= q[0]) & (t[ok] <= q[1])))


def expected_coverage(m: int, lo: float = 16.0, hi: float = 84.0) -> float:
    """Coverage a CALIBRATED sampler reaches with the [lo, hi] percentile interval of ``m`` samples.

    numpy's linear-interpolated percentile p of m exchangeable samples sits, in expectation, at quantile
    (1 + p (m - 1)) / (m + 1) of the true distribution, so E[coverage] = (hi - lo)/100 x (m - 1)/(m + 1):
    0.34 for m = 3, 0.647 for m = 40 — not 0.68. Compare :func:`interval_coverage` with this number.
    """
    return (hi - lo) / 100.0 * (m - 1) / (m + 1)


def pit_values(samples, truth, seed: int = 0) -> np.ndarray:
    """Randomised probability integral transform of ``truth`` under each row's sample distribution.

    With M finite samples of which k lie below the truth (ties split at random), PIT = (k + U) / (M + 1),
    U ~ Uniform(0, 1): uniform on [0, 1] exactly when the truth is exchangeable with the samples (a
    calibrated sampler), for any M (the rank histogram of ensemble forecasting). NaN for rows with a NaN
    truth or no finite sample. ``samples`` (N, M), ``truth`` (N,); vectorised over the rows.
    """
    s = np.asarray(samples, dtype=np.float64)
    t = np.asarray(truth, dtype=np.float64)
    fin = np.isfinite(s)
    m = fin.sum(axis=1)
    below = (fin & (s < t[:, None])).sum(axis=1)
    ties = (fin & (s == t[:, None])).sum(axis=1)
    rng = np.random.default_rng(seed)
    u_tie, u = rng.uniform(size=(2,) + t.shape)
    k = below + np.floor(u_tie * (ties + 1))  # a uniformly random position among the tied samples
    return np.where(np.isfinite(t) & (m > 0), (k + u) / (m + 1), np.nan)


def pit_uniformity(pit, bins: int = 10) -> float:
    """Kolmogorov-Smirnov distance of the PIT values from Uniform(0, 1) (0 = perfectly calibrated)."""
    p = np.sort(np.asarray(pit, dtype=np.float64)[np.isfinite(pit)])
    if p.size == 0:
        return float("nan")
    n = p.size
    ecdf_hi = np.arange(1, n + 1) / n
    ecdf_lo = np.arange(0, n) / n
    return float(max(np.max(ecdf_hi - p), np.max(p - ecdf_lo)))


def pit_summary(pit, bins: int = 10) -> dict:
    """What a PIT sample says, for the report: ``n`` finite values, ``pit_histogram`` (counts in ``bins``
    equal bins), ``ks_5pct`` = 1.36 / sqrt(n) (the KS distance a calibrated sampler stays under 95 % of the
    time: smaller distances are noise), ``mean_pit`` (> 0.5: the truths sit above the candidates) and
    ``shape``: "flat" (KS distance under ``ks_5pct``), else "U-shaped (over-confident)" when BOTH outer
    bins hold more than their share (1/bins) by over 2 binomial sigma, "hump (under-confident)" when both
    hold less by as much, else "biased high" / "biased low" by the mean PIT (one-sided excess)."""
    p = np.asarray(pit, dtype=np.float64)
    p = p[np.isfinite(p)]
    n = int(p.size)
    hist = np.histogram(p, bins=bins, range=(0.0, 1.0))[0]
    if n == 0:
        return {"n": 0, "pit_histogram": hist.tolist(), "ks_5pct": float("nan"), "mean_pit": float("nan"),
                "shape": "no data"}
    ks, ks5 = pit_uniformity(p), 1.36 / np.sqrt(n)
    share = 1.0 / bins
    sd = np.sqrt(share * (1 - share) / n)  # binomial noise of one bin's share
    lo, hi = hist[0] / n, hist[-1] / n
    if ks <= ks5:
        shape = "flat"
    elif min(lo, hi) > share + 2 * sd:
        shape = "U-shaped (over-confident)"
    elif max(lo, hi) < share - 2 * sd:
        shape = "hump (under-confident)"
    else:
        shape = ("biased high (truth above candidates)" if p.mean() > 0.5
                 else "biased low (truth below candidates)")
    return {"n": n, "pit_histogram": hist.tolist(), "ks_5pct": float(ks5), "mean_pit": float(p.mean()),
            "shape": shape}


def spectral_errors(pred, obs, ivar=None) -> dict:
    """Per-galaxy MSE (linear normalised flux) and chi2/N with ``ivar`` (pixels with ivar > 0).

    Returns dict of (N,) arrays ``mse`` and ``chi2n`` (NaN without ivar).
    """
    pred = np.asarray(pred, dtype=np.float64)
    obs = np.asarray(obs, dtype=np.float64)
    mse = np.mean((pred - obs) ** 2, axis=-1)
    if ivar is None:
        return {"mse": mse, "chi2n": np.full(mse.shape, np.nan)}
    ivar = np.asarray(ivar, dtype=np.float64)
    good = ivar > 0
    n = good.sum(-1)
    chi2 = np.where(good, (pred - obs) ** 2 * ivar, 0.0).sum(-1)
    return {"mse": mse, "chi2n": np.where(n > 0, chi2 / np.maximum(n, 1), np.nan)}


def agn_decision(prob, prevalence: float) -> np.ndarray:
    """AGN yes/no from the CNN's probability: ``prob > prevalence`` (0.5 where the prevalence is unknown).

    The evaluation scores AGN presence by balanced accuracy; for a calibrated probability the decision
    that maximises it is p(AGN | image) > the training prevalence, not > 0.5 (AGN are ~8 % of the BPT
    classes: at 0.5 the reference CNN never said AGN, balanced accuracy 0.50)."""
    t = prevalence if np.isfinite(prevalence) and 0 < prevalence < 1 else 0.5
    return (np.asarray(prob) > t).astype(np.int64)


N_BOOTSTRAP = 1000  # paired bootstrap draws over galaxies (evaluate.py: chain vs best baseline)


def paired_interval(stat, a: tuple, b: tuple, n_boot: int = N_BOOTSTRAP, seed: int = 0,
                    level: float = 0.95, change=None) -> tuple[float, float] | None:
    """Percentile interval of ``stat(*a) - stat(*b)`` over ``n_boot`` bootstrap resamples of the galaxies,
    the SAME galaxies for both (``a`` and ``b`` are tuples of galaxy-aligned arrays of one length); draws
    where either statistic is undefined (NaN) are left out. None if the arrays are not aligned or fewer than
    half of the draws are defined. ``change(stat_a, stat_b)`` replaces the difference (e.g. a ratio - 1).
    The resamples depend on ``seed`` and the number of galaxies only, so calls with one seed on one set of
    galaxies share them."""
    change = change or (lambda x, y: x - y)
    arrays = [np.asarray(x) for x in (*a, *b)]
    n = arrays[0].shape[0] if arrays and arrays[0].ndim else 0
    if n < 2 or any(x.ndim == 0 or x.shape[0] != n for x in arrays):
        return None
    rng = np.random.default_rng(seed)
    diffs = np.full(n_boot, np.nan)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        for k in range(n_boot):
            i = rng.integers(0, n, n)
            diffs[k] = change(stat(*(x[i] for x in a)), stat(*(x[i] for x in b)))
    ok = np.isfinite(diffs)
    if ok.sum() < n_boot / 2:
        return None
    lo, hi = np.percentile(diffs[ok], [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)
