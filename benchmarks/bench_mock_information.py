"""The survey's photometric information content: gradient boosting on image aperture photometry, 5-fold CV.

    python benchmarks/bench_mock_information.py                          # builds a 5000-galaxy seed-1 mock
    python benchmarks/bench_mock_information.py --survey data/mock_sdss.h5 [--n 5000] [--folds 5]

How much of what the spectra say can a classical method read off the images alone? The script measures
aperture photometry on /images (evaluation.photometric), fits HistGradientBoosting per truth column in
K-fold cross-validation over the first ``--n`` galaxies (all splits: this is a property of the survey,
not of a trained network), and prints one JSON object: per target the gradient-boosted and the
always-median (always-majority for classes) scores of the out-of-fold predictions, and the wall times.
z: sigma_NMAD, outlier fraction (|dz|/(1+z) > 0.05), bias (evaluation.metrics); continuous targets:
Pearson and Spearman rho and a robust scatter (log10 for sigma_v and age_lw); bpt_class (class-balanced
fit): accuracy, balanced accuracy and the balanced accuracy of AGN presence (class 2 or not). Wall times:
features (HDF5 reads included, and photometry alone on 2000 cutouts in memory) and the CV fits (one
OpenMP thread). ``--catalogue-mags`` adds a run on the catalogue's noiseless total magnitudes
(mag_u..mag_z and their colours, when the survey has them): what perfect total photometry would give.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets.schema import validate_survey  # noqa: E402
from evaluation import metrics as M  # noqa: E402
from evaluation.photometric import (  # noqa: E402
    CLASSIFICATION_TARGETS,
    LOG_TARGETS,
    REGRESSION_TARGETS,
    fit_photometric,
    measure_photometry,
    photometric_features,
    predict,
    survey_features,
)
from evaluation.truth import load_truth  # noqa: E402


def cross_validate(x, truth: dict, folds: int, seed: int) -> dict:
    """Out-of-fold gradient-boosted and median/majority predictions for every target in ``truth``.

    Returns dict name -> (gb, baseline) arrays of the ``truth`` length (native units).
    """
    n = len(x)
    fold = np.random.default_rng(seed).permutation(n) % folds
    names = [k for k in REGRESSION_TARGETS + CLASSIFICATION_TARGETS if k in truth]
    out = {k: (np.full(n, np.nan), np.full(n, np.nan)) for k in names}
    for k in range(folds):
        tr, te = fold != k, fold == k
        model = fit_photometric(x[tr], {c: truth[c][tr] for c in names}, seed=seed)
        pred = predict(model, x[te])
        for c in names:
            y = np.asarray(truth[c][tr], dtype=np.float64)
            y = y[np.isfinite(y)]
            if c in CLASSIFICATION_TARGETS:
                vals, counts = np.unique(y, return_counts=True)
                base = vals[np.argmax(counts)]
            else:
                base = np.median(y)
            out[c][1][te] = base
            if c in pred:
                out[c][0][te] = pred[c]
    return out


def score(name: str, pred, true) -> dict:
    """The benchmark's numbers for one target (see the module docstring)."""
    true = np.asarray(true, dtype=np.float64)
    if name == "z":
        return {"sigma_nmad": M.sigma_nmad(pred, true), "outlier_frac": M.outlier_fraction(pred, true),
                "bias": M.z_bias(pred, true)}
    if name in CLASSIFICATION_TARGETS:
        out = {"accuracy": M.accuracy(pred, true), "balanced_accuracy": M.balanced_accuracy(pred, true)}
        if name == "bpt_class":  # AGN presence (class 2 or not), the evaluation's AGN metric
            ok = np.isfinite(true)
            out["agn_balanced_accuracy"] = M.balanced_accuracy((pred[ok] == 2).astype(int),
                                                               (true[ok] == 2).astype(int))
        return out
    if name in LOG_TARGETS:
        with np.errstate(divide="ignore", invalid="ignore"):
            pred, true = np.log10(pred), np.where(true > 0, np.log10(true), np.nan)
    return {"pearson": M.pearson(pred, true), "spearman": M.spearman(pred, true),
            "robust_scatter": M.robust_scatter(pred, true)}


def _rounded(d):
    return {k: (None if not np.isfinite(v) else round(float(v), 4)) for k, v in d.items()}


