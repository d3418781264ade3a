"""Lick/IDS absorption-line indices and the 4000 Angstrom break, vectorised over many spectra.

Band definitions
----------------
* Lick/IDS indices: Worthey et al. (1994, ApJS 94, 687), with the refined passbands of
  Trager et al. (1998, ApJS 116, 1); the Balmer A/F indices of Worthey & Ottaviani (1997, ApJS 111, 377).
  The published wavelengths are in AIR; they are converted here to VACUUM (pPXF's ``air_to_vac``,
  IAU/Ciddor) because SDSS spectra are in vacuum. This shifts the bands by ~1.2-1.7 Angstrom.
* D4000 (Bruzual 1983): <f_nu>(4050-4250) / <f_nu>(3750-3950); Dn4000 (Balogh et al. 1999):
  <f_nu>(4000-4100) / <f_nu>(3850-3950). Treated like the Lick bands (air -> vacuum); the
  difference to using the numbers as vacuum values is < 0.1 % in the ratio.

Measurement
-----------
The spectrum is a step function: pixel j has constant flux f_j between the mid-points to its
neighbours. Band means integrate that step function exactly (partial pixels at band edges get their
fractional overlap). Everything is measured in the rest frame: band edges are moved to the observed
frame as lambda_rest * (1 + z), which is identical to de-redshifting the wavelength axis.

* EW-type index (Angstrom): I = int_band (1 - F / C) dlambda, with C the straight line through the
  blue and red pseudo-continuum means placed at their band centres (evaluated at pixel centres).
* Magnitude index: I = -2.5 log10( (1/W) int_band F / C dlambda ).
* Errors: first-order propagation of the per-pixel variance 1/ivar through the index pixels and the
  two pseudo-continua (Cardiel et al. 1998, eq. 40-ish, without the approximations).

Indices are measured at the spectrum's own resolution (SDSS + any extra smoothing), as the MPA-JHU
catalogue does; they are NOT broadened to the Lick/IDS resolution and carry no Lick zero-point offsets.

Masked pixels (ivar <= 0): runs of at most ``max_interp`` (default :data:`MAX_INTERP` = 5) consecutive
masked pixels with good pixels on both sides are filled by linear interpolation (in wavelength) between
those two neighbours, with variance (1-t)^2 v_left + t^2 v_right, and then count as good. Five SDSS
pixels are 345 km/s, narrower than the absorption features the indices measure (FWHM >= ~7 pixels at
sigma_v = 150 km/s), so a filled run cannot hide a feature, while a sky-line residual or a cosmic-ray
hit (typically 2-5 pixels) no longer makes an index NaN. ``lick_indices(..., return_interp=True)``
reports the fraction of each index's bands that was filled. Longer runs stay masked: a band is NaN when
it is not fully inside the spectrum, or when less than ``min_good`` of its width is covered by good (or
filled) pixels; otherwise the band mean is taken over those pixels.
"""
from __future__ import annotations

import numpy as np
from ppxf.ppxf_util import air_to_vac

__all__ = ["LICK_BANDS", "READOUT_LICK", "BREAK_BANDS", "MAX_INTERP", "lick_indices", "dn4000", "d4000",
           "band_mean", "fill_short_gaps"]

#: Longest run of masked pixels filled by linear interpolation (see the module docstring).
MAX_INTERP = 5

