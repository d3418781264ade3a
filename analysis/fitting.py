"""Full-spectrum fitting with pPXF and the project's SSP templates (MIUSCAT; BC03 as fall-back).

One pPXF fit per spectrum gives, simultaneously:
* stellar kinematics (V, sigma_v; Gaussian LOSVD, ``moments=2``),
* light-weighted log age and [M/H] from the (un-regularised, ``regul=0``) SSP weights. The templates are
  normalised to their mean flux in 5070-5950 A, so weights are light fractions there (V-band light),
* stellar E(B-V) from pPXF's ``reddening`` (Calzetti et al. 2000 curve, R_V = 4.05: E(B-V) = A_V/4.05);
  with reddening on, no multiplicative polynomial is fitted (they are degenerate). An additive
  Legendre polynomial of degree 4 is fitted by default: without it sigma_v of the star-forming fixture
  came out 30 % above the pipeline's (template mismatch), with it all fixtures agree within 10 %. It
  can fill in absorption lines and partly mimic dust, so ages/[M/H]/E(B-V) are somewhat biased;
  ``degree=-1`` gives the cleaner population fit at the cost of kinematics,
* emission-line fluxes as two gas components (Balmer lines; forbidden lines), each with its own V and
  sigma. Doublets with fixed ratios ([OIII]4959/5007, [NII]6548/6584, [OI]6300/6364 = 0.33) are single
  templates; the returned flux is that of the strong line. [OII]3726,3729 and [SII]6716,6731 are free.
  Fluxes are in the input flux unit times Angstrom (observed frame), errors from pPXF's covariance.
  A gas component whose sigma ends at one of pPXF's bounds (velscale/100 and 1000 km/s) is not a
  measurement: a 1000 km/s "line" absorbs template mismatch (on real SDSS spectra it gave [NII] at
  S/N 4-8 where the pipeline measures S/N < 1.5), a ~1 km/s one fits a noise or sky spike. Such a
  component is flagged (``gas_at_bound``) and each of its lines too (``line_at_bound``); ``bpt.classify_fit``
  does not classify from flagged lines.

Resolution: the galaxy's total observed FWHM (instrument (+) ``extra_sigma`` Gaussian smoothing)
is moved to the rest frame (/(1+z)) and the templates are convolved (pPXF ``varsmooth``) with the
difference to their own FWHM, so the fitted sigma_v is intrinsic. Where the galaxy is SHARPER than the
templates (e.g. blue arm at z > 0.1: 2.3/(1+z) A vs MIUSCAT 2.51 A), the excess template broadening
is removed from sigma_v in quadrature (median over the fitted range, reported as ``sigma_excess``).

Wavelengths: galaxy vacuum -> air (constant factor, as in pPXF's examples), templates and line lists are
in air. The galaxy is de-redshifted with the given z before fitting, so the fitted V is a residual.

Caching: log-rebinned, convolved templates are cached per (library, velscale, rest-frame resolution
curve sampled every 100 A and rounded to 0.02 A). Many spectra with similar z and the same resolution
setup reuse them (z rounded to ~0.005 changes nothing measurable).
"""
from __future__ import annotations

import contextlib
import functools
import io
from dataclasses import dataclass, field

import numpy as np
from ppxf import ppxf_util as util
from ppxf.ppxf import ppxf

from analysis._common import C_KMS, SIGMA_TO_FWHM, load_ssp, observed_fwhm

__all__ = ["FitResult", "fit_spectrum", "LINE_NAMES", "SIGMA_BOUNDS", "at_sigma_bound"]

#: Emission lines reported by fit_spectrum (names of the output dict); pPXF template name -> output
#: name and the factor to convert the template flux to the named line's flux.
_GAS_MAP = {
    "Hdelta": ("Hdelta", 1.0), "Hgamma": ("Hgamma", 1.0), "Hbeta": ("Hbeta", 1.0), "Halpha": ("Halpha", 1.0),
    "[OII]3726": ("[OII]3726", 1.0), "[OII]3729": ("[OII]3729", 1.0),
    "[NeIII]3869": ("[NeIII]3869", 1.0),
    "[OIII]5007_d": ("[OIII]5007", 1.0 / 1.33), "[OI]6300_d": ("[OI]6300", 1.0 / 1.33),
    "[NII]6583_d": ("[NII]6584", 1.0 / 1.33),
    "[SII]6716": ("[SII]6717", 1.0), "[SII]6731": ("[SII]6731", 1.0),
}
LINE_NAMES = tuple(v[0] for v in _GAS_MAP.values())
_VELSCALE_SDSS = C_KMS * np.log(10.0) * 1e-4        # 69.03 km/s: SDSS pixel
#: pPXF's default sigma bounds as (fraction of velscale, km/s): velscale/100 < sigma < 1000 km/s.
SIGMA_BOUNDS = (0.01, 1000.0)


