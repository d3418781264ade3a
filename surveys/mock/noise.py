"""SDSS-like noise for the mock: fibre sky spectrum, spectrograph throughput, image sky and gain.

The numbers are approximate descriptions of SDSS-I/II (dark APO sky, the blue/red arms with the
dichroic near 6000 A); they set realistic relative noise across the spectrum, and one scale
(``SPEC_COUNTS_SCALE``) sets the overall S/N (main-sample median S/N per pixel ~10-20).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from surveys.description import SDSS
from surveys.mock.sed import C_KMS, sigma_inst_kms

# Dark-sky surface brightness at APO (AB mag / arcsec^2) at the band effective wavelengths
SKY_SB = {3550.0: 22.1, 4690.0: 21.9, 6170.0: 20.9, 7480.0: 20.1, 8930.0: 18.9}
FIBRE_AREA_ARCSEC2 = np.pi * 1.5**2

# Strong sky lines (vacuum A) and their integrated fibre fluxes (1e-17 erg/s/cm2)
SKY_LINES = [(5578.9, 700.0), (5891.6, 150.0), (5897.6, 120.0), (6302.0, 220.0), (6365.5, 80.0)]
# OH Meinel bands (vacuum A ranges) populated with a fixed pseudo-random line list (not the galaxy seed)
OH_BANDS = [(6830, 6990, 25), (7240, 7420, 35), (7750, 8030, 45), (8280, 8560, 45), (8760, 9200, 60)]
OH_SEED = 20240613

# Relative spectrograph throughput (anchor points, linear interpolation): low in the blue, a dip at the
# dichroic crossover near 6000 A, falling again beyond 8500 A.
THROUGHPUT = np.array([[3800, 0.22], [4100, 0.55], [4600, 0.9], [5200, 1.0], [5750, 0.9], [5950, 0.55],
                       [6150, 0.85], [6800, 1.0], [7800, 0.95], [8500, 0.8], [9200, 0.45]])
SPEC_COUNTS_SCALE = 30.0  # photo-electrons per (1e-17 erg/s/cm2/A) per pixel at 5000 A, full throughput
READ_NOISE_E = 6.0  # effective read noise + dark per pixel (electrons)
SKY_SUB_RESID = 0.03  # fractional sky-line subtraction residual (added to the variance)

# Imaging: photo-electrons per nanomaggy in one 53.9 s drift-scan exposure, read noise + dark (electrons per
# pixel), median PSF FWHM (arcsec). The 95 % completeness depths (u 22.0, g 22.2, r 22.2, i 21.3, z 20.5) are
# NOT 5-sigma limits and do not set the noise: the sky brightness does (image_sky_sigma).
EXPTIME_S = 53.9
E_PER_NMGY = np.array([160.0, 1000.0, 900.0, 700.0, 160.0])
IMG_READ_NOISE_E = 6.0
PIXEL_AREA_ARCSEC2 = SDSS.pixel_scale_arcsec**2
PSF_MEDIAN = np.array([1.50, 1.43, 1.35, 1.30, 1.28])


def ab_to_flam(mag, wave) -> np.ndarray:
    """AB magnitude at ``wave`` (A) to f_lambda in 1e-17 erg/s/cm2/A."""
    fnu = 10 ** (-0.4 * (np.asarray(mag) + 48.6))
    return fnu * (C_KMS * 1e13) / np.asarray(wave) ** 2 * 1e17


@lru_cache(maxsize=2)
def sky_spectrum(loglam_key: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Fibre sky (continuum, lines) in 1e-17 erg/s/cm2/A on the observed grid given by ``loglam_key``.

    ``loglam_key`` is (loglam0, dloglam, n) so the result can be cached.
    """
    l0, dl, n = loglam_key
    wave = 10 ** (l0 + dl * np.arange(n))
    w = np.array(sorted(SKY_SB))
    m = np.array([SKY_SB[k] for k in w])
    cont = ab_to_flam(np.interp(wave, w, m), wave) * FIBRE_AREA_ARCSEC2
    rng = np.random.default_rng(OH_SEED)
    lines = list(SKY_LINES)
    for lo, hi, k in OH_BANDS:
        pos = rng.uniform(lo, hi, k)
        amp = 10 ** rng.uniform(1.3, 2.9, k) * (1 + (np.mean([lo, hi]) - 6800) / 2400)
        lines += list(zip(pos, amp))
    sig = sigma_inst_kms(wave) / C_KMS * wave  # A
    line = np.zeros_like(wave)
    for lam, flux in lines:
        sl = np.interp(lam, wave, sig)
        near = np.abs(wave - lam) < 6 * sl
        line[near] += flux * np.exp(-0.5 * ((wave[near] - lam) / sl) ** 2) / (np.sqrt(2 * np.pi) * sl)
    return cont, line


def throughput(wave) -> np.ndarray:
    """Relative spectrograph + telescope throughput at observed wavelength ``wave`` (A)."""
    return np.interp(wave, THROUGHPUT[:, 0], THROUGHPUT[:, 1])


def spectrum_variance(model: np.ndarray, wave: np.ndarray, exposure: np.ndarray,
                      sky: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Per-pixel variance (1e-17 erg/s/cm2/A)^2 of fibre spectra ``model`` (B, L).

    Photon noise of object + sky, read noise, and a sky-line subtraction residual. ``exposure`` (B,) scales
    the collected counts (observing conditions, exposure time).
    """
    cont, line = sky
    # photo-electrons per flux unit: pixel width (A) grows as lambda and photons per erg as lambda
    a = SPEC_COUNTS_SCALE * exposure[:, None] * throughput(wave)[None, :] * (wave / 5000.0)[None, :] ** 2
    sky_tot = cont + line
    var = (np.clip(model, 0, None) + sky_tot[None, :]) / a + (READ_NOISE_E / a) ** 2 + \
        (SKY_SUB_RESID * line[None, :]) ** 2
    return var


def image_sky_sigma(sky_sb=None) -> np.ndarray:
    """Per-pixel sky noise (nanomaggies) per band from the sky brightness, exposure, gain and read noise.

    sky counts per pixel = 10**((22.5 - mu_sky)/2.5) nmgy/arcsec^2 x 0.157 arcsec^2 x E_PER_NMGY (the
    electrons one nanomaggy gives in the 53.9 s exposure); sigma = sqrt(sky_e + read_noise^2) / E_PER_NMGY.
    Dark-sky values: u 0.049, g 0.017, r 0.028, i 0.045, z 0.17 nanomaggies per 0.396" pixel.

    Parameters
    ----------
    sky_sb : (..., 5) sky surface brightness (AB mag/arcsec^2); default the dark-sky SKY_SB values.
    """
    mu = np.array([SKY_SB[k] for k in sorted(SKY_SB)]) if sky_sb is None else np.asarray(sky_sb)
    sky_e = 10 ** ((22.5 - mu) / 2.5) * PIXEL_AREA_ARCSEC2 * E_PER_NMGY
    return np.sqrt(sky_e + IMG_READ_NOISE_E**2) / E_PER_NMGY
