"""The paper's spectrum preprocessing — the one implementation used by training, generation and evaluation.

In this order, in the OBSERVED frame (redshift stays in the data):

1. keep 4000 Angstrom < lambda < 8500 Angstrom (lambda = 10**loglam, vacuum);
2. cubic-spline the flux onto a 1 Angstrom grid, 4000..8499 Angstrom (4500 points);
3. smooth with a Gaussian kernel, sigma = 2 px (2 Angstrom);
4. divide by the mean flux in 6900-6950 Angstrom;
5. natural log ("log" preprocessing; "none" keeps the linear flux);
6. low resolution = every 8th point (563 points); full resolution = all 4500.

Spectra with any non-positive processed flux are dropped (the log needs positive flux).

Everything is vectorised over spectra: one CubicSpline solve for a whole block of spectra that share a
wavelength grid (the schema's common SDSS grid), one Gaussian filter call along the wavelength axis.
"""
from __future__ import annotations

import numpy as np
from scipy.interpolate import CubicSpline
from scipy.ndimage import gaussian_filter1d

from surveys.description import SURVEY

# the grids come from the survey description (surveys/description.py); values shown are SDSS's
WAVE_MIN = SURVEY.wave_start  # 4000.0 Angstrom
WAVE_MAX = SURVEY.wave_end  # 8500.0
FULLRES_WAVE = SURVEY.wave_grid()  # 4500 points, Angstrom, observed frame, vacuum
LOWRES_STEP = SURVEY.lowres_stride  # 8
LOWRES_WAVE = FULLRES_WAVE[::LOWRES_STEP]  # 563 points
N_FULLRES = FULLRES_WAVE.size
N_LOWRES = LOWRES_WAVE.size
#: spectrum length per stage, {"lr": 563, "sr": 4500}: the one stage table
STAGE_LENGTHS = SURVEY.stage_lengths
SMOOTH_SIGMA = 2.0  # pixels of the 1 Angstrom grid
NORM_WINDOW = (6900.0, 6950.0)  # Angstrom
PREPROCESS_VERSION = 1  # bump when anything above changes: invalidates caches

_NORM_MASK = (FULLRES_WAVE >= NORM_WINDOW[0]) & (FULLRES_WAVE < NORM_WINDOW[1])


def _fill_masked(flux: np.ndarray, good: np.ndarray) -> np.ndarray:
    """Linearly interpolate each row's flux over pixels where ``good`` is False (SDSS masked pixels
    carry arbitrary values that a cubic spline would otherwise ring around)."""
    flux = flux.copy()
    x = np.arange(flux.shape[1])
    for i in np.flatnonzero((~good).any(axis=1) & good.any(axis=1)):
        g = good[i]
        flux[i, ~g] = np.interp(x[~g], x[g], flux[i, g])
    return flux


def preprocess_spectra(loglam: np.ndarray, flux: np.ndarray, ivar: np.ndarray | None = None,
                       ) -> dict[str, np.ndarray]:
    """Apply steps 1-4 to a block of spectra on one common log-lambda grid.

    Parameters
    ----------
    loglam : (L,) log10 wavelength in Angstrom (observed frame, vacuum), shared by all rows.
    flux : (N, L) flux density (any unit; 1e-17 erg/s/cm2/Angstrom for SDSS).
    ivar : (N, L) inverse variance, optional. Pixels with ivar <= 0 (and pixels whose flux or ivar is NaN
        or inf, with or without ivar) are interpolated over before the spline, and the ivar is carried
        to the 1 Angstrom grid (linearly interpolated variance, scaled
        by the normalisation) for chi^2 statistics.

    Returns
    -------
    dict with ``flux`` (N, 4500) normalised LINEAR flux (mean 1 in 6900-6950 Angstrom), ``ivar``
    (N, 4500) or None, ``norm`` (N,) the divisor in input units, and ``valid`` (N,) bool: finite,
    positive normalisation and every processed pixel > 0 (required by the log).
    """
    flux = np.atleast_2d(np.asarray(flux, dtype=np.float64))
    wave = 10.0 ** np.asarray(loglam, dtype=np.float64)
    keep = (wave > WAVE_MIN) & (wave < WAVE_MAX)
    if keep.sum() < 10 or wave[keep].min() > WAVE_MIN + 2 or wave[keep].max() < WAVE_MAX - 2:
        raise ValueError(f"loglam: grid {wave.min():.0f}-{wave.max():.0f} Angstrom does not cover "
                         f"{WAVE_MIN:.0f}-{WAVE_MAX:.0f} Angstrom")
    sel = flux[:, keep]
    good = np.isfinite(sel)  # non-finite pixels are masked (as ivar = 0) instead of breaking the spline
    if ivar is not None:
        ivar = np.atleast_2d(np.asarray(ivar, dtype=np.float64))
        ivar = np.where(np.isfinite(ivar) & np.isfinite(flux), ivar, 0.0)
        good &= ivar[:, keep] > 0
    if not good.all():
        sel = _fill_masked(sel, good)
        sel[~np.isfinite(sel).all(axis=1)] = 0.0  # no usable pixel at all: normalisation 0 -> invalid
    spline = CubicSpline(wave[keep], sel, axis=1)
    out = spline(FULLRES_WAVE)
    out = gaussian_filter1d(out, SMOOTH_SIGMA, axis=1)
    norm = out[:, _NORM_MASK].mean(axis=1)
    ok_norm = np.isfinite(norm) & (norm > 0)
    safe = np.where(ok_norm, norm, 1.0)
    out /= safe[:, None]
    valid = ok_norm & np.isfinite(out).all(axis=1) & (out > 0).all(axis=1)
    result = {"flux": out.astype(np.float32), "norm": norm.astype(np.float64), "valid": valid, "ivar": None}
    if ivar is not None:
        with np.errstate(divide="ignore"):
            var = np.where(ivar[:, keep] > 0, 1.0 / np.where(ivar[:, keep] > 0, ivar[:, keep], 1.0), np.inf)
        # linear interpolation of the variance; a pixel next to a masked one stays masked (inf)
        idx = np.searchsorted(wave[keep], FULLRES_WAVE).clip(1, keep.sum() - 1)
        w1 = wave[keep][idx - 1]
        w2 = wave[keep][idx]
        frac = ((FULLRES_WAVE - w1) / (w2 - w1)).clip(0, 1)
        v = var[:, idx - 1] * (1 - frac) + var[:, idx] * frac
        v = np.where(np.isinf(var[:, idx - 1]) | np.isinf(var[:, idx]), np.inf, v)
        result["ivar"] = (safe[:, None] ** 2 / v).astype(np.float32)
    return result