def at_sigma_bound(sigma, velscale):
    """True where a fitted sigma (km/s) is at pPXF's lower (< 2 velscale/100) or upper (> 99 % of
    1000 km/s) bound. The margins allow for the optimiser stopping just inside a bound."""
    sigma = np.asarray(sigma, dtype=float)
    return (sigma <= 2.0 * SIGMA_BOUNDS[0] * velscale) | (sigma >= 0.99 * SIGMA_BOUNDS[1])
_NORM_RANGE = (5070.0, 5950.0)
_FWHM_NODES = np.arange(2500.0, 10001.0, 100.0)
_FWHM_NODES_OBS = np.arange(3000.0, 12001.0, 100.0)


@dataclass
class FitResult:
    """Outcome of :func:`fit_spectrum` (NaN-filled when ``success`` is False)."""
    success: bool
    message: str
    z: float = np.nan                 # input redshift
    velocity: float = np.nan          # residual stellar velocity w.r.t. z (km/s)
    sigma_v: float = np.nan           # intrinsic stellar velocity dispersion (km/s)
    sigma_v_err: float = np.nan
    age_lw: float = np.nan            # 10**log_age_lw in Gyr
    log_age_lw: float = np.nan        # light-weighted mean log10(age / yr)
    metallicity_lw: float = np.nan    # light-weighted mean [M/H]
    ebv: float = np.nan               # stellar E(B-V), Calzetti
    lines: dict = field(default_factory=dict)        # name -> flux (flux unit x Angstrom)
    line_errors: dict = field(default_factory=dict)
    gas_sigma: float = np.nan         # forbidden-line sigma (km/s)
    gas_sigmas: dict = field(default_factory=dict)     # 'balmer'/'forbidden' -> sigma (km/s)
    gas_at_bound: dict = field(default_factory=dict)   # 'balmer'/'forbidden' -> sigma at a pPXF bound
    line_at_bound: dict = field(default_factory=dict)  # line name -> its component is at a bound
    chi2_dof: float = np.nan
    library: str = ""
    sigma_excess: float = 0.0         # template broadening beyond the galaxy's, removed in quadrature
    # arrays for plotting: observed-frame vacuum wavelength of the fitted pixels, data, model, gas model
    wave: np.ndarray = field(default=None, repr=False)
    flux: np.ndarray = field(default=None, repr=False)
    bestfit: np.ndarray = field(default=None, repr=False)
    gas_bestfit: np.ndarray = field(default=None, repr=False)
    goodpixels: np.ndarray = field(default=None, repr=False)


class _Templates:
    def __init__(self, library, velscale, fwhm_key, age_step):
        ssp = load_ssp(library)
        lam = ssp["lam"]
        fwhm_gal = np.interp(lam, _FWHM_NODES, np.asarray(fwhm_key))
        diff = (fwhm_gal ** 2 - ssp["fwhm"] ** 2)
        sigma = np.sqrt(diff.clip(0)) / SIGMA_TO_FWHM
        ages = ssp["ages"][::age_step]
        spectra = ssp["templates"][:, ::age_step, :]
        n_age, n_met = spectra.shape[1:]
        flat = spectra.reshape(lam.size, -1)
        if np.any(sigma > 0):
            flat = util.varsmooth(lam, flat, sigma)
        temps, ln_lam = util.log_rebin(lam, flat, velscale=velscale)[:2]
        lam_t = np.exp(ln_lam)
        band = (lam_t >= _NORM_RANGE[0]) & (lam_t <= _NORM_RANGE[1])
        temps /= temps[band].mean(0)
        self.stars = temps
        self.ln_lam = ln_lam
        self.lam = lam_t
        self.log_age = np.repeat(np.log10(ages * 1e9), n_met)          # matches reshape order
        self.metal = np.tile(ssp["metals"], n_age)
        # excess template width (km/s) where the galaxy is sharper than the templates
        ex = np.sqrt((-diff).clip(0)) / SIGMA_TO_FWHM / lam * C_KMS
        self.excess_lam, self.excess = lam, ex
        fw = functools.partial(np.interp, xp=_FWHM_NODES, fp=np.asarray(fwhm_key))
        with contextlib.redirect_stdout(io.StringIO()):
            gas, names, wave = util.emission_lines(ln_lam, [lam_t[0], lam_t[-1]], fw)
        keep = np.array([n in _GAS_MAP for n in names])
        self.gas, self.gas_names, self.gas_wave = gas[:, keep], np.asarray(names)[keep], wave[keep]


