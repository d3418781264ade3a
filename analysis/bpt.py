"""BPT ([NII]/Halpha vs [OIII]/Hbeta) classification, vectorised.

x = log10([NII]6584 / Halpha), y = log10([OIII]5007 / Hbeta).
Kauffmann et al. (2003): star-forming below y = 0.61 / (x - 0.05) + 1.30 (and x < 0.05).
Kewley et al. (2001): AGN above y = 0.61 / (x - 0.47) + 1.19 (or x >= 0.47).
Composite in between.
"""
from __future__ import annotations

import numpy as np

__all__ = ["BPT_NAMES", "STAR_FORMING", "COMPOSITE", "AGN", "UNCLASSIFIED", "kauffmann03", "kewley01",
           "bpt_xy", "classify", "classify_fit", "BPT_LINES"]

#: FitResult line names of the BPT lines, in ``classify``'s argument order.
BPT_LINES = ("[NII]6584", "Halpha", "[OIII]5007", "Hbeta")

STAR_FORMING, COMPOSITE, AGN, UNCLASSIFIED = 0, 1, 2, -1
BPT_NAMES = {STAR_FORMING: "star-forming", COMPOSITE: "composite", AGN: "AGN", UNCLASSIFIED: "unclassified"}


def kauffmann03(x):
    """Kauffmann et al. (2003) demarcation y(x); NaN for x >= 0.05 (the curve's asymptote)."""
    x = np.asarray(x, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x < 0.05, 0.61 / (x - 0.05) + 1.30, np.nan)


def kewley01(x):
    """Kewley et al. (2001) maximum-starburst line y(x); NaN for x >= 0.47."""
    x = np.asarray(x, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x < 0.47, 0.61 / (x - 0.47) + 1.19, np.nan)


def bpt_xy(flux_nii, flux_ha, flux_oiii, flux_hb):
    """Return (x, y) = (log10 [NII]/Ha, log10 [OIII]/Hb); NaN where a ratio is not positive."""
    with np.errstate(divide="ignore", invalid="ignore"):
        rx = np.asarray(flux_nii, float) / np.asarray(flux_ha, float)
        ry = np.asarray(flux_oiii, float) / np.asarray(flux_hb, float)
        x = np.where(rx > 0, np.log10(np.where(rx > 0, rx, 1.0)), np.nan)
        y = np.where(ry > 0, np.log10(np.where(ry > 0, ry, 1.0)), np.nan)
    return x, y


def classify(flux_nii, flux_ha, flux_oiii, flux_hb, err_nii=None, err_ha=None, err_oiii=None,
             err_hb=None, min_snr=3.0, unreliable=None):
    """Classify galaxies on the BPT diagram.

    Parameters
    ----------
    flux_nii, flux_ha, flux_oiii, flux_hb : array_like
        Line fluxes of [NII]6584, Halpha, [OIII]5007, Hbeta (any common unit).
    err_* : array_like, optional
        1-sigma errors. When all four are given, a galaxy is classified only if every line has
        S/N >= ``min_snr``; without errors, only positive finite fluxes are required.
    min_snr : float
        Minimum signal-to-noise of each of the four lines.
    unreliable : array_like of bool, optional
        True where any of the four lines is not a measurement (e.g. its pPXF gas component is at a sigma
        bound, ``FitResult.line_at_bound``): such galaxies are unclassifiable whatever their S/N.

    Returns
    -------
    codes : int array: 0 star-forming, 1 composite, 2 AGN, -1 unclassifiable (see ``BPT_NAMES``).
    """
    f = [np.asarray(a, dtype=float) for a in (flux_nii, flux_ha, flux_oiii, flux_hb)]
    f = np.broadcast_arrays(*f)
    usable = np.ones(f[0].shape, dtype=bool)
    for a in f:
        usable &= np.isfinite(a) & (a > 0)
    errs = (err_nii, err_ha, err_oiii, err_hb)
    if all(e is not None for e in errs):
        for a, e in zip(f, errs):
            e = np.broadcast_to(np.asarray(e, dtype=float), a.shape)
            with np.errstate(divide="ignore", invalid="ignore"):
                usable &= np.isfinite(e) & (e > 0) & (a / e >= min_snr)
    elif any(e is not None for e in errs):
        raise ValueError("err_*: give all four line errors or none")
    if unreliable is not None:
        usable &= ~np.broadcast_to(np.asarray(unreliable, dtype=bool), usable.shape)
    x, y = bpt_xy(*f)
    below_k03 = (x < 0.05) & (y < kauffmann03(x))
    below_k01 = (x < 0.47) & (y < kewley01(x))
    codes = np.where(below_k03, STAR_FORMING, np.where(below_k01, COMPOSITE, AGN))
    codes = np.where(usable & np.isfinite(x) & np.isfinite(y), codes, UNCLASSIFIED)
    return codes.astype(np.int64)


def classify_fit(fit, min_snr=3.0):
    """BPT class of one ``analysis.fitting.FitResult`` (its lines, errors and bound flags).

    Unclassifiable (-1) when the fit failed, a line is missing, below ``min_snr``, or comes from a gas
    component at a pPXF sigma bound (``fit.line_at_bound``).
    """
    if not fit.success:
        return UNCLASSIFIED
    f = [fit.lines.get(k, np.nan) for k in BPT_LINES]
    e = [fit.line_errors.get(k, np.nan) for k in BPT_LINES]
    bound = any(fit.line_at_bound.get(k, False) for k in BPT_LINES)
    return int(classify(*f, *e, min_snr=min_snr, unreliable=bound))
