"""Redshift by linear template fitting over a redshift grid (an SDSS-pipeline-like chi2(z) scan).

Model at trial z: a linear combination (free signs, unconstrained least squares) of
* 3 SSPs (MIUSCAT 0.1, 1 and 10 Gyr, solar [M/H]; extended blueward of 3465 A with the matching BC03
  SSP), broadened by ``sigma_kms`` (+ any extra smoothing),
* 6 emission-line templates: Halpha; Hbeta+Hgamma+Hdelta (case B ratios); [OII]3726,3729;
  [OIII]4959,5007; [NII]6548,6584; [SII]6717,6731 (vacuum wavelengths),
* an additive Legendre polynomial in observed wavelength (``n_poly`` terms).

The spectrum is put on a log10-lambda grid of step ``dloglam`` (an exact pick for SDSS files, linear
interpolation otherwise), so every integer shift of the templates is one trial redshift. The normal
equations of ALL shifts are obtained at once by FFT cross-correlations (template x template x weight,
template x weight x flux, template x weight x polynomial), then solved in one batched call: the coarse
scan over ~1300 redshifts costs a few ms. The best shift is refined on a sub-pixel grid (direct fits
with interpolated templates) and a parabola through chi2 gives z and sigma_z (Delta chi2 = 1).

Without ivar the weights are uniform and chi2 is rescaled by chi2_min/dof (errors from the residual
scatter). For smoothed / resampled spectra pixels are correlated, so sigma_z is then a lower bound.

Only observed pixels that the templates cover at every trial z are used, so chi2 is comparable along
the scan: lambda_obs in [3327 (1 + z_max), 9472 (1 + z_min)] Angstrom.

ZWARNING-like bits (SDSS meanings): 2 LITTLE_COVERAGE (< 500 good pixels), 4 SMALL_DELTA_CHI2 (another
minimum > 1000 km/s away within 0.01 * dof in chi2), 32 Z_FITLIMIT (minimum at the edge of the z
range), 512 NODATA (nothing to fit: z is NaN).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
from ppxf.ppxf_util import air_to_vac
from scipy.fft import irfft, next_fast_len, rfft
from scipy.ndimage import gaussian_filter1d

from analysis._common import C_KMS, load_ssp

__all__ = ["RedshiftResult", "fit_redshift", "fit_redshifts", "ZW_LITTLE_COVERAGE", "ZW_SMALL_DELTA_CHI2",
           "ZW_Z_FITLIMIT", "ZW_NODATA"]

ZW_LITTLE_COVERAGE, ZW_SMALL_DELTA_CHI2, ZW_Z_FITLIMIT, ZW_NODATA = 2, 4, 32, 512

# Vacuum rest wavelengths (Angstrom) and relative fluxes of each emission-line template.
_LINE_TEMPLATES = {
    "Halpha": ([6564.61], [1.0]),
    "Hbeta_series": ([4862.68, 4341.68, 4102.89], [1.0, 0.468, 0.259]),
    "[OII]3727": ([3727.09, 3729.88], [1.0, 1.3]),
    "[OIII]5007": ([4960.30, 5008.24], [0.335, 1.0]),
    "[NII]6584": ([6549.86, 6585.27], [0.335, 1.0]),
    "[SII]6724": ([6718.29, 6732.67], [1.0, 0.75]),
}
_SSP_AGES = (0.1, 1.0, 10.0)   # Gyr


@dataclass
class RedshiftResult:
    """Outcome of :func:`fit_redshift`. ``z_grid``/``chi2_grid`` hold the coarse scan."""
    z: float
    z_err: float
    zwarning: int
    chi2: float
    dof: int
    delta_chi2: float           # chi2 of the best other minimum (> 1000 km/s away) minus chi2_min, rescaled
    n_good: int
    message: str = ""
    z_grid: np.ndarray = field(default=None, repr=False)
    chi2_grid: np.ndarray = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.zwarning == 0


@functools.lru_cache(maxsize=2)
def _ssp_rest():
    """3 SSPs on a 1 A rest VACUUM grid 3327..9470 A, MIUSCAT spliced with BC03 below 3470 A."""
    mi, bc = load_ssp("miuscat"), load_ssp("bc03")
    lam = np.arange(3327.0, 9470.0, 1.0)
    mi_lam, bc_lam = air_to_vac(mi["lam"]), air_to_vac(bc["lam"])
    jm = int(np.argmin(np.abs(mi["metals"] - 0.0)))
    jb = int(np.argmin(np.abs(bc["metals"] - 0.0)))
    out = []
    for age in _SSP_AGES:
        ia = int(np.argmin(np.abs(np.log(mi["ages"] / age))))
        ib = int(np.argmin(np.abs(np.log(bc["ages"] / age))))
        fm = np.interp(lam, mi_lam, mi["templates"][:, ia, jm], left=np.nan, right=np.nan)
        fb = np.interp(lam, bc_lam, bc["templates"][:, ib, jb])
        ov = (lam > 3470) & (lam < 3570)
        fb *= np.nanmean(fm[ov]) / np.mean(fb[ov])
        f = np.where(lam < 3470, fb, fm)
        f = np.where(np.isfinite(f), f, fb)
        out.append(f / np.median(f))
    return lam, np.array(out)


class _Prepared:
    """Everything that depends only on the observed log grid and the settings, not on the flux."""

    def __init__(self, ol0, npix, dloglam, zmin, zmax, n_poly, sigma_kms, extra_sigma):
        self.d = dloglam
        self.s_max = int(np.ceil(np.log10(1 + zmax) / dloglam))
        self.s_min = int(np.floor(np.log10(1 + zmin) / dloglam))
        self.S = self.s_max - self.s_min
        self.npix = npix
        self.ol = ol0 + dloglam * np.arange(npix)
        nt = npix + self.S
        self.tl = ol0 - self.s_max * dloglam + dloglam * np.arange(nt)
        self.z_grid = 10.0 ** ((self.s_max - np.arange(self.S + 1)) * dloglam) - 1.0
        lam_t = 10.0 ** self.tl
        # Broadening of the templates (km/s): galaxy dispersion + instrument + extra smoothing at 6000 A
        sig = np.sqrt(sigma_kms ** 2 + (extra_sigma / 6000.0 * C_KMS) ** 2)
        sig_pix = sig / (C_KMS * np.log(10) * dloglam)
        lam_r, ssp = _ssp_rest()
        temps = [gaussian_filter1d(np.interp(lam_t, lam_r, f), sig_pix, mode="nearest") for f in ssp]
        sig_line = np.sqrt(70.0 ** 2 + 65.0 ** 2 + (extra_sigma / 6000.0 * C_KMS) ** 2) / C_KMS
        for waves, rats in _LINE_TEMPLATES.values():
            t = np.zeros(nt)
            for w0, r in zip(waves, rats):
                t += r * np.exp(-0.5 * (np.log(lam_t / w0) / sig_line) ** 2)
            temps.append(t / max(t.max(), 1e-30))
        self.T = np.array(temps)                                   # (K, nt)
        self.K = self.T.shape[0]
        x = np.linspace(-1, 1, npix)
        self.P = np.polynomial.legendre.legvander(x, n_poly - 1).T if n_poly > 0 else np.zeros((0, npix))
        self.nP = self.P.shape[0]
        self.n = next_fast_len(nt + npix - 1)
        iu = np.triu_indices(self.K)
        self.iu = iu
        self.FT = rfft(self.T, self.n, axis=1)
        self.FTT = rfft(self.T[iu[0]] * self.T[iu[1]], self.n, axis=1)

    def _corr(self, FA, b):
        """sum_p a(p+o) b(p) for o = 0..S, for every row of FA (rfft of a) and every row of b."""
        FB = np.conj(rfft(b, self.n, axis=-1))       # correlation = conv with reversed = conj in Fourier
        out = irfft(FA[:, None, :] * FB[None, :, :], self.n, axis=-1)
        return out[..., : self.S + 1]                  # (rows_a, rows_b, S+1)

    def scan(self, f, w):
        K, nP = self.K, self.nP
        Tn = K + nP
        G = self._corr(self.FTT, w[None])[:, 0]                     # (K(K+1)/2, S+1)
        right = np.vstack([w * f, w * self.P]) if nP else (w * f)[None]
        H = self._corr(self.FT, right)                               # (K, 1+nP, S+1)
        M = np.empty((self.S + 1, Tn, Tn))
        M[:, self.iu[0], self.iu[1]] = G.T
        M[:, self.iu[1], self.iu[0]] = G.T
        if nP:
            TP = np.transpose(H[:, 1:, :], (2, 0, 1))                 # (S+1, K, nP)
            M[:, :K, K:] = TP
            M[:, K:, :K] = np.transpose(TP, (0, 2, 1))
            M[:, K:, K:] = (self.P * w) @ self.P.T
        r = np.empty((self.S + 1, Tn))
        r[:, :K] = H[:, 0, :].T
        if nP:
            r[:, K:] = self.P @ (w * f)
        chi0 = np.sum(w * f * f)
        return chi0 - _solve_quad(M, r), M, r

    def design(self, z):
        """Design matrix (npix, K + nP) at an arbitrary z (templates interpolated)."""
        x = self.ol - np.log10(1 + z)
        A = np.empty((self.npix, self.K + self.nP))
        for k in range(self.K):
            A[:, k] = np.interp(x, self.tl, self.T[k])
        A[:, self.K:] = self.P.T
        return A


def _solve_quad(M, r):
    """r . M^-1 r for a batch of symmetric PSD systems, with diagonal scaling and a tiny ridge."""
    dg = np.einsum("...ii->...i", M)
    D = np.sqrt(np.where(dg > 0, dg, 1.0))
    Ms = M / (D[..., :, None] * D[..., None, :])
    rs = r / D
    Ms = Ms + 1e-9 * np.eye(M.shape[-1])
    x = np.linalg.solve(Ms, rs[..., None])[..., 0]
    return np.sum(rs * x, axis=-1)


@functools.lru_cache(maxsize=8)
def _prepared(ol0_i, npix, dloglam, zmin, zmax, n_poly, sigma_kms, extra_sigma):
    return _Prepared(ol0_i * dloglam, npix, dloglam, zmin, zmax, n_poly, sigma_kms, extra_sigma)


def _to_log_grid(wave, flux, ivar, dloglam, lo, hi):
    """Resample onto log10 grid of step dloglam (aligned to integer multiples) within [lo, hi] Angstrom."""
    lw = np.log10(wave)
    i0 = int(np.ceil(max(np.log10(lo), lw[0]) / dloglam - 1e-6))
    i1 = int(np.floor(min(np.log10(hi), lw[-1]) / dloglam + 1e-6))
    if i1 - i0 < 10:
        return i0, None, None
    ol = dloglam * np.arange(i0, i1 + 1)
    pos = np.interp(ol, lw, np.arange(lw.size))
    exact = np.allclose(pos, np.rint(pos), atol=1e-3)
    flux = np.atleast_2d(flux)
    if exact:
        j = np.rint(pos).astype(int)
        f = flux[:, j]
        w = None if ivar is None else np.atleast_2d(ivar)[:, j]
    else:
        j = np.clip(np.floor(pos).astype(int), 0, lw.size - 2)
        t = pos - j
        f = flux[:, j] * (1 - t) + flux[:, j + 1] * t
        if ivar is None:
            w = None
        else:
            iv = np.atleast_2d(ivar)
            both = (iv[:, j] > 0) & (iv[:, j + 1] > 0)
            with np.errstate(divide="ignore"):
                var = (1 - t) / np.where(iv[:, j] > 0, iv[:, j], 1) + t / np.where(iv[:, j + 1] > 0,
                                                                                  iv[:, j + 1], 1)
            w = np.where(both, 1.0 / var, 0.0)
    return i0, f, w


def fit_redshifts(wave, flux, ivar=None, z_range=(0.0, 0.35), dloglam=1e-4, n_poly=4, sigma_kms=150.0,
                  extra_sigma=0.0, keep_curve=False):
    """Fit redshifts of many spectra on a common wavelength grid (template preparation is shared).

    Parameters
    ----------
    wave : (L,) observed-frame VACUUM wavelength (Angstrom), increasing (log or linear sampling).
    flux : (L,) or (N, L) flux density (any normalisation).
    ivar : optional (N, L) inverse variance; None = uniform weights (e.g. generated spectra).
    z_range : (z_min, z_max) searched.
    dloglam : log10 step of the internal grid (1e-4 = SDSS pixels, ~69 km/s).
    n_poly : number of additive Legendre terms.
    sigma_kms : Gaussian broadening of the SSP templates (galaxy dispersion + instrument), km/s.
    extra_sigma : extra Gaussian smoothing of the spectrum in Angstrom (2 for preprocessed spectra).
    keep_curve : store the coarse chi2(z) curve in each result.

    Returns
    -------
    list of RedshiftResult (one per spectrum).
    """
    wave = np.asarray(wave, dtype=np.float64)
    flux = np.asarray(flux, dtype=np.float64)
    if wave.ndim != 1 or flux.shape[-1] != wave.size:
        raise ValueError(f"wave/flux: need wave (L,) and flux (..., L); got {wave.shape} and {flux.shape}")
    zmin, zmax = float(z_range[0]), float(z_range[1])
    if not (-0.01 <= zmin < zmax <= 3.0):
        raise ValueError(f"z_range: need -0.01 <= z_min < z_max <= 3, got {z_range}")
    lam_r, _ = _ssp_rest()
    lo, hi = lam_r[0] * (1 + zmax), lam_r[-1] * (1 + zmin)
    flux2 = np.atleast_2d(flux)
    nspec = flux2.shape[0]
    if ivar is not None:
        ivar = np.atleast_2d(np.asarray(ivar, dtype=np.float64))
        if ivar.shape != flux2.shape:
            raise ValueError(f"ivar: shape {ivar.shape} != flux shape {flux2.shape}")
        ivar = np.where(np.isfinite(ivar) & (ivar > 0), ivar, 0.0)
    bad = ~np.isfinite(flux2)
    if bad.any():
        flux2 = np.where(bad, 0.0, flux2)
        ivar = np.where(bad, 0.0, 1.0 if ivar is None else ivar)
    i0, F, W = _to_log_grid(wave, flux2, ivar, dloglam, lo, hi)
    if F is None:
        msg = (f"wave: no overlap of {wave[0]:.0f}-{wave[-1]:.0f} A with the range the templates cover at "
               f"every z in {z_range}: {lo:.0f}-{hi:.0f} A")
        return [RedshiftResult(np.nan, np.nan, ZW_NODATA, np.nan, 0, np.nan, 0, msg) for _ in range(nspec)]
    prep = _prepared(i0, F.shape[1], dloglam, zmin, zmax, n_poly, float(sigma_kms), float(extra_sigma))
    return [_fit_one(prep, F[i], None if W is None else W[i], keep_curve) for i in range(nspec)]


def fit_redshift(wave, flux, ivar=None, **kw):
    """Fit the redshift of one spectrum; see :func:`fit_redshifts` for the arguments.

    Returns
    -------
    RedshiftResult with z, z_err (Delta chi2 = 1), zwarning bits, chi2, dof, delta_chi2, message.
    """
    flux = np.asarray(flux)
    if flux.ndim != 1:
        raise ValueError(f"flux: fit_redshift takes one spectrum (1-D), got shape {flux.shape}; "
                         "use fit_redshifts for many")
    return fit_redshifts(wave, flux, ivar=ivar, keep_curve=kw.pop("keep_curve", True), **kw)[0]


def _fit_one(prep: _Prepared, f, w, keep_curve):
    have_ivar = w is not None
    if w is None:
        w = np.ones_like(f)
    n_good = int(np.sum(w > 0))
    npar = prep.K + prep.nP
    if n_good < 3 * npar:
        return RedshiftResult(np.nan, np.nan, ZW_NODATA, np.nan, 0, np.nan, n_good,
                              f"flux/ivar: only {n_good} usable pixels in the fitted range")
    if not have_ivar:
        # uniform weights, scaled so that chi2 is of order npix (rescaled again below)
        s = np.std(np.diff(f[w > 0])) / np.sqrt(2) or 1.0
        w = w / s ** 2
    chi2, _, _ = prep.scan(f, w)
    dof = n_good - npar
    o_best = int(np.argmin(chi2))
    zwarn = 0
    msgs = []
    # fine refinement: sub-pixel shifts around the best integer shift
    offs = np.linspace(-2.0, 2.0, 41)
    lz = (prep.s_max - o_best - offs) * prep.d
    zf = 10.0 ** lz - 1.0
    chif = np.empty(offs.size)
    for i, zz in enumerate(zf):
        A = prep.design(zz)
        Aw = A * w[:, None]
        M = A.T @ Aw
        r = Aw.T @ f
        chif[i] = np.sum(w * f * f) - _solve_quad(M[None], r[None])[0]
    j = int(np.argmin(chif))
    chi2_min = float(chif[j])
    scale = chi2_min / dof if (not have_ivar and chi2_min > 0) else 1.0
    sel = slice(max(j - 5, 0), min(j + 6, offs.size))
    a, b, c = np.polyfit(lz[sel] - lz[j], chif[sel], 2)
    if a > 0:
        lz0 = lz[j] - b / (2 * a)
        lz0 = float(np.clip(lz0, lz[sel].min(), lz[sel].max()))
        z = 10.0 ** lz0 - 1.0
        sig_lz = np.sqrt(scale / a)
        z_err = float(np.log(10) * (1 + z) * sig_lz)
        chi2_min = float(min(chi2_min, a * (lz0 - lz[j]) ** 2 + b * (lz0 - lz[j]) + c))
    else:
        z, z_err = float(zf[j]), np.nan
    # second-best minimum more than 1000 km/s away
    v = C_KMS * np.log((1 + prep.z_grid) / (1 + z))
    far = np.abs(v) > 1000.0
    loc = np.r_[False, (chi2[1:-1] <= chi2[:-2]) & (chi2[1:-1] <= chi2[2:]), False]
    loc |= np.r_[chi2[0] < chi2[1], np.zeros(chi2.size - 2, bool), chi2[-1] < chi2[-2]]
    cand = far & loc
    delta = float((chi2[cand].min() - chi2_min) / scale) if cand.any() else np.inf
    if delta < 0.01 * dof:
        zwarn |= ZW_SMALL_DELTA_CHI2
        msgs.append(f"another minimum within delta chi2 = {delta:.1f} (< 0.01 dof)")
    if o_best in (0, prep.S):
        zwarn |= ZW_Z_FITLIMIT
        msgs.append(f"minimum at the edge of the z range {prep.z_grid[-1]:.3f}-{prep.z_grid[0]:.3f}")
    if n_good < 500:
        zwarn |= ZW_LITTLE_COVERAGE
        msgs.append(f"only {n_good} good pixels")
    return RedshiftResult(float(z), z_err, zwarn, chi2_min / scale, dof, delta, n_good, "; ".join(msgs),
                          prep.z_grid if keep_curve else None, chi2 / scale if keep_curve else None)
