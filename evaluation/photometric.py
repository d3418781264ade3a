"""Image aperture photometry and a gradient-boosted photometric predictor (the ``photometric`` baseline).

How much of the spectrum's science can a classical method read off the 5-band images? This module
measures deterministic circular-aperture photometry on the survey's 64x64 ugriz cutouts (nanomaggies,
0.396"/px), turns it into features (asinh magnitudes, colours, concentrations, colour gradients,
second-moment size and ellipticity) and fits scikit-learn ``HistGradientBoosting`` models: regressors
for the continuous truth columns, a class-balanced classifier for the BPT class.

    phot = measure_photometry(images)                  # (N, 5, 64, 64) -> dict of arrays
    X, names = photometric_features(phot)              # (N, F) float64
    X, names = survey_features("data/mock_sdss.h5")    # both, chunked straight from a survey file
    model = fit_photometric(X[train], truth_subset, seed=0)
    pred = predict(model, X[test])                     # native units: z, dn4000, sigma_v (km/s), ...

Photometry is vectorised: the aperture and moment weight masks are built once (pixel areas inside
each circle, 16x16 sub-sampled) and applied to a whole batch with one ``einsum``; the sky is the
median of an outer annulus per galaxy and band. It reads only the schema's ``/images`` (and the
catalogue through :func:`evaluation.truth.load_truth`), so it works on any schema-v1 survey.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from threadpoolctl import threadpool_limits

from analysis.indices import READOUT_LICK
from datasets.photometry import (  # noqa: F401  (the photometry lives in datasets/; re-exported here)
    APERTURE_RADII_ARCSEC,
    ASINH_SOFTENING_NMGY,
    MOMENT_SIGMA_ARCSEC,
    SKY_ANNULUS_ARCSEC,
    asinh_mag,
    circle_weights,
    measure_photometry,
    photometric_features,
    survey_features,
)

#: continuous truth columns (evaluation.truth standard names) the regressors learn when present
REGRESSION_TARGETS = ("z", "dn4000", "sigma_v", "age_lw", "metallicity_lw", "ebv", "log_mstar") + tuple(
    f"lick_{n}" for n in READOUT_LICK)
#: targets learned in log10 (strictly positive, spanning decades; evaluate.py scores them in dex)
LOG_TARGETS = ("sigma_v", "age_lw")
#: integer truth columns learned by the classifier
CLASSIFICATION_TARGETS = ("bpt_class",)
#: default HistGradientBoosting settings: a fixed number of iterations (no early stopping, hence no random
#: internal validation split); 15-leaf trees cost half as much as sklearn's default 31 on these features
GB_PARAMS = {"max_iter": 200, "learning_rate": 0.08, "max_leaf_nodes": 15, "min_samples_leaf": 20,
             "l2_regularization": 1.0, "early_stopping": False}


# ----------------------------------------------------------------------------------------------------------
# gradient boosting
# ----------------------------------------------------------------------------------------------------------
@dataclass
class PhotometricModel:
    """Fitted HistGradientBoosting models, one per target (see :func:`fit_photometric`)."""

    regressors: dict = field(default_factory=dict)  # name -> HistGradientBoostingRegressor
    classifiers: dict = field(default_factory=dict)  # name -> HistGradientBoostingClassifier
    n_features: int = 0
    n_train: dict = field(default_factory=dict)  # name -> rows with a finite target used in the fit


def fit_photometric(features, targets: dict, seed: int = 0, regression=REGRESSION_TARGETS,
                    classification=CLASSIFICATION_TARGETS, params: dict | None = None,
                    threads: int | None = 1) -> PhotometricModel:
    """Fit one gradient-boosted model per target present in ``targets``.

    Parameters
    ----------
    features : array (N, F)
        E.g. from :func:`survey_features`; NaN allowed (HistGradientBoosting handles missing values).
    targets : dict name -> (N,) array
        Truth under :mod:`evaluation.truth`'s standard names (``load_truth``). Names in ``regression``
        get a regressor (``LOG_TARGETS`` fitted in log10), names in ``classification`` a classifier;
        other keys are ignored. Rows with a non-finite (or, for log targets, non-positive) target are
        left out of that target's fit; a target with fewer than 10 usable rows (or one class) is skipped.
    seed : int
        ``random_state`` of every model (the fits are deterministic for a seed).
    params : dict, optional
        Overrides of :data:`GB_PARAMS`.
    threads : int or None
        OpenMP threads of the fits (None: scikit-learn's default, all cores). One by default: on a
        shared, oversubscribed machine two spin-waiting OpenMP threads made the fits ~20x slower.
    """
    with threadpool_limits(threads, user_api="openmp"):
        return _fit(features, targets, seed, regression, classification, params)


def _fit(features, targets, seed, regression, classification, params) -> PhotometricModel:
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    x = np.asarray(features, dtype=np.float64)
    kw = {**GB_PARAMS, **(params or {}), "random_state": seed}
    model = PhotometricModel(n_features=x.shape[1])
    for name in regression:
        if name not in targets:
            continue
        y = np.asarray(targets[name], dtype=np.float64)
        if name in LOG_TARGETS:
            with np.errstate(divide="ignore", invalid="ignore"):
                y = np.where(y > 0, np.log10(y), np.nan)
        ok = np.isfinite(y)
        if ok.sum() >= 10:
            model.regressors[name] = HistGradientBoostingRegressor(**kw).fit(x[ok], y[ok])
            model.n_train[name] = int(ok.sum())
    for name in classification:
        if name not in targets:
            continue
        y = np.asarray(targets[name])
        ok = np.isfinite(y.astype(np.float64))
        if ok.sum() >= 10 and np.unique(y[ok]).size >= 2:
            # class-balanced: the evaluation scores classes by balanced accuracy, and AGN are ~8 % of the
            # BPT classes; unweighted, the fit almost never predicts them (AGN-presence balanced accuracy
            # 0.51 in the reference models' 500-galaxy report; balanced: 0.60, benchmarks/
            # bench_mock_information.py, 5-fold on the 20 000-galaxy reference mock)
            model.classifiers[name] = HistGradientBoostingClassifier(**kw, class_weight="balanced").fit(
                x[ok], y[ok].astype(np.int64))
            model.n_train[name] = int(ok.sum())
    return model


def predict(model: PhotometricModel, features, threads: int | None = 1) -> dict:
    """Predictions of a :class:`PhotometricModel` in native units.

    Returns dict name -> (N,) array for every fitted target (``sigma_v`` in km/s, ``age_lw`` in Gyr: the
    log10 fits are exponentiated back), plus ``<name>_proba`` (N, K) and ``<name>_classes`` (K,) for each
    classifier; with a ``bpt_class`` classifier also ``agn`` (N,) = 1 where the predicted class is 2 (AGN).
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != model.n_features:
        raise ValueError(f"features: shape {x.shape}, the model was fitted on {model.n_features} features")
    with threadpool_limits(threads, user_api="openmp"):
        return _predict(model, x)


def _predict(model: PhotometricModel, x: np.ndarray) -> dict:
    out = {}
    for name, reg in model.regressors.items():
        y = reg.predict(x)
        out[name] = 10.0 ** y if name in LOG_TARGETS else y
    for name, clf in model.classifiers.items():
        out[name] = clf.predict(x)
        out[f"{name}_proba"] = clf.predict_proba(x)
        out[f"{name}_classes"] = clf.classes_
    if "bpt_class" in model.classifiers:
        out["agn"] = (out["bpt_class"] == 2).astype(np.int64)
    return out