@functools.lru_cache(maxsize=32)
def _templates(library, velscale, fwhm_key, age_step):
    return _Templates(library, velscale, fwhm_key, age_step)


def _choose_library(lam_min_rest_air, library):
    if library != "auto":
        if library not in ("miuscat", "bc03"):
            raise ValueError(f"library: must be 'auto', 'miuscat' or 'bc03', got {library!r}")
        return library
    # MIUSCAT unless it would cut more than 150 A off the blue end of the spectrum
    return "miuscat" if lam_min_rest_air > load_ssp("miuscat")["lam"][0] - 150.0 else "bc03"


def _log_grid(wave, flux, ivar):
    """Return (ln_lam, flux, noise or None, velscale) on a ln-uniform grid (SDSS input: untouched)."""
    ln = np.log(wave)
    d = np.diff(ln)
    if np.allclose(d, d[0], rtol=1e-3, atol=0):
        return ln, flux, None if ivar is None else ivar, C_KMS * np.mean(d)
    velscale = _VELSCALE_SDSS
    f, ln_new = util.log_rebin(wave, flux, velscale=velscale)[:2]
    if ivar is None:
        return ln_new, f, None, velscale
    good = (ivar > 0).astype(float)
    var = np.where(ivar > 0, 1.0 / np.where(ivar > 0, ivar, 1.0), 0.0)
    v = util.log_rebin(wave, var, velscale=velscale)[0]
    g = util.log_rebin(wave, good, velscale=velscale)[0]
    dlam_old = np.interp(np.exp(ln_new), wave, np.gradient(wave))
    dlam_new = np.exp(ln_new) * velscale / C_KMS
    # averaging ~dlam_new/dlam_old independent pixels reduces the variance by that factor
    v = v * np.clip(dlam_old / dlam_new, None, 1.0)
    iv = np.where((g > 0.999) & (v > 0), 1.0 / np.where(v > 0, v, 1.0), 0.0)
    return ln_new, f, iv, velscale


@dataclass
class _Prepared:
    """A spectrum ready for pPXF: rest-frame air ln-uniform grid, flux and noise divided by ``scale``."""
    lib: str
    lam_gal: np.ndarray
    gal: np.ndarray
    noise: np.ndarray
    gpix: np.ndarray
    scale: float
    velscale: float


def _check_arrays(wave, flux, ivar):
    """Return wave, flux, ivar as float64 arrays; ValueError if their shapes do not match."""
    wave = np.asarray(wave, dtype=np.float64)
    flux = np.asarray(flux, dtype=np.float64)
    if wave.ndim != 1 or flux.shape != wave.shape:
        raise ValueError(f"wave/flux: need two 1-D arrays of equal length, got {wave.shape}, {flux.shape}")
    if ivar is not None:
        ivar = np.asarray(ivar, dtype=np.float64)
        if ivar.shape != wave.shape:
            raise ValueError(f"ivar: shape {ivar.shape} != wave shape {wave.shape}")
    return wave, flux, ivar


