"""Shared helpers of the toolbox: SSP template files, spectral-resolution bookkeeping, constants."""
from __future__ import annotations

import functools
import os

import numpy as np

C_KMS = 299792.458
SIGMA_TO_FWHM = np.sqrt(8.0 * np.log(2.0))
TEMPLATE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "templates")
TEMPLATE_FILES = {"miuscat": "spectra_miuscat_mangadap.npz", "bc03": "spectra_bc03mpajhu_mangadap.npz"}

# Nominal SDSS-I/II spectrograph resolution (FWHM, Angstrom, observed frame), the median of the
# `wdisp` column (2.355 * wdisp * pixel width) of the real fixture spectra: ~2.3 A in the blue arm,
# ~3.3 A in the red arm (dichroic at ~6000 A). R ~ 1700 at 4000 A, ~2600 at 8500 A.
_SDSS_FWHM_NODES = (np.array([3800.0, 5600.0, 5900.0, 6200.0, 7500.0, 9300.0]),
                    np.array([2.30, 2.45, 2.80, 3.20, 3.25, 3.45]))


def sdss_fwhm(wave):
    """Nominal SDSS-I/II instrumental FWHM (Angstrom) at observed wavelength ``wave`` (Angstrom)."""
    return np.interp(np.asarray(wave, dtype=float), *_SDSS_FWHM_NODES)


def observed_fwhm(wave, fwhm_inst=None, extra_sigma=0.0):
    """Total observed-frame FWHM per pixel: instrument (+) an extra Gaussian smoothing (sigma, Angstrom).

    ``fwhm_inst``: None (nominal SDSS curve), a scalar, or an array matching ``wave`` (Angstrom).
    """
    wave = np.asarray(wave, dtype=float)
    if fwhm_inst is None:
        f = sdss_fwhm(wave)
    else:
        f = np.broadcast_to(np.asarray(fwhm_inst, dtype=float), wave.shape)
    if np.any(~np.isfinite(f)) or np.any(f < 0):
        raise ValueError(f"fwhm_inst: must be finite and >= 0 (min {np.nanmin(f)})")
    if not np.isfinite(extra_sigma) or extra_sigma < 0:
        raise ValueError(f"extra_sigma: must be finite and >= 0 (got {extra_sigma})")
    return np.sqrt(f ** 2 + (SIGMA_TO_FWHM * extra_sigma) ** 2)


@functools.lru_cache(maxsize=4)
def load_ssp(name: str):
    """Load a project SSP library: dict(templates (L, n_age, n_met), lam (AIR, rest), ages, metals, fwhm)."""
    path = os.path.join(TEMPLATE_DIR, TEMPLATE_FILES[name])
    with np.load(path) as d:
        out = {k: np.array(d[k]) for k in ("templates", "lam", "ages", "metals", "fwhm")}
    out["name"] = name
    return out

