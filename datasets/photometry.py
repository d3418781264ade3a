"""Deterministic aperture photometry of the survey's 5-band cutouts, and features made from it.

Used by the ``photometric`` baseline (evaluation/photometric.py, gradient boosting on these features) and,
with ``model.photometry: true``, as extra conditioning of the networks (``models.conditioning``): the
features are measured on the ORIGINAL cutout (nanomaggies, no augmentation), once per galaxy (cached by
datasets/galaxy.py, recomputed from the images by generate.py).

    phot = measure_photometry(images)                  # (N, 5, 64, 64) -> dict of arrays
    X, names = photometric_features(phot)              # (N, F) float64
    X, names = survey_features("data/mock_sdss.h5")    # both, chunked straight from a survey file

Photometry is vectorised: the aperture and moment weight masks are built once (pixel areas inside
each circle, 16x16 sub-sampled) and applied to a whole batch with one ``einsum``; the sky is the
median of an outer annulus per galaxy and band.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from datasets.schema import BANDS, IMAGE_SIZE, N_BANDS, PIXEL_SCALE_ARCSEC
from surveys.description import SURVEY

#: aperture RADII in arcsec; 1.5" is the SDSS fibre radius, 9" still fits inside the sky annulus
APERTURE_RADII_ARCSEC = (1.0, 1.5, 2.5, 4.0, 6.0, 9.0)
#: sky annulus (inner, outer radius, arcsec): beyond the largest aperture, inside the 64 px cutout
SKY_ANNULUS_ARCSEC = (9.6, 12.3)
#: width (arcsec) of the fixed Gaussian weight of the second moments (stable on noisy outskirts)
MOMENT_SIGMA_ARCSEC = 3.0
#: asinh-magnitude softening per band in nanomaggies, from the survey description (SDSS: Lupton et al.
#: 1999, DR7 values b = 1.4, 0.9, 1.2, 1.8, 7.4 x 1e-10 maggies)
ASINH_SOFTENING_NMGY = np.array(SURVEY.asinh_softening_nmgy)
#: the band whose light moments give size, ellipticity and centroid offset ("r")
REFERENCE_BAND = SURVEY.reference_band
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
    m0, mx, my, mxx, myy, mxy = np.moveaxis(raw[:, BANDS.index(REFERENCE_BAND), n_ap:], -1, 0)
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
    k_fib = int(np.argmin(np.abs(np.asarray(radii) - SURVEY.fibre_radius_arcsec)))
    cols.append(col[:, :, k_fib] - col[:, :, -1])
    names += [f"grad_{a}-{b}" for a, b in zip(BANDS, BANDS[1:])]
    cols.append(np.stack([phot["size"], phot["ellipticity"], phot["offset"]], axis=1))
    names += [f"{q}_{REFERENCE_BAND}" for q in ("size", "ellipticity", "offset")]
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


def image_features(images_nmgy) -> np.ndarray:
    """Photometric features (N, F) float32 of cutouts in nanomaggies, non-finite values (a size or
    ellipticity without signal) replaced by 0: the networks' conditioning input."""
    x, _ = photometric_features(measure_photometry(images_nmgy))
    return np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)


#: number of features of :func:`image_features` with the default apertures (SDSS: 6 * 9 + 5 * 5 + 4 + 3 = 86):
#: per aperture N_BANDS magnitudes and N_BANDS - 1 colours, per band the concentrations, the colour
#: gradients, and size, ellipticity and offset
N_FEATURES = (len(APERTURE_RADII_ARCSEC) * (2 * N_BANDS - 1) + N_BANDS * (len(APERTURE_RADII_ARCSEC) - 1)
              + (N_BANDS - 1) + 3)
