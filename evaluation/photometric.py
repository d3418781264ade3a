"""Image aperture photometry and a gradient-boosted photometric predictor (the ``photometric`` baseline).

How much of the spectrum's science can a classical method read off the 5-band images? This module
measures deterministic circular-aperture photometry on the survey's 64x64 ugriz cutouts (nanomaggies,
0.396"/px), turns it into features (asinh magnitudes, colours, concentrations, colour gradients,
second-moment size and ellipticity) and fits scikit-learn ``HistGradientBoosting`` models: regressors
for the continuous truth columns, a classifier for the BPT class.

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
from functools import lru_cache

import numpy as np
from threadpoolctl import threadpool_limits

from datasets.schema import BANDS, IMAGE_SIZE, N_BANDS, PIXEL_SCALE_ARCSEC

#: aperture RADII in arcsec; 1.5" is the SDSS fibre radius, 9" still fits inside the sky annulus
APERTURE_RADII_ARCSEC = (1.0, 1.5, 2.5, 4.0, 6.0, 9.0)
#: sky annulus (inner, outer radius, arcsec): beyond the largest aperture, inside the 64 px cutout
SKY_ANNULUS_ARCSEC = (9.6, 12.3)
#: width (arcsec) of the fixed Gaussian weight of the second moments (stable on noisy outskirts)
MOMENT_SIGMA_ARCSEC = 3.0
#: SDSS asinh-magnitude softening per band (Lupton et al. 1999; SDSS DR7 values b = 1.4, 0.9, 1.2, 1.8,
#: 7.4 x 1e-10 maggies), here in nanomaggies
ASINH_SOFTENING_NMGY = np.array([0.14, 0.09, 0.12, 0.18, 0.74])
#: continuous truth columns (evaluation.truth standard names) the regressors learn when present
REGRESSION_TARGETS = ("z", "dn4000", "sigma_v", "age_lw", "metallicity_lw", "ebv", "log_mstar")
#: targets learned in log10 (strictly positive, spanning decades; evaluate.py scores them in dex)
LOG_TARGETS = ("sigma_v", "age_lw")
#: integer truth columns learned by the classifier
CLASSIFICATION_TARGETS = ("bpt_class",)
#: default HistGradientBoosting settings: a fixed number of iterations (no early stopping, hence no random
#: internal validation split); 15-leaf trees cost half as much as sklearn's default 31 on these features
GB_PARAMS = {"max_iter": 200, "learning_rate": 0.08, "max_leaf_nodes": 15, "min_samples_leaf": 20,
             "l2_regularization": 1.0, "early_stopping": False}


# ----------------------------------------------------------------------------------------------------------
# photometry
# ----------------------------------------------------------------------------------------------------------
def circle_weights(radius_px: float, centre: tuple[float, float], size: int = IMAGE_SIZE,
                   sub: int = 16) -> np.ndarray:
    """Fraction of each pixel's area inside a circle, (size, size) float64.

    Pixel centres sit at integer coordinates (0-based, pixel k spans k-0.5..k+0.5); ``centre`` is (x, y)
    in the same coordinates. Each pixel is sampled on a ``sub`` x ``sub`` grid: the circle's area is right
    to 0.4 % at a 2.5 px radius and better for larger ones.
    """
    s = (np.arange(size * sub) + 0.5) / sub - 0.5
    inside = ((s[None, :] - centre[0]) ** 2 + (s[:, None] - centre[1]) ** 2) <= radius_px ** 2
    return inside.reshape(size, sub, size, sub).mean((1, 3))


@lru_cache(maxsize=8)
def _masks(radii_arcsec: tuple, annulus_arcsec: tuple, centre: tuple, moment_sigma_arcsec: float):
    """Weight masks (A + 6, 64, 64): apertures, then Gaussian-weighted 1, x, y, x^2, y^2, xy; sky mask."""
    to_px = 1.0 / PIXEL_SCALE_ARCSEC
    ap = [circle_weights(r * to_px, centre) for r in radii_arcsec]
    y, x = np.mgrid[:IMAGE_SIZE, :IMAGE_SIZE].astype(np.float64)
    dx, dy = x - centre[0], y - centre[1]
    g = np.exp(-(dx ** 2 + dy ** 2) / (2 * (moment_sigma_arcsec * to_px) ** 2))
    mom = [g, g * dx, g * dy, g * dx * dx, g * dy * dy, g * dx * dy]
    r = np.hypot(dx, dy)
    sky = (r >= annulus_arcsec[0] * to_px) & (r < annulus_arcsec[1] * to_px)
    return np.stack(ap + mom), sky


def measure_photometry(images, radii_arcsec=APERTURE_RADII_ARCSEC, annulus_arcsec=SKY_ANNULUS_ARCSEC,
                       centre: tuple[float, float] | None = None,
                       moment_sigma_arcsec: float = MOMENT_SIGMA_ARCSEC) -> dict:
    """Sky-subtracted aperture fluxes and second moments of a batch of ugriz cutouts.

    Parameters
    ----------
    images : array (N, 5, 64, 64)
        Cutouts in nanomaggies (the survey's /images).
    radii_arcsec, annulus_arcsec : sequences of float
        Aperture radii and the (inner, outer) radius of the sky annulus, arcsec.
    centre : (x, y) or None
        Aperture centre in pixels (pixel centres at integers). Default: the geometric centre (31.5, 31.5).
    moment_sigma_arcsec : float
        Width of the Gaussian weight of the moments.

    Returns
    -------
    dict with ``flux`` (N, 5, A) nanomaggies, ``sky`` (N, 5) nanomaggies/pixel (annulus median, already
    subtracted), ``area`` (A,) pixels, ``radii_arcsec`` (A,), and from the sky-subtracted r band:
    ``size`` (N,) arcsec (sqrt of the weighted trace moment), ``ellipticity`` (N,)
    (|Q_xx - Q_yy, 2 Q_xy| / (Q_xx + Q_yy)) and ``offset`` (N,) arcsec (light centroid from the centre).

    Notes
    -----
    Pixels are treated as uniform over their area, so a ~1 px radius aperture under-reads a peaked profile
    (-2.7 % at 1" radius for a Gaussian of sigma 1", -0.9 % for sigma 2.4"; tests/test_photometric.py);
    the features only need to be consistent, not absolute.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1:] != (N_BANDS, IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"images: shape {images.shape}, expected (N, {N_BANDS}, {IMAGE_SIZE}, {IMAGE_SIZE})")
    c = ((IMAGE_SIZE - 1) / 2.0,) * 2 if centre is None else tuple(float(v) for v in centre)
    w, sky_mask = _masks(tuple(radii_arcsec), tuple(annulus_arcsec), c, float(moment_sigma_arcsec))
    n_ap = len(radii_arcsec)
    # float32 throughout the pixel work: no float64 copy of the batch (the cast cost more than the sums),
    # and a float32 sum over 4096 pixels is good to ~1e-6 relative, far below the noise
    img = images.astype(np.float32, copy=False)
    sky = np.median(img[:, :, sky_mask], axis=-1).astype(np.float64)  # (N, 5): robust to neighbours
    raw = np.einsum("nbyx,kyx->nbk", img, w.astype(np.float32), optimize=True).astype(np.float64)
    raw -= sky[:, :, None] * w.sum((1, 2))[None, None, :]  # sky pedestal x each mask's total weight
    flux = raw[:, :, :n_ap]
    m0, mx, my, mxx, myy, mxy = np.moveaxis(raw[:, BANDS.index("r"), n_ap:], -1, 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        cx, cy = mx / m0, my / m0
        qxx, qyy, qxy = mxx / m0 - cx ** 2, myy / m0 - cy ** 2, mxy / m0 - cx * cy
        trace = qxx + qyy
        size = np.sqrt(np.where(trace > 0, trace, np.nan)) * PIXEL_SCALE_ARCSEC
        ell = np.hypot(qxx - qyy, 2 * qxy) / trace
    return {"flux": flux, "sky": sky, "area": w[:n_ap].sum((1, 2)), "radii_arcsec": np.asarray(radii_arcsec),
            "size": size, "ellipticity": np.where(trace > 0, ell, np.nan),
            "offset": np.hypot(cx, cy) * PIXEL_SCALE_ARCSEC}


def asinh_mag(flux_nmgy, softening_nmgy) -> np.ndarray:
    """SDSS asinh magnitude ("luptitude") of a flux in nanomaggies: finite for zero and negative fluxes.

    mu = 22.5 - 2.5/ln(10) [asinh(f / 2b) + ln b], which tends to 22.5 - 2.5 log10 f for f >> b.
    """
    f = np.asarray(flux_nmgy, dtype=np.float64)
    b = np.asarray(softening_nmgy, dtype=np.float64)
    return 22.5 - 2.5 / np.log(10.0) * (np.arcsinh(f / (2.0 * b)) + np.log(b))


def photometric_features(phot: dict) -> tuple[np.ndarray, list[str]]:
    """Feature matrix (N, F) and names from :func:`measure_photometry`'s output.

    Per aperture k (radius in the name): asinh magnitudes in 5 bands and the 4 adjacent colours; per band
    the concentrations m(k) - m(largest); the 4 colour gradients (fibre-radius colour minus largest-aperture
    colour); r-band size, ellipticity and centroid offset. Trees cannot subtract features, hence the
    explicit differences.
    """
    flux, radii = phot["flux"], phot["radii_arcsec"]
    mag = asinh_mag(flux, ASINH_SOFTENING_NMGY[None, :, None])  # (N, 5, A)
    col = mag[:, :-1] - mag[:, 1:]  # (N, 4, A)
    cols, names = [], []
    for k, r in enumerate(radii):
        cols += [mag[:, :, k], col[:, :, k]]
        names += [f"mag_{b}_r{r:g}" for b in BANDS] + [f"{a}-{b}_r{r:g}" for a, b in zip(BANDS, BANDS[1:])]
    cols.append((mag[:, :, :-1] - mag[:, :, -1:]).reshape(len(mag), -1))  # band-major, as the names
    names += [f"conc_{b}_r{r:g}" for b in BANDS for r in radii[:-1]]
    k_fib = int(np.argmin(np.abs(np.asarray(radii) - 1.5)))
    cols.append(col[:, :, k_fib] - col[:, :, -1])
    names += [f"grad_{a}-{b}" for a, b in zip(BANDS, BANDS[1:])]
    cols.append(np.stack([phot["size"], phot["ellipticity"], phot["offset"]], axis=1))
    names += ["size_r", "ellipticity_r", "offset_r"]
    return np.concatenate(cols, axis=1), names


def survey_features(survey_path, rows=None, chunk: int = 2048) -> tuple[np.ndarray, list[str]]:
    """Features of survey rows ``rows`` (default all; any order, repeats allowed), read ``chunk`` at a time.

    Opens the file through :func:`datasets.schema.open_survey` (validated); only /images is read.
    The same rows read in the same chunks give bit-identical features; in other chunks they agree to
    ~1e-7 mag (float32 BLAS blocking in :func:`measure_photometry`).
    """
    from datasets.schema import open_survey

    with open_survey(survey_path) as f:
        n = f["images"].shape[0]
        rows = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= n):
            bad = rows[(rows < 0) | (rows >= n)][0]
            raise ValueError(f"{survey_path}: rows: value {bad} outside 0..{n - 1}")
        uniq, inv = np.unique(rows, return_inverse=True)
        parts, names = [], []
        for s in range(0, len(uniq), chunk):
            idx = uniq[s:s + chunk]
            if idx[-1] - idx[0] + 1 == len(idx):  # contiguous: one slice read (the common, fast case)
                img = f["images"][int(idx[0]):int(idx[-1]) + 1]
            else:
                img = f["images"][idx]
            x, names = photometric_features(measure_photometry(img))
            parts.append(x)
    if not parts:
        return np.zeros((0, 0)), names
    return np.concatenate(parts)[inv], names


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
            model.classifiers[name] = HistGradientBoostingClassifier(**kw).fit(x[ok], y[ok].astype(np.int64))
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