# name: (index band, blue pseudo-continuum, red pseudo-continuum, kind)  [Angstrom, AIR]
# kind "A" = equivalent width in Angstrom, "mag" = magnitude index.
_LICK_AIR = {
    "CN1": ((4142.125, 4177.125), (4080.125, 4117.625), (4244.125, 4284.125), "mag"),
    "CN2": ((4142.125, 4177.125), (4083.875, 4096.375), (4244.125, 4284.125), "mag"),
    "Ca4227": ((4222.250, 4234.750), (4211.000, 4219.750), (4241.000, 4251.000), "A"),
    "G4300": ((4281.375, 4316.375), (4266.375, 4282.625), (4318.875, 4335.125), "A"),
    "Fe4383": ((4369.125, 4420.375), (4359.125, 4370.375), (4442.875, 4455.375), "A"),
    "Ca4455": ((4452.125, 4474.625), (4445.875, 4454.625), (4477.125, 4492.125), "A"),
    "Fe4531": ((4514.250, 4559.250), (4504.250, 4514.250), (4560.500, 4579.250), "A"),
    "Fe4668": ((4634.000, 4720.250), (4611.500, 4630.250), (4742.750, 4756.500), "A"),
    "Hbeta": ((4847.875, 4876.625), (4827.875, 4847.875), (4876.625, 4891.625), "A"),
    "Fe5015": ((4977.750, 5054.000), (4946.500, 4977.750), (5054.000, 5065.250), "A"),
    "Mg1": ((5069.125, 5134.125), (4895.125, 4957.625), (5301.125, 5366.125), "mag"),
    "Mg2": ((5154.125, 5196.625), (4895.125, 4957.625), (5301.125, 5366.125), "mag"),
    "Mgb": ((5160.125, 5192.625), (5142.625, 5161.375), (5191.375, 5206.375), "A"),
    "Fe5270": ((5245.650, 5285.650), (5233.150, 5248.150), (5285.650, 5318.150), "A"),
    "Fe5335": ((5312.125, 5352.125), (5304.625, 5315.875), (5353.375, 5363.375), "A"),
    "Fe5406": ((5387.500, 5415.000), (5376.250, 5387.500), (5415.000, 5425.000), "A"),
    "Fe5709": ((5696.625, 5720.375), (5672.875, 5696.625), (5722.875, 5736.625), "A"),
    "Fe5782": ((5776.625, 5796.625), (5765.375, 5775.375), (5797.875, 5811.625), "A"),
    "NaD": ((5876.875, 5909.375), (5860.625, 5875.625), (5922.125, 5948.125), "A"),
    "TiO1": ((5936.625, 5994.125), (5816.625, 5849.125), (6038.625, 6103.625), "mag"),
    "TiO2": ((6189.625, 6272.125), (6066.625, 6141.625), (6372.625, 6415.125), "mag"),
    "Hdelta_A": ((4083.500, 4122.250), (4041.600, 4079.750), (4128.500, 4161.000), "A"),
    "Hgamma_A": ((4319.750, 4363.500), (4283.500, 4319.750), (4367.250, 4419.750), "A"),
    "Hdelta_F": ((4091.000, 4112.250), (4057.250, 4088.500), (4114.750, 4137.250), "A"),
    "Hgamma_F": ((4331.250, 4352.250), (4283.500, 4319.750), (4354.750, 4384.750), "A"),
}


def _to_vac(band):
    return tuple(float(x) for x in air_to_vac(np.asarray(band, dtype=float)))


#: Lick bands in rest-frame VACUUM Angstrom: name -> (index, blue, red, kind). ``LICK_BANDS_AIR``
#: keeps the published air values.
LICK_BANDS: dict[str, tuple] = {k: (_to_vac(i), _to_vac(b), _to_vac(r), kind)
                                for k, (i, b, r, kind) in _LICK_AIR.items()}
LICK_BANDS_AIR = dict(_LICK_AIR)
#: The Lick indices of the project's science read-out (the paper's set plus the Balmer indices MPA-JHU also
#: gives): measured by evaluate.py and stored as truth in the mock catalogue.
READOUT_LICK = ("Hdelta_A", "Hgamma_A", "Hbeta", "Mgb", "Fe5270", "Fe5335", "NaD", "Mg2")
#: 4000 Angstrom break bands (blue, red), rest-frame vacuum Angstrom.
BREAK_BANDS = {"D4000": (_to_vac((3750.0, 3950.0)), _to_vac((4050.0, 4250.0))),
               "Dn4000": (_to_vac((3850.0, 3950.0)), _to_vac((4000.0, 4100.0)))}