def run(x, truth, folds, seed) -> tuple[dict, float]:
    """Cross-validate and score every target; returns (scores, fit seconds)."""
    t0 = time.perf_counter()
    cv = cross_validate(x, truth, folds, seed)
    sec = time.perf_counter() - t0
    res = {}
    for name, (gb, base) in cv.items():
        key = f"log10_{name}" if name in LOG_TARGETS else name
        base_score = score(name, base, truth[name])
        for r in ("pearson", "spearman"):
            if r in base_score:
                # a constant per fold: pooled over folds its "correlation" only reflects which fold's
                # training median was higher (slightly negative); it has none
                base_score[r] = float("nan")
        res[key] = {"gradient_boosting": _rounded(score(name, gb, truth[name])),
                    "median" if name not in CLASSIFICATION_TARGETS else "majority": _rounded(base_score),
                    "n": int(np.isfinite(np.asarray(truth[name], dtype=np.float64)).sum())}
    return res, sec


def catalogue_features(truth: dict) -> np.ndarray | None:
    """Noiseless total magnitudes and adjacent colours from the catalogue (mag_u..mag_z), or None."""
    cols = [f"mag_{b}" for b in "ugriz"]
    if not all(c in truth for c in cols):
        return None
    m = np.stack([truth[c] for c in cols], axis=1).astype(np.float64)
    return np.concatenate([m, m[:, :-1] - m[:, 1:]], axis=1)


def photometry_rate(survey, n: int) -> float:
    """Galaxies/s of photometry + features alone, on ``n`` cutouts already in memory (no HDF5 reads)."""
    from datasets.schema import open_survey

    with open_survey(survey) as f:
        img = f["images"][:n]
    t0 = time.perf_counter()
    photometric_features(measure_photometry(img))
    return n / (time.perf_counter() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--survey", default=None, help="survey HDF5 (default: build a mock, surveys.mock.make)")
    ap.add_argument("--n", type=int, default=5000, help="galaxies (first n rows; the mock size if built)")
    ap.add_argument("--seed", type=int, default=1, help="mock seed and CV seed (default: %(default)s)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2, help="mock build workers")
    ap.add_argument("--catalogue-mags", action="store_true",
                    help="also run on the catalogue's noiseless total magnitudes")
    a = ap.parse_args(argv)
    if a.n < 10 * a.folds or a.folds < 2:
        ap.error(f"--n/--folds: need folds >= 2 and n >= 10 x folds, got n={a.n}, folds={a.folds}")
    if a.survey is not None and not Path(a.survey).exists():
        print(f"error: {a.survey}: file: does not exist", file=sys.stderr)
        return 2
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        survey, built_s = a.survey, None
        if survey is None:
            from surveys.mock.make import main as make_mock

            survey = os.path.join(tmp, "mock.h5")
            t0 = time.perf_counter()
            with open(os.devnull, "w") as null:  # keep stdout for the one JSON object
                stdout, sys.stdout = sys.stdout, null
                try:
                    make_mock(["--n", str(a.n), "--out", survey, "--seed", str(a.seed),
                               "--n-val", str(min(512, a.n // 10)), "--workers", str(a.workers)])
                finally:
                    sys.stdout = stdout
            built_s = time.perf_counter() - t0
        n = min(a.n, validate_survey(survey, check_values=False)["n_galaxies"])
        t0 = time.perf_counter()
        x, _ = survey_features(survey, np.arange(n))
        feat_s = time.perf_counter() - t0
        truth = load_truth(survey, np.arange(n))
        rate = photometry_rate(survey, min(n, 2000))
    res, fit_s = run(x, truth, a.folds, a.seed)
    out = {"benchmark": "mock_information", "survey": a.survey or f"mock n={n} seed={a.seed} (built)",
           "n": n, "folds": a.folds, "seed": a.seed, "n_features": x.shape[1],
           "cpu_count": os.cpu_count(), "load_avg_1min_at_start": round(load, 2),
           "seconds": {"mock_build": None if built_s is None else round(built_s, 1),
                       "features": round(feat_s, 2), "cv_fits": round(fit_s, 1)},
           "features_galaxies_per_s": {"incl_hdf5_reads": round(n / feat_s, 1),
                                       "in_memory_2000": round(rate, 1)}, "targets": res}
    if a.catalogue_mags:
        xc = catalogue_features(truth)
        if xc is not None:
            out["catalogue_mags"], _ = run(xc, truth, a.folds, a.seed)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