def _prepare_spectrum(wave, flux, z, ivar, wave_range, library) -> _Prepared | FitResult:
    """De-redshift to air, choose the library, cut to its coverage, log-rebin and normalise.

    Returns a failed FitResult when too few good pixels or no positive flux remain.
    """
    good = np.isfinite(flux)
    if ivar is not None:
        good &= np.isfinite(ivar) & (ivar > 0)
    if wave_range is not None:
        good &= (wave >= wave_range[0]) & (wave <= wave_range[1])
    flux = np.where(np.isfinite(flux), flux, 0.0)
    # de-redshift and go to air (constant factor keeps a log grid log-uniform)
    lam_rest = wave / (1.0 + z)
    lam_rest = lam_rest * np.median(util.vac_to_air(lam_rest) / lam_rest)
    lib = _choose_library(lam_rest[good].min() if good.any() else lam_rest[0], library)
    ssp_lam = load_ssp(lib)["lam"]
    # pPXF needs template coverage beyond the galaxy (it asserts start +- 2900 km/s): 3200 km/s margin
    margin = np.exp(3200.0 / C_KMS)
    cover = (lam_rest > ssp_lam[0] * margin) & (lam_rest < ssp_lam[-1] / margin)
    good &= cover
    if good.sum() < 200:
        return FitResult(False, f"wave: fewer than 200 good pixels inside the {lib} template range "
                         f"{ssp_lam[0]:.0f}-{ssp_lam[-1]:.0f} A (rest) at z={z:.3f}", z=float(z), library=lib)
    sel = np.flatnonzero(cover)
    sel = np.arange(sel[0], sel[-1] + 1)
    lam_rest, flux_s, good_s = lam_rest[sel], flux[sel], good[sel]
    ivar_s = None if ivar is None else np.where(good_s, ivar[sel], 0.0)
    ln_lam, gal, iv, velscale = _log_grid(lam_rest, np.where(good_s, flux_s, 0.0), ivar_s)
    lam_gal = np.exp(ln_lam)
    if ivar is None:
        gpix = np.interp(lam_gal, lam_rest, good_s.astype(float)) > 0.999
        noise = np.ones_like(gal)
    else:
        gpix = iv > 0
        noise = np.where(gpix, 1.0 / np.sqrt(np.where(gpix, iv, 1.0)), 1e10)
    scale = np.median(np.abs(gal[gpix])) if gpix.any() else 0.0
    if not np.isfinite(scale) or scale <= 0:
        return FitResult(False, "flux: no positive flux in the fitted range", z=float(z), library=lib)
    gal = gal / scale
    noise = noise / scale if ivar is not None else noise
    return _Prepared(lib, lam_gal, gal, noise, gpix, scale, velscale)


def _fit_templates(lib, wave, fwhm_obs, z, velscale, age_step) -> _Templates:
    """The (cached) templates matched to the galaxy's rest-frame resolution."""
    # cache key: observed-frame FWHM curve (rounded to 0.05 A) and z rounded to 0.01; the rest-frame
    # resolution then changes by < 1 % inside a bin, which moves sigma_v by < 1 km/s
    z_bin = round(float(z), 2)
    fobs = np.round(np.interp(_FWHM_NODES_OBS, wave, fwhm_obs) / 0.05) * 0.05
    fwhm_key = tuple(np.interp(_FWHM_NODES * (1 + z_bin), _FWHM_NODES_OBS, fobs) / (1 + z_bin))
    return _templates(lib, round(float(velscale), 4), fwhm_key, int(age_step))


def _template_set(T: _Templates, sp: _Prepared, fit_gas: bool):
    """Return (templates, component, gas_names): the stars (component 0) plus, with ``fit_gas``, the
    emission lines inside the fitted range as Balmer (component 1) and forbidden (component 2) lines."""
    n_st = T.stars.shape[1]
    lam_range = [sp.lam_gal[sp.gpix].min(), sp.lam_gal[sp.gpix].max()]
    templates = T.stars
    component = [0] * n_st
    gas_names = None
    if fit_gas:
        w_in = (T.gas_wave > lam_range[0]) & (T.gas_wave < lam_range[1])
        gas_names = T.gas_names[w_in]
        if gas_names.size:
            balmer = np.array(["[" not in n for n in gas_names])
            order = np.r_[np.flatnonzero(balmer), np.flatnonzero(~balmer)]
            gas = T.gas[:, w_in][:, order]
            gas_names = gas_names[order]
            templates = np.column_stack([T.stars, gas])
            component += [1] * int(balmer.sum()) + [2] * int((~balmer).sum())
    return templates, np.array(component), gas_names


