"""Galaxy spectral energy distributions for the mock survey (rest frame, vacuum, log-lambda grid).

Everything here is vectorised over a block of galaxies (leading axis B).

Units: template spectra are Bruzual & Charlot (2003) SSPs in L_sun/Angstrom per solar mass FORMED
(the mangadap packing keeps BC03's normalisation: the 10 Gyr solar SSP has M/L_V ~ 6 per formed mass).
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from datasets.schema import DLOGLAM

REPO = Path(__file__).resolve().parents[2]
BC03_PATH = REPO / "templates" / "spectra_bc03mpajhu_mangadap.npz"

C_KMS = 299792.458
L_SUN = 3.828e33  # erg/s
MPC_CM = 3.0856775814913673e24
TEMPLATE_FWHM = 2.3  # Angstrom, rest frame (BC03 at 1 A sampling)

# The rest-frame grid: 1e-4 dex (like the SDSS observed grid, so redshifting is a sub-pixel shift) from
# 2150 A (the blue edge of u, 2939 A, at the mock's highest redshift 0.36 is 2161 A rest) to 11200 A (the red
# edge of z, 11141 A, at the lowest redshift 0.003).
REST_LOGLAM0 = np.log10(2150.0)
N_REST = int(np.ceil((np.log10(11200.0) - REST_LOGLAM0) / DLOGLAM)) + 1

# Windows used to extend the templates beyond their coverage with a per-template power law
# f_lambda ~ lambda^alpha (least squares in log f vs log lambda). 3330-3600 A sits below the Balmer break,
# so the fitted slope carries each SSP's near-UV colour: rising for young SSPs. For OLD SSPs that window is
# nearly flat while the real near-UV falls steeply (ellipticals have NUV - u ~ 3 mag AB, i.e.
# f_lambda(2300)/f_lambda(3550) ~ 0.15, versus ~0.7 from the fitted slope alone), so blueward of the
# template edge the slope is steepened by UV_STEEPEN * clip(log10(age/1 Gyr), 0, 1): nothing for ages
# <= 1 Gyr, +4 for 10 Gyr. The extension is anchored at the template edge (continuous).
UV_STEEPEN = 4.0
BLUE_FIT = (3330.0, 3600.0)
RED_FIT = (8700.0, 9250.0)


def rest_loglam() -> np.ndarray:
    """The mock's rest-frame grid log10(lambda_vacuum / Angstrom)."""
    return REST_LOGLAM0 + DLOGLAM * np.arange(N_REST)


def air_to_vac(wave_air: np.ndarray) -> np.ndarray:
    """Air to vacuum wavelengths (Angstrom), Ciddor (1996) as in the SDSS idlutils ``airtovac``."""
    wave_air = np.asarray(wave_air, dtype=np.float64)
    vac = wave_air.copy()
    for _ in range(2):  # the refractive index is a function of the vacuum wavenumber: iterate
        sigma2 = (1e4 / vac) ** 2
        fact = 1.0 + 5.792105e-2 / (238.0185 - sigma2) + 1.67917e-3 / (57.362 - sigma2)
        vac = wave_air * fact
    return vac