def _prepare(wave, flux, z, ivar):
    """Broadcast inputs to (N, L) float arrays and compute pixel edges of the common grid."""
    wave = np.asarray(wave, dtype=np.float64)
    if wave.ndim != 1 or wave.size < 3 or np.any(np.diff(wave) <= 0):
        raise ValueError(f"wave: must be 1-D, strictly increasing, >= 3 pixels (got shape {wave.shape})")
    flux = np.asarray(flux, dtype=np.float64)
    scalar = flux.ndim == 1
    flux = np.atleast_2d(flux)
    if flux.shape[1] != wave.size:
        raise ValueError(f"flux: last axis {flux.shape[1]} != len(wave) {wave.size}")
    n = flux.shape[0]
    z = np.broadcast_to(np.asarray(z, dtype=np.float64), (n,)).copy() if np.ndim(z) <= 1 else None
    if z is None or z.shape != (n,):
        raise ValueError(f"z: must be a scalar or have one value per spectrum ({n})")
    if ivar is not None:
        ivar = np.atleast_2d(np.asarray(ivar, dtype=np.float64))
        if ivar.shape != flux.shape:
            raise ValueError(f"ivar: shape {ivar.shape} != flux shape {flux.shape}")
        ivar = np.where(np.isfinite(ivar) & (ivar > 0), ivar, 0.0)
    edges = np.empty(wave.size + 1)
    edges[1:-1] = 0.5 * (wave[1:] + wave[:-1])
    edges[0] = wave[0] - 0.5 * (wave[1] - wave[0])
    edges[-1] = wave[-1] + 0.5 * (wave[-1] - wave[-2])
    good = np.isfinite(flux) if ivar is None else (ivar > 0) & np.isfinite(flux)
    flux = np.where(good, flux, 0.0)
    return wave, edges, flux, z, ivar, good, scalar


def fill_short_gaps(wave, flux, var, good, max_interp=MAX_INTERP):
    """Fill runs of <= ``max_interp`` bad pixels bounded by good pixels by linear interpolation.

    Parameters
    ----------
    wave : (L,) wavelengths.
    flux, good : (N, L) arrays (flux of bad pixels is ignored); ``var`` (N, L) or None.
    max_interp : longest run filled; 0 fills nothing.

    Returns
    -------
    flux, var, good, filled: copies with the filled pixels interpolated and marked good, and the (N, L)
    boolean mask of filled pixels. Variances of filled pixels are (1-t)^2 v_left + t^2 v_right
    (correlated with their neighbours; ignored in error propagation).
    """
    n, size = good.shape
    pos = np.arange(size)
    prev = np.maximum.accumulate(np.where(good, pos, -1), axis=1)
    nxt = np.minimum.accumulate(np.where(good, pos, size)[:, ::-1], axis=1)[:, ::-1]
    fill = ~good & (prev >= 0) & (nxt < size) & (nxt - prev - 1 <= max_interp)
    if max_interp <= 0 or not fill.any():
        return flux, var, good, np.zeros_like(good)
    pl, pr = np.clip(prev, 0, size - 1), np.clip(nxt, 0, size - 1)
    rows = np.arange(n)[:, None]
    wl, wr = wave[pl], wave[pr]
    t = np.where(fill, (wave[None, :] - wl) / np.where(fill, wr - wl, 1.0), 0.0)
    flux = np.where(fill, (1 - t) * flux[rows, pl] + t * flux[rows, pr], flux)
    if var is not None:
        var = np.where(fill, (1 - t) ** 2 * var[rows, pl] + t ** 2 * var[rows, pr], var)
    return flux, var, good | fill, fill