def _run_ppxf(templates, sp: _Prepared, T: _Templates, component, gas_names, degree, mdegree, use_red,
              goodpixels, linear_method):
    """One pPXF fit (Gaussian LOSVD per component; pPXF's printout suppressed). May raise."""
    ncomp = component.max() + 1
    gas_component = component > 0
    start = [[0.0, 150.0]] + [[0.0, 100.0]] * (ncomp - 1)
    with contextlib.redirect_stdout(io.StringIO()):
        return ppxf(templates, sp.gal, sp.noise, sp.velscale, start if ncomp > 1 else start[0],
                    moments=[2] * ncomp if ncomp > 1 else 2, degree=degree, mdegree=mdegree,
                    lam=sp.lam_gal, lam_temp=T.lam, component=component if ncomp > 1 else 0,
                    gas_component=gas_component if ncomp > 1 else None,
                    gas_names=gas_names if ncomp > 1 else None, reddening=0.3 if use_red else None,
                    goodpixels=goodpixels, quiet=True, linear_method=linear_method)


def _gas_lines(pp, sol, T: _Templates, sp: _Prepared, component, gas_names, z, err_scale):
    """Return (lines, line_errors, line_at_bound, gas_sigmas, gas_at_bound, gas_sigma) of the gas
    components (empty dicts and NaN without them); fluxes in the input unit x observed Angstrom."""
    lines, lerrs, line_bound, gsig, gbound = {}, {}, {}, {}, {}
    gas_sigma = np.nan
    n_st = T.stars.shape[1]
    if component.max() + 1 > 1 and pp.gas_flux is not None:
        wave_of = dict(zip(T.gas_names, T.gas_wave))
        comp_of = dict(zip(gas_names, component[n_st:]))
        cname = {c: "balmer" if any("[" not in n for n, k in comp_of.items() if k == c) else "forbidden"
                 for c in set(comp_of.values())}
        for c, nm in cname.items():
            gsig[nm] = float(sol[c, 1])
            gbound[nm] = bool(at_sigma_bound(sol[c, 1], sp.velscale))
        for name, gf, ge in zip(gas_names, pp.gas_flux, pp.gas_flux_error):
            out_name, fac = _GAS_MAP[name]
            dlam = wave_of[name] * (1.0 + z) * sp.velscale / C_KMS       # observed pixel width at the line
            lines[out_name] = float(gf * dlam * fac * sp.scale)
            lerrs[out_name] = float(ge * dlam * fac * sp.scale * err_scale)
            line_bound[out_name] = gbound[cname[comp_of[name]]]
        gas_sigma = float(sol[-1, 1])
    return lines, lerrs, line_bound, gsig, gbound, gas_sigma


def _pack_result(pp, sp: _Prepared, T: _Templates, z, has_ivar, component, gas_names, use_red,
                 goodpixels, keep_arrays) -> FitResult:
    """The FitResult of a pPXF fit: kinematics, populations, dust, lines, message (and arrays)."""
    sol = np.atleast_2d(pp.sol)
    err = np.atleast_2d(pp.error)
    chi2 = float(pp.chi2)
    err_scale = np.sqrt(max(chi2, 1.0)) if has_ivar else np.sqrt(chi2)
    # excess template broadening over the fitted range (km/s), removed in quadrature
    ex = float(np.median(np.interp(sp.lam_gal[goodpixels], T.excess_lam, T.excess)))
    sig_fit = float(sol[0, 1])
    sigma_v = float(np.sqrt(max(sig_fit ** 2 - ex ** 2, 0.0)))
    wst = pp.weights[:T.stars.shape[1]]
    wsum = wst.sum()
    if wsum > 0:
        log_age = float(wst @ T.log_age / wsum)
        metal = float(wst @ T.metal / wsum)
    else:
        log_age = metal = np.nan
    lines, lerrs, line_bound, gsig, gbound, gas_sigma = _gas_lines(pp, sol, T, sp, component, gas_names, z,
                                                                   err_scale)
    ebv = float(pp.reddening) / 4.05 if use_red and pp.reddening is not None else np.nan
    msg = "ok"
    success = bool(np.isfinite(chi2))
    if sig_fit >= 999.0 or sig_fit <= 1.0:
        msg = f"sigma at the pPXF bound ({sig_fit:.0f} km/s): unreliable"
    elif any(gbound.values()):
        msg = "ok; gas at a pPXF sigma bound (lines flagged): " + ", ".join(
            f"{k} {gsig[k]:.0f} km/s" for k, b in gbound.items() if b)
    age_gyr = 10 ** log_age / 1e9 if np.isfinite(log_age) else np.nan
    res = FitResult(success, msg, z=float(z), velocity=float(sol[0, 0]), sigma_v=sigma_v,
                    sigma_v_err=float(err[0, 1] * err_scale), age_lw=age_gyr, log_age_lw=log_age,
                    metallicity_lw=metal, ebv=ebv, lines=lines,
                    line_errors=lerrs, gas_sigma=gas_sigma, gas_sigmas=gsig, gas_at_bound=gbound,
                    line_at_bound=line_bound, chi2_dof=chi2, library=sp.lib, sigma_excess=ex)
    if keep_arrays:
        lam_vac = sp.lam_gal / np.median(util.vac_to_air(sp.lam_gal) / sp.lam_gal)
        res.wave = lam_vac * (1.0 + z)
        res.flux = sp.gal * sp.scale
        res.bestfit = pp.bestfit * sp.scale
        res.gas_bestfit = (pp.gas_bestfit * sp.scale if pp.gas_bestfit is not None else np.zeros_like(sp.gal))
        res.goodpixels = goodpixels
    return res


