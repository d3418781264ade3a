"""What else is in a cutout, and structure inside disks: neighbours, bright stars, spiral arms and clumps.

Neighbours follow the sky's source counts over the 25" cutout (4.9e-5 deg^2), all to the detection limit
r = 22.2 (95 % completeness):

- field galaxies: N(<r) ~ 1800 x 10**(0.4 (r - 21)) per deg^2 (Yasuda et al. 2001, ~), mean 0.27 per cutout;
- stars at high Galactic latitude: N(<r) ~ 3000 x 10**(0.2 (r - 22)) per deg^2 (~), mean 0.15 per cutout;
- physical companions (clustering): Poisson mean 0.3 within 3-18" (pairs ~ theta^-0.8 x theta, the projected
  correlation function), 0.3-4.5 mag fainter than the target, with the target's colours (+- 0.15 mag).

Together ~0.7 sources per cutout, so ~half of the cutouts hold at least one (SDSS: roughly half). No
neighbour is placed within 3" of the target (its light would enter the fibre, whose spectrum carries only the
target); companions at 3-6" overlap the target's light. A bright star (r 9-13.5) lies within ~30" of
~1.5 % of the cutouts; it brings a halo, diffraction spikes along the CCD rows and columns, and, once
saturated, a bleed trail along the column.
"""

from __future__ import annotations

import numpy as np

from datasets.schema import IMAGE_SIZE, PIXEL_SCALE_ARCSEC
from surveys.description import SDSS
from surveys.mock import render

CUTOUT_DEG2 = (IMAGE_SIZE * PIXEL_SCALE_ARCSEC / 3600.0) ** 2
R_DETECT = 22.2
MEAN_FIELD_GAL = 1800.0 * 10 ** (0.4 * (R_DETECT - 21.0)) * CUTOUT_DEG2
MEAN_STAR = 3000.0 * 10 ** (0.2 * (R_DETECT - 22.0)) * CUTOUT_DEG2
MEAN_COMPANION = 0.3
P_BRIGHT_STAR = 0.015
MIN_SEP_PX = 3.0 / PIXEL_SCALE_ARCSEC
FULL_WELL_E = 1.3e5  # electrons: pixels above this bleed along the column


def _mags_from_counts(rng, n, slope, bright):
    """Magnitudes with integral counts N(<m) ~ 10**(slope m) between ``bright`` and R_DETECT."""
    u = rng.uniform(10 ** (slope * (bright - R_DETECT)), 1.0, n)
    return R_DETECT + np.log10(u) / slope


def _colours(rng, r, star):
    """u, g, r, i, z of stars (main-sequence-like locus) or faint field galaxies."""
    n = len(r)
    gr = np.where(star, rng.uniform(0.2, 1.4, n), rng.uniform(0.3, 1.0, n))
    ug = np.where(star, 1.0 + 1.1 * (gr - 0.4), rng.uniform(1.0, 1.9, n)) + rng.normal(0, 0.1, n)
    ri = np.where(star, 0.45 * gr - 0.05, rng.uniform(0.3, 0.5, n))
    iz = np.where(star, 0.5 * ri, rng.uniform(0.2, 0.4, n))
    return np.stack([r + gr + ug, r + gr, r, r - ri, r - ri - iz], 1)