def to_model_space(flux_linear: np.ndarray, preprocessing: str = "log") -> np.ndarray:
    """Step 5: normalised linear flux -> the networks' space ("log" or "none")."""
    if preprocessing == "log":
        return np.log(flux_linear)
    if preprocessing == "none":
        return flux_linear
    raise ValueError(f"preprocessing: {preprocessing!r} is not 'log' or 'none'")


LOG_FLUX_MAX = 10.0  # e^10 = 22000x the 6900-6950 A mean: no real spectrum; caps diverged samples


def to_linear(x, preprocessing: str = "log"):
    """Inverse of :func:`to_model_space` (numpy arrays and torch tensors).

    Log values are capped at LOG_FLUX_MAX first, so a diverged sample of an untrained model gives a large
    but finite linear flux (and finite MSE) instead of inf.
    """
    if preprocessing == "log":
        if isinstance(x, np.ndarray):
            return np.exp(np.minimum(x, LOG_FLUX_MAX))
        return x.clamp(max=LOG_FLUX_MAX).exp()
    return x


#: how a low-res spectrum is made from a full-resolution one (``data.lowres``): "subsample" = every 8th
#: point (the paper); "bin" = the mean flux of the 8 Angstrom around each of those points (not in the paper)
LOWRES_MODES = ("subsample", "bin")
#: the "bin" kernel: an 8-pixel boxcar centred on pixel 8i (half weight on the two end pixels), flux
#: conserving
BIN_WEIGHTS = np.array([0.5] + [1.0] * (LOWRES_STEP - 1) + [0.5]) / LOWRES_STEP
#: the rms width (full-resolution pixels = Angstrom) of each mode's kernel, for fitters that model the
#: low-res spectrum's blur: none for subsampling, the second moment of BIN_WEIGHTS (~2.35 A) for "bin"
LOWRES_KERNEL_SIGMA = {
    "subsample": 0.0,
    "bin": float(np.sqrt(np.sum(BIN_WEIGHTS * (np.arange(BIN_WEIGHTS.size) - BIN_WEIGHTS.size // 2) ** 2)))}


def lowres(x, mode: str = "subsample"):
    """Step 6: a full-resolution spectrum (last axis, numpy) -> low-res, 4500 -> 563 points.

    ``mode`` "subsample" (the paper): every 8th point. "bin": at the same 563 wavelengths, the weighted mean
    of the 9 pixels around each (``BIN_WEIGHTS``; the first and last points repeat the edge pixel), so a
    line narrower than 8 A keeps its flux and its position within the bin instead of being sampled or
    missed depending on where it falls (aliasing)."""
    if mode == "subsample":
        return x[..., ::LOWRES_STEP]
    if mode != "bin":
        raise ValueError(f"data.lowres: {mode!r} is not one of {list(LOWRES_MODES)}")
    x = np.asarray(x)
    h = LOWRES_STEP // 2
    pad = [(0, 0)] * (x.ndim - 1) + [(h, h + LOWRES_STEP)]
    xp = np.pad(x.astype(np.float64), pad, mode="edge")
    n = -(-x.shape[-1] // LOWRES_STEP)
    out = sum(w * xp[..., j:j + LOWRES_STEP * n:LOWRES_STEP] for j, w in enumerate(BIN_WEIGHTS))
    return out.astype(x.dtype, copy=False)