def fit_spectrum(wave, flux, z, ivar=None, fwhm_inst=None, extra_sigma=0.0, library="auto",
                 age_step=3, degree=4, mdegree=0, reddening=True, fit_gas=True, wave_range=None,
                 keep_arrays=False, linear_method="nnls"):
    """Fit one spectrum with pPXF: stellar kinematics, populations, dust and emission lines.

    Parameters
    ----------
    wave : (L,) observed-frame VACUUM wavelength (Angstrom), log- or linearly sampled.
    flux : (L,) flux density per Angstrom (any normalisation; line fluxes come out in the same unit x A).
    z : redshift (e.g. the pipeline's or :func:`analysis.fit_redshift`'s).
    ivar : optional (L,) inverse variance; None = uniform weights, errors rescaled by sqrt(chi2/dof).
    fwhm_inst : instrumental FWHM in observed Angstrom: None (nominal SDSS curve), scalar or (L,) array.
    extra_sigma : extra Gaussian smoothing applied to the spectrum, sigma in observed Angstrom
        (2.0 for the project's preprocessed spectra).
    library : 'auto' (MIUSCAT unless it misses > 150 A of the blue end -> BC03), 'miuscat' or 'bc03'.
    age_step : use every ``age_step``-th age of the library (MIUSCAT: 3 -> 17 ages x 4 [M/H]).
    linear_method : pPXF linear solver (nnls: same answer as lsq_box here, ~2x faster).
    degree, mdegree : pPXF additive / multiplicative polynomial degrees (mdegree > 0 disables reddening).
    reddening : fit the Calzetti stellar attenuation.
    fit_gas : include the emission-line components.
    wave_range : optional (min, max) observed Angstrom to fit.
    keep_arrays : store wave/flux/bestfit/gas_bestfit in the result (for plots).

    Returns
    -------
    FitResult. Never raises for a spectrum that cannot be fitted (no coverage, no good pixels, pPXF
    failure): ``success`` is False and ``message`` says why. Bad arguments raise ValueError.
    """
    wave, flux, ivar = _check_arrays(wave, flux, ivar)
    if not np.isfinite(z) or z < -0.01:
        return FitResult(False, f"z: invalid redshift {z}", z=float(z))
    fwhm_obs = observed_fwhm(wave, fwhm_inst, extra_sigma)
    sp = _prepare_spectrum(wave, flux, z, ivar, wave_range, library)
    if isinstance(sp, FitResult):
        return sp
    T = _fit_templates(sp.lib, wave, fwhm_obs, z, sp.velscale, age_step)
    templates, component, gas_names = _template_set(T, sp, fit_gas)
    use_red = reddening and mdegree <= 0
    goodpixels = np.flatnonzero(sp.gpix)
    try:
        pp = _run_ppxf(templates, sp, T, component, gas_names, degree, mdegree, use_red, goodpixels,
                       linear_method)
    except Exception as e:   # noqa: BLE001 - pPXF raises bare asserts/LinAlgErrors on hopeless input
        return FitResult(False, f"pPXF failed: {type(e).__name__}: {e}", z=float(z), library=sp.lib)
    return _pack_result(pp, sp, T, z, ivar is not None, component, gas_names, use_red, goodpixels,
                        keep_arrays)