def neighbours(rng: np.random.Generator, xc, yc, target_mag, target_re_px) -> tuple[np.ndarray, dict]:
    """Pre-PSF images (B, 5, 64, 64) in nanomaggies of every neighbour of each cutout, and their statistics.

    Parameters
    ----------
    xc, yc : (B,) target centre (pixels). target_mag : (B, 5) target AB magnitudes. target_re_px : (B,) the
        target's disk half-light radius (pixels), which sets the companions' sizes.

    Returns
    -------
    images : (B, 5, 64, 64) float32
    stats : dict of (B,) ``n_neighbours``, ``nb_min_sep_arcsec`` (nan if none).
    """
    b = len(xc)
    n_f, n_s, n_c = rng.poisson(MEAN_FIELD_GAL, b), rng.poisson(MEAN_STAR, b), rng.poisson(MEAN_COMPANION, b)
    host = np.concatenate(
        [np.repeat(np.arange(b), n_f), np.repeat(np.arange(b), n_s), np.repeat(np.arange(b), n_c)]
    )
    kind = np.concatenate([np.zeros(n_f.sum(), int), np.ones(n_s.sum(), int), np.full(n_c.sum(), 2)])
    k = len(host)
    star = kind == 1
    # positions: uniform over the cutout for field sources, correlated separations for companions
    px, py = rng.uniform(-0.5, IMAGE_SIZE - 0.5, k), rng.uniform(-0.5, IMAGE_SIZE - 0.5, k)
    s0, s1 = 3.0, 18.0
    sep = (rng.uniform(0, 1, k) * (s1**1.2 - s0**1.2) + s0**1.2) ** (1 / 1.2) / PIXEL_SCALE_ARCSEC
    ang = rng.uniform(0, 2 * np.pi, k)
    comp = kind == 2
    px = np.where(comp, xc[host] + sep * np.cos(ang), px)
    py = np.where(comp, yc[host] + sep * np.sin(ang), py)
    # magnitudes and colours
    r = np.where(star, _mags_from_counts(rng, k, 0.2, 14.0), _mags_from_counts(rng, k, 0.4, 16.0))
    mags = _colours(rng, r, star)
    dm = rng.uniform(0.3, 4.5, k)
    mags = np.where(comp[:, None], target_mag[host] + dm[:, None] + rng.normal(0, 0.15, (k, 5)), mags)
    d = np.hypot(px - xc[host], py - yc[host])
    keep = (
        (d >= MIN_SEP_PX)
        & (mags[:, 2] <= R_DETECT)
        & (px > -0.5)
        & (px < IMAGE_SIZE - 0.5)
        & (py > -0.5)
        & (py < IMAGE_SIZE - 0.5)
    )
    host, star, comp, px, py, mags, d = (
        host[keep],
        star[keep],
        comp[keep],
        px[keep],
        py[keep],
        mags[keep],
        d[keep],
    )
    k = len(host)
    out = np.zeros((b, SDSS.n_bands, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    stats = {
        "n_neighbours": np.bincount(host, minlength=b).astype(np.int16),
        "nb_min_sep_arcsec": np.full(b, np.nan),
    }
    if k == 0:
        return out, stats
    np.fmin.at(stats["nb_min_sep_arcsec"], host, d * PIXEL_SCALE_ARCSEC)
    flux = 10 ** ((22.5 - mags) / 2.5)  # (k, 5)
    shape = np.zeros((k, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    g = ~star
    if g.any():  # faint galaxies are small: r_e ~ 0.6" at r = 20, shrinking fainter; companions scale
        re_field = (
            0.6
            * 10 ** (-0.15 * (mags[g, 2] - 20.0))
            * np.exp(rng.normal(0, 0.25, g.sum()))
            / PIXEL_SCALE_ARCSEC
        )
        re_comp = target_re_px[host[g]] * 10 ** (-0.2 * (mags[g, 2] - target_mag[host[g], 2]))
        re = np.clip(np.where(comp[g], re_comp, re_field), 0.5, 30.0)
        shape[g] = render.render_sersic(
            px[g],
            py[g],
            re,
            rng.uniform(0.8, 3.0, g.sum()),
            rng.uniform(0.3, 1.0, g.sum()),
            rng.uniform(0, np.pi, g.sum()),
            supersample=2,  # faint and small: the cusp correction keeps their flux
        )
    if star.any():
        shape[star] = render.render_point(px[star], py[star])
    np.add.at(out, host, shape[:, None] * flux[:, :, None, None].astype(np.float32))
    return out, stats


def bright_stars(
    rng: np.random.Generator, psf_fwhm_px: np.ndarray, e_per_nmgy: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Post-PSF images (B, 5, 64, 64) of occasional bright stars near the cutout, and the (B,) flag.

    Moffat (beta = 3) core with the band's PSF + a r^-3 aureole; four diffraction spikes along the pixel rows
    and columns (SDSS's spider vanes are aligned with the CCD); pixels above the full well are clipped and
    their excess charge bleeds along the column (a trail of saturated pixels).
    """
    b = psf_fwhm_px.shape[0]
    has = rng.random(b) < P_BRIGHT_STAR
    out = np.zeros((b, SDSS.n_bands, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    idx = np.flatnonzero(has)
    rmag = rng.uniform(9.0, 13.5, b)
    # position: within ~30" of the cutout centre, not on the target (> 6")
    rad = rng.uniform(6.0 / PIXEL_SCALE_ARCSEC, 75.0, b)
    ang = rng.uniform(0, 2 * np.pi, b)
    sx, sy = render.CENTRE + rad * np.cos(ang), render.CENTRE + rad * np.sin(ang)
    gr = rng.uniform(0.3, 1.3, b)
    mags = np.stack(
        [
            rmag + gr + 1.0 + 1.1 * (gr - 0.4),
            rmag + gr,
            rmag,
            rmag - 0.45 * gr + 0.05,
            rmag - 0.67 * gr + 0.07,
        ],
        1,
    )
    c = np.arange(IMAGE_SIZE, dtype=np.float64)
    sat = FULL_WELL_E / e_per_nmgy
    for i in idx:
        dx, dy = c[None, :] - sx[i], c[:, None] - sy[i]
        r2 = dx**2 + dy**2
        for band in range(5):
            f = 10 ** ((22.5 - mags[i, band]) / 2.5)
            fw = psf_fwhm_px[i, band]
            alpha = fw / (2 * np.sqrt(2 ** (1 / 3.0) - 1))
            core = 2.0 / (np.pi * alpha**2) * (1 + r2 / alpha**2) ** -3.0  # unit-flux Moffat, beta = 3
            halo = 0.02 / (2 * np.pi * 4.0) * (1 + r2 / 4.0) ** -1.5
            # spikes: ~22 mag/arcsec^2 at 30" from an r = 9 star, i.e. 1e-6 of its flux per pixel there
            spike = 7e-4 * (
                np.exp(-0.5 * (dy / 0.8) ** 2) / (1 + np.abs(dx) / 3.0) ** 2
                + np.exp(-0.5 * (dx / 0.8) ** 2) / (1 + np.abs(dy) / 3.0) ** 2
            )
            img = f * (core + halo + spike)
            over = np.clip(img - sat[band], 0, None)
            img = np.minimum(img, sat[band])
            excess = over.sum()  # charge above the full well in the cutout bleeds along the column
            col = int(np.rint(sx[i]))
            if excess > 0 and 0 <= col < IMAGE_SIZE:
                half = excess / sat[band] / 2.0
                trail = np.abs(c - sy[i]) <= half
                img[trail, col] = sat[band]
            out[i, band] = img
    return out, has


def disk_structure(rng: np.random.Generator, disk: np.ndarray, xc, yc, re_px, q, pa, strength) -> np.ndarray:
    """Two-armed logarithmic spiral modulation and a few star-forming clumps on unit-flux disk images.

    ``strength`` (B,) in 0..1 (0 = smooth, e.g. quenched disks). The flux of each disk is preserved.
    """
    b = disk.shape[0]
    c = np.arange(IMAGE_SIZE, dtype=np.float32)
    dx = c[None, None, :] - xc[:, None, None]
    dy = c[None, :, None] - yc[:, None, None]
    cp, sp = np.cos(pa)[:, None, None], np.sin(pa)[:, None, None]
    xm = dx * cp + dy * sp
    ym = (-dx * sp + dy * cp) / q[:, None, None]
    rn = np.sqrt(xm**2 + ym**2) / re_px[:, None, None]
    th = np.arctan2(ym, xm)
    pitch = np.radians(rng.uniform(12.0, 30.0, b))[:, None, None]
    amp = (rng.uniform(0.3, 0.8, b) * strength)[:, None, None]
    phase = rng.uniform(0, 2 * np.pi, b)[:, None, None]
    arms = 1 + amp * (1 - np.exp(-(rn**2) / 0.3)) * np.cos(
        2 * th - 2 * np.log(rn + 0.05) / np.tan(pitch) + phase
    )
    img = disk * arms.astype(np.float32)
    # clumps: Poisson(3 x strength) Gaussian knots of sigma 0.8 px, 3 % of the disk light each, along the disk
    nk = rng.poisson(3.0 * strength)
    hostk = np.repeat(np.arange(b), nk)
    if len(hostk):
        rr = re_px[hostk] * rng.uniform(0.3, 2.0, len(hostk))
        t = rng.uniform(0, 2 * np.pi, len(hostk))
        x1, y1 = rr * np.cos(t), rr * np.sin(t) * q[hostk]
        kx = xc[hostk] + x1 * np.cos(pa[hostk]) - y1 * np.sin(pa[hostk])
        ky = yc[hostk] + x1 * np.sin(pa[hostk]) + y1 * np.cos(pa[hostk])
        blob = np.exp(
            -0.5
            * (
                ((c[None, None, :] - kx[:, None, None]) ** 2 + (c[None, :, None] - ky[:, None, None]) ** 2)
                / 0.8**2
            )
        ).astype(np.float32)
        blob /= np.maximum(blob.sum((1, 2), keepdims=True), 1e-12)
        np.add.at(img, hostk, 0.03 * blob)
    img *= (disk.sum((1, 2)) / np.maximum(img.sum((1, 2)), 1e-12))[:, None, None]
    return img