class _Grid:
    """Pixel bookkeeping shared by all bands of one call."""

    def __init__(self, wave, flux, z, ivar, min_good=0.8, max_interp=MAX_INTERP):
        self.wave, self.edges, self.flux, self.z, self.ivar, self.good, self.scalar = \
            _prepare(wave, flux, z, ivar)
        self.var = None if self.ivar is None else np.where(self.ivar > 0, 1.0 / np.where(
            self.ivar > 0, self.ivar, 1.0), 0.0)
        self.flux, self.var, self.good, self.filled = fill_short_gaps(
            self.wave, self.flux, self.var, self.good, max_interp)
        self.min_good = min_good
        self.rows = np.arange(self.flux.shape[0])[:, None]

    def window(self, lo_rest, hi_rest):
        """Pixels overlapping [lo, hi] (rest frame) for every spectrum.

        Returns pixel indices (N, M), overlap in REST-frame Angstrom (N, M) and the rest-frame
        pixel-centre wavelengths (N, M), plus a (N,) flag of full coverage.
        """
        opz = 1.0 + self.z
        lo, hi = lo_rest * opz, hi_rest * opz                      # observed-frame band edges
        e = self.edges
        inside = (lo >= e[0]) & (hi <= e[-1])
        k1 = np.clip(np.searchsorted(e, lo, side="right") - 1, 0, e.size - 2)
        k2 = np.clip(np.searchsorted(e, hi, side="left") - 1, 0, e.size - 2)
        m = int(np.max(k2 - k1)) + 1 if k1.size else 1
        idx = k1[:, None] + np.arange(m)[None, :]
        valid = idx <= k2[:, None]
        idx = np.minimum(idx, e.size - 2)
        left = np.maximum(e[idx], lo[:, None])
        right = np.minimum(e[idx + 1], hi[:, None])
        ov = np.where(valid, np.clip(right - left, 0.0, None), 0.0) / opz[:, None]
        return idx, ov, self.wave[idx] / opz[:, None], inside

    def mean(self, lo_rest, hi_rest, weight_pow=0):
        """Band mean of f_lambda (weight_pow=0) or of f_lambda*lambda^2 (f_nu up to a constant).

        Returns mean, variance of the mean, ok flag; mean is over good pixels only.
        """
        idx, ov, lam, inside = self.window(lo_rest, hi_rest)
        g = self.good[self.rows, idx]
        ovg = np.where(g, ov, 0.0)
        wsum = ovg.sum(1)
        width = hi_rest - lo_rest
        ok = inside & (wsum >= self.min_good * width)
        scale = lam ** weight_pow if weight_pow else 1.0
        f = self.flux[self.rows, idx] * scale
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = (f * ovg).sum(1) / wsum
            var = None
            if self.var is not None:
                v = self.var[self.rows, idx] * (scale ** 2 if weight_pow else 1.0)
                var = (ovg ** 2 * v).sum(1) / wsum ** 2
        mean = np.where(ok, mean, np.nan)
        return mean, var, ok


def band_mean(wave, flux, z, band, ivar=None, fnu=False, max_interp=MAX_INTERP):
    """Mean flux density in a rest-frame band (vacuum Angstrom), exact for step-function pixels.

    Parameters
    ----------
    wave : (L,) array, observed-frame wavelength (Angstrom).
    flux : (L,) or (N, L) array.
    z : float or (N,) array, redshift(s).
    band : (lo, hi) rest-frame Angstrom.
    ivar : optional, same shape as flux.
    fnu : if True average f_lambda * lambda^2 (proportional to f_nu).
    max_interp : longest run of masked pixels filled by interpolation (0: none).

    Returns
    -------
    (mean, error) arrays of shape (N,) (scalars for a 1-D flux); error is NaN without ivar.
    """
    g = _Grid(wave, flux, z, ivar, max_interp=max_interp)
    mean, var, _ = g.mean(band[0], band[1], 2 if fnu else 0)
    err = np.sqrt(var) if var is not None else np.full_like(mean, np.nan)
    err = np.where(np.isfinite(mean), err, np.nan)
    return (mean[0], err[0]) if g.scalar else (mean, err)