@lru_cache(maxsize=1)
def load_templates() -> dict:
    """BC03 SSPs on the rest-frame vacuum log grid, extended blueward and redward by power laws.

    Returns a dict with ``flux`` (n_age*n_met, N_REST) float32 in L_sun/A per M_sun formed, ``ages`` (Gyr),
    ``metals`` ([M/H]), ``loglam`` (rest, vacuum).
    """
    d = np.load(BC03_PATH)
    lam_vac = air_to_vac(d["lam"])
    tpl = d["templates"]  # (n_lambda, n_age, n_met)
    ages, metals = d["ages"].astype(np.float64), d["metals"].astype(np.float64)
    n_lam, n_age, n_met = tpl.shape
    tpl = tpl.reshape(n_lam, n_age * n_met).T  # (n_tpl, n_lambda), index = age * n_met + met
    ll = rest_loglam()
    wave = 10.0 ** ll
    out = np.empty((tpl.shape[0], N_REST), dtype=np.float64)
    inside = (wave >= lam_vac[0]) & (wave <= lam_vac[-1])
    blue = wave < lam_vac[0]
    red = wave > lam_vac[-1]
    bsel = (lam_vac > BLUE_FIT[0]) & (lam_vac < BLUE_FIT[1])
    rsel = (lam_vac > RED_FIT[0]) & (lam_vac < RED_FIT[1])
    for k in range(tpl.shape[0]):
        out[k, inside] = np.interp(wave[inside], lam_vac, tpl[k])
        for sel, dest in ((bsel, blue), (rsel, red)):
            x = np.log10(lam_vac[sel])
            slope, _ = np.polyfit(x, np.log10(np.maximum(tpl[k, sel], 1e-30)), 1)
            # the power law passes through the mean level of the fit window (no jump at the edge)
            edge_x = np.log10(lam_vac[0] if dest is blue else lam_vac[-1])
            level = np.log10(np.mean(tpl[k, sel])) - slope * np.mean(x) + slope * edge_x  # at the edge
            if dest is blue:
                slope = slope + UV_STEEPEN * np.clip(np.log10(ages[k // n_met] / 1.0), 0.0, 1.0)
            out[k, dest] = 10.0 ** (level + slope * (np.log10(wave[dest]) - edge_x))
    return {"flux": out.astype(np.float32), "ages": ages, "metals": metals, "loglam": ll,
            "n_age": n_age, "n_met": n_met}


def calzetti_k(wave: np.ndarray, rv: float = 4.05) -> np.ndarray:
    """Calzetti et al. (2000) attenuation curve k(lambda) for wavelengths in Angstrom (valid 1200-22000 A)."""
    x = np.asarray(wave, dtype=np.float64) / 1e4
    k = np.where(
        x < 0.63,
        2.659 * (-2.156 + 1.509 / x - 0.198 / x**2 + 0.011 / x**3) + rv,
        2.659 * (-1.857 + 1.040 / x) + rv,
    )
    return np.maximum(k, 0.0)


def _age_bin_edges(ages: np.ndarray) -> np.ndarray:
    """Lookback-time bin edges (Gyr) around the template ages: geometric midpoints, 0 and 13 Gyr at ends."""
    mid = np.sqrt(ages[1:] * ages[:-1])
    return np.concatenate([[0.0], mid, [13.0]])


def sfh_weights(t_start: np.ndarray, tau: np.ndarray, t_quench: np.ndarray, metal: np.ndarray,
                mass_formed: np.ndarray, t_burst: np.ndarray | None = None, f_burst: np.ndarray | None = None,
                log_sfr_noise: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Template mass weights of a delayed-tau star-formation history with bursts, variability and quenching.

    SFR(lookback t) ~ (t_start - t) exp(-(t_start - t)/tau) for t < t_start, times 10**noise(t) (stochastic
    variability, ``log_sfr_noise`` sampled every 100 Myr and interpolated), plus a burst forming the
    fraction ``f_burst`` of the mass in a Gaussian of 50 Myr width centred at lookback ``t_burst``; the sum is
    multiplied by exp(-(t_quench - t)/0.3 Gyr) for t < t_quench (rapid shutdown ``t_quench`` Gyr ago; 0 =
    never), so a
    burst older than the quench survives (post-starburst) and a younger one is suppressed.
    Metallicity is a single value per component, linearly interpolated between the two neighbouring
    template metallicities (weights split between them).

    Parameters
    ----------
    t_start, tau, t_quench : (B,) Gyr.  metal : (B,) [M/H].  mass_formed : (B,) M_sun.
    t_burst, f_burst : (B,) Gyr and mass fraction (0 = no burst), optional.
    log_sfr_noise : (B, 131) dex on the lookback grid 0, 0.1, ..., 13 Gyr, optional.

    Returns
    -------
    w : (B, n_age * n_met) mass formed in each template (M_sun).
    sfr_now : (B,) M_sun/yr averaged over the last 100 Myr.
    age_mw : (B,) mass-weighted age (Gyr) of the component (for information).
    """
    tpl = load_templates()
    ages, metals = tpl["ages"], tpl["metals"]
    # lookback-time grid integrated into the template age bins: 10 Myr steps over the last 2.5 Gyr (young
    # bins, bursts), 50 Myr beyond (old bins are >= 1.3 Gyr wide)
    tt1 = np.concatenate([np.arange(0.0, 2.5 - 1e-9, 0.01), np.arange(2.5, 13.0 + 1e-9, 0.05)])
    dt = np.where(tt1 < 2.5 - 1e-9, 0.01, 0.05)[None, :]
    tt = tt1[None, :]
    s = t_start[:, None] - tt
    sfr = np.where(s > 0, s * np.exp(-np.clip(s, 0, None) / tau[:, None]), 0.0)
    if log_sfr_noise is not None:  # coarse 100 Myr noise, linearly interpolated onto the fine grid
        coarse = np.asarray(log_sfr_noise)
        k = tt1 / 0.1
        k0 = np.minimum(np.floor(k).astype(int), coarse.shape[1] - 2)
        fr = (k - k0)[None, :]
        sfr = sfr * 10 ** ((1 - fr) * coarse[:, k0] + fr * coarse[:, k0 + 1])
    sfr = sfr / np.maximum((sfr * dt).sum(1), 1e-30)[:, None]  # unit mass
    if t_burst is not None and f_burst is not None:
        g = np.exp(-0.5 * ((tt - t_burst[:, None]) / 0.05) ** 2)
        g = g / np.maximum((g * dt).sum(1), 1e-30)[:, None]
        sfr = (1 - f_burst[:, None]) * sfr + f_burst[:, None] * g
    quench = np.where((t_quench[:, None] > 0) & (tt < t_quench[:, None]),
                      np.exp(-(t_quench[:, None] - tt) / 0.3), 1.0)
    sfr = sfr * quench
    norm = (sfr * dt).sum(1)
    sfr = sfr / np.maximum(norm, 1e-30)[:, None] * mass_formed[:, None]  # M_sun / Gyr
    edges = _age_bin_edges(ages)
    idx = np.clip(np.searchsorted(edges, tt[0], side="right") - 1, 0, len(ages) - 1)
    starts = np.searchsorted(idx, np.arange(len(ages)))  # idx is monotonic in lookback time
    w_age = np.add.reduceat(sfr * dt, starts, axis=1)
    w_age[:, np.bincount(idx, minlength=len(ages)) == 0] = 0.0
    sfr_now = sfr[:, :10].sum(1) * 0.01 / 0.1 / 1e9  # last 100 Myr, M_sun/yr
    age_mw = (sfr * dt * tt).sum(1) / np.maximum((sfr * dt).sum(1), 1e-30)
    m = np.clip(metal, metals[0], metals[-1])
    j = np.clip(np.searchsorted(metals, m) - 1, 0, len(metals) - 2)
    f = (m - metals[j]) / (metals[j + 1] - metals[j])
    w_met = np.zeros((len(t_start), len(metals)))
    rows = np.arange(len(t_start))
    w_met[rows, j] = 1 - f
    w_met[rows, j + 1] = f
    w = (w_age[:, :, None] * w_met[:, None, :]).reshape(len(t_start), -1)
    return w, sfr_now, age_mw


def surviving_fraction(age_gyr: np.ndarray) -> np.ndarray:
    """Fraction of formed stellar mass still in stars and remnants (Chabrier-IMF-like return fraction).

    An approximation, 1 - 0.046 ln(age / 2.7 Myr): 0.62 at 10 Gyr, 0.80 at 0.1 Gyr.
    """
    return np.clip(1.0 - 0.046 * np.log(np.maximum(age_gyr, 0.003) / 0.0027), 0.55, 1.0)


def gaussian_broaden(flux: np.ndarray, sigma_pix: np.ndarray) -> np.ndarray:
    """Convolve each row of ``flux`` (B, N) on a log-lambda grid with a Gaussian of ``sigma_pix`` pixels.

    Done in Fourier space (one rfft per row); the rows are zero-padded at both ends by edge values so the
    circular convolution does not wrap.
    """
    b, n = flux.shape
    pad = int(np.ceil(6 * max(float(np.max(sigma_pix)), 1.0))) + 8
    x = np.concatenate([np.repeat(flux[:, :1], pad, 1), flux, np.repeat(flux[:, -1:], pad, 1)], axis=1)
    m = x.shape[1]
    nfft = 1 << int(np.ceil(np.log2(m)))
    k = np.fft.rfftfreq(nfft)
    ft = np.fft.rfft(x, n=nfft, axis=1)
    ft *= np.exp(-2.0 * (np.pi * k[None, :] * sigma_pix[:, None]) ** 2)
    y = np.fft.irfft(ft, n=nfft, axis=1)[:, pad:pad + n]
    return y.astype(flux.dtype, copy=False)


def sigma_inst_kms(wave_obs: np.ndarray) -> np.ndarray:
    """SDSS spectrograph resolution as a Gaussian sigma (km/s): R = 1500 at 3800 A to 2500 at 9000 A."""
    r = 1500.0 + (np.asarray(wave_obs) - 3800.0) * (1000.0 / 5200.0)
    return C_KMS / (2.3548 * np.clip(r, 1200.0, 2700.0))


def extra_broadening_kms(z: np.ndarray) -> np.ndarray:
    """Instrumental sigma to add in quadrature to the templates' own resolution (km/s), per galaxy.

    The templates have FWHM 2.3 A (rest); the observed line width must be sqrt(sigma_v^2 + sigma_inst^2).
    The quadrature difference sigma_inst(lambda(1+z))^2 - sigma_tpl(lambda)^2 is nearly constant over the
    spectrum (~30-40 km/s), so a single value per galaxy (the median over 4000-8500 A observed) is used;
    the error on the total width is a few km/s.
    """
    wobs = np.linspace(4000.0, 8500.0, 64)[None, :]
    wrest = wobs / (1.0 + z[:, None])
    s_tpl = C_KMS * TEMPLATE_FWHM / 2.3548 / wrest
    d2 = sigma_inst_kms(wobs) ** 2 - s_tpl**2
    return np.sqrt(np.clip(np.median(d2, axis=1), 0.0, None))


# Emission lines: name -> vacuum rest wavelength (Angstrom)
LINES = {
    "oii_3726": 3727.09, "oii_3729": 3729.88, "hd": 4102.89, "hg": 4341.68, "hb": 4862.68,
    "oiii_4959": 4960.30, "oiii_5007": 5008.24, "oi_6300": 6302.05, "nii_6548": 6549.86,
    "ha": 6564.61, "nii_6584": 6585.27, "sii_6717": 6718.29, "sii_6731": 6732.67,
}