def _break(g, blue, red):
    fb, vb, _ = g.mean(blue[0], blue[1], 2)
    fr, vr, _ = g.mean(red[0], red[1], 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        d = fr / fb
        err = np.full_like(d, np.nan) if vb is None else np.abs(d) * np.sqrt(vr / fr ** 2 + vb / fb ** 2)
    err = np.where(np.isfinite(d), err, np.nan)
    return (d[0], err[0]) if g.scalar else (d, err)


def dn4000(wave, flux, z, ivar=None, max_interp=MAX_INTERP):
    """Narrow 4000 Angstrom break (Balogh et al. 1999): <f_nu>(4000-4100) / <f_nu>(3850-3950).

    Parameters
    ----------
    wave : (L,) observed-frame vacuum wavelength (Angstrom), common to all spectra.
    flux : (L,) or (N, L) flux density per Angstrom (any units; the ratio is unit-free).
    z : float or (N,) redshift.
    ivar : optional inverse variance, same shape as flux.
    max_interp : longest run of masked pixels filled by interpolation (0: none).

    Returns
    -------
    (value, error): arrays (N,) or scalars for 1-D input; NaN where not covered, error NaN without ivar.
    """
    g = _Grid(wave, flux, z, ivar, max_interp=max_interp)
    return _break(g, *BREAK_BANDS["Dn4000"])


def d4000(wave, flux, z, ivar=None, max_interp=MAX_INTERP):
    """Broad 4000 Angstrom break (Bruzual 1983): <f_nu>(4050-4250) / <f_nu>(3750-3950).

    Same arguments and returns as :func:`dn4000`.
    """
    g = _Grid(wave, flux, z, ivar, max_interp=max_interp)
    return _break(g, *BREAK_BANDS["D4000"])


def _lick_one(g, band):
    (i0, i1), (b0, b1), (r0, r1), kind = band
    fb, vb, okb = g.mean(b0, b1)
    fr, vr, okr = g.mean(r0, r1)
    lb, lr = 0.5 * (b0 + b1), 0.5 * (r0 + r1)
    idx, ov, lam, inside = g.window(i0, i1)
    gd = g.good[g.rows, idx]
    ov = np.where(gd, ov, 0.0)
    wsum = ov.sum(1)
    width = i1 - i0
    ok = inside & okb & okr & (wsum >= g.min_good * width)
    t = (lam - lb) / (lr - lb)
    cont = fb[:, None] * (1.0 - t) + fr[:, None] * t
    f = g.flux[g.rows, idx]
    with np.errstate(invalid="ignore", divide="ignore"):
        rat = np.where(ov > 0, f / cont, 0.0)
        # rescale to the full band width when some pixels are masked
        integ = (rat * ov).sum(1) * (width / wsum)          # int F/C dlambda
        if kind == "A":
            val = width - integ
        else:
            val = -2.5 * np.log10(integ / width)
        err = np.full_like(val, np.nan)
        if g.var is not None:
            v = g.var[g.rows, idx]
            s = width / wsum
            var_pix = s ** 2 * (ov ** 2 * v / cont ** 2).sum(1)
            # d(integ)/d(fb), d(integ)/d(fr) through the continuum
            dfb = -s * (f * ov * (1.0 - t) / cont ** 2).sum(1)
            dfr = -s * (f * ov * t / cont ** 2).sum(1)
            var_int = var_pix + dfb ** 2 * vb + dfr ** 2 * vr
            err = np.sqrt(var_int) if kind == "A" else 2.5 / np.log(10) * np.sqrt(var_int) / integ
    val = np.where(ok, val, np.nan)
    err = np.where(ok, err, np.nan)
    # fraction of the three bands' width covered by filled (interpolated) pixels
    width_all, filled = 0.0, 0.0
    for lo, hi in ((i0, i1), (b0, b1), (r0, r1)):
        idx, ov, _, _ = g.window(lo, hi)
        filled = filled + (ov * g.filled[g.rows, idx]).sum(1)
        width_all += hi - lo
    return val, err, filled / width_all


def lick_indices(wave, flux, z, ivar=None, names=None, min_good=0.8, max_interp=MAX_INTERP,
                 return_interp=False):
    """Measure Lick/IDS indices in the rest frame for one or many spectra on a common grid.

    Parameters
    ----------
    wave : (L,) observed-frame vacuum wavelength in Angstrom (strictly increasing; linear or log).
    flux : (L,) or (N, L) flux density per Angstrom, any normalisation.
    z : float or (N,) redshift of each spectrum.
    ivar : optional inverse variance, same shape as flux; pixels with ivar <= 0 are masked.
    names : iterable of index names (keys of ``LICK_BANDS``); default all.
    min_good : minimum fraction of each band covered by good (or filled) pixels, else NaN.
    max_interp : longest run of masked pixels filled by linear interpolation (0: none).
    return_interp : also return, per index, the fraction of its three bands' width that was filled.

    Returns
    -------
    dict name -> (value, error) (or (value, error, filled_fraction) with ``return_interp``). Values in
    Angstrom (EW indices) or magnitudes (CN1, CN2, Mg1, Mg2, TiO1, TiO2); arrays of shape (N,)
    (floats for 1-D input). NaN where the bands are not covered; errors are NaN without ivar.
    """
    names = list(LICK_BANDS) if names is None else list(names)
    unknown = [n for n in names if n not in LICK_BANDS]
    if unknown:
        raise KeyError(f"names: unknown Lick index {unknown}; known: {sorted(LICK_BANDS)}")
    g = _Grid(wave, flux, z, ivar, min_good=min_good, max_interp=max_interp)
    out = {}
    for name in names:
        res = _lick_one(g, LICK_BANDS[name])[:3 if return_interp else 2]
        out[name] = tuple(float(a[0]) for a in res) if g.scalar else res
    return out
