"""Simulate one fixed block of mock SDSS galaxies: population, spectra, images, noise, truth.

Determinism: block ``b`` of a survey with seed ``s`` draws every random number from
``numpy.random.default_rng([s, b])`` and nothing else, so the output does not depend on how blocks are
distributed over worker processes or written in chunks; the first ``n`` galaxies of a survey are the
same for any larger ``n`` (a survey is a prefix of the infinite sequence of blocks).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from astropy.io import fits

from datasets.schema import DLOGLAM, IMAGE_SIZE, LOGLAM0, N_LOGLAM, PIXEL_SCALE_ARCSEC, sdss_loglam_grid
from surveys.description import SDSS
from surveys.mock import noise, render, scene
from surveys.mock.sed import (
    C_KMS,
    L_SUN,
    LINES,
    MPC_CM,
    N_REST,
    REPO,
    REST_LOGLAM0,
    calzetti_k,
    extra_broadening_kms,
    gaussian_broaden,
    load_templates,
    rest_loglam,
    sfh_weights,
    sigma_inst_kms,
    surviving_fraction,
)
from surveys.mock.sed import (
    DLOGLAM as REST_DLOGLAM,
)

BLOCK = 64  # galaxies per deterministic block
MOCK_VERSION = 2  # bump when the simulated population / physics changes: written to the survey's attrs
# Redshift range of the candidate draw. It is not a selection cut: the flux limit r <= 17.77 shapes n(z),
# which is negligible at these edges (z < 0.005 is peculiar-velocity dominated; very few galaxies lie
# above 0.3; 0.35 is the upper end of the toolbox's redshift search analysis.redshift.fit_redshifts)
Z_MIN, Z_MAX = 0.005, 0.35
R_LIMIT, R_BRIGHT = 17.77, 14.0
MU50_LIMIT = 24.5  # r-band mean surface brightness within the half-light radius (mag/arcsec^2), main sample
BANDS = SDSS.bands  # "ugriz"
COSMOS_FITS = REPO / "templates" / "cosmos" / "real_galaxy_catalog_23.5_example_fits.fits"
KENNICUTT_HA = 5.37e-42  # SFR [M_sun/yr] per L(Halpha) [erg/s] (Kennicutt & Evans 2012, Kroupa/Chabrier IMF)
DEMARC = {"kauffmann": (0.61, 0.05, 1.30), "kewley": (0.61, 0.47, 1.19)}
assert REST_DLOGLAM == DLOGLAM


# ----------------------------------------------------------------------------------------- set-up caches
@lru_cache(maxsize=1)
def cosmology_tables() -> dict:
    """Planck18 look-up tables on a fine redshift grid 0.001-0.5 (interpolated per galaxy)."""
    from astropy.cosmology import Planck18 as cosmo
    z = np.linspace(0.001, 0.5, 4991)
    return {
        "z": z,
        "dl_mpc": cosmo.luminosity_distance(z).value,
        "kpc_per_arcsec": cosmo.kpc_proper_per_arcmin(z).value / 60.0,
        "dvdz": cosmo.differential_comoving_volume(z).value,
        "lookback_gyr": cosmo.lookback_time(z).value,
    }


def _cosmo(name: str, z: np.ndarray) -> np.ndarray:
    """Interpolate a cosmology table; a redshift outside the table is an error (np.interp would clamp)."""
    t = cosmology_tables()
    z = np.asarray(z)
    if z.size and (z.min() < t["z"][0] or z.max() > t["z"][-1]):
        raise ValueError(f"cosmology_tables: z: {z.min():.4g}-{z.max():.4g} outside the table "
                         f"{t['z'][0]:.3g}-{t['z'][-1]:.3g}")
    return np.interp(z, t["z"], t[name])


@lru_cache(maxsize=1)
def filters() -> dict:
    """SDSS filter curves (speclite 'sdss2010-*'): wavelength (A) and response arrays."""
    import speclite.filters as sf
    fs = sf.load_filters(*[f"sdss2010-{b}" for b in BANDS])
    return {"wave": [np.asarray(f.wavelength, float) for f in fs],
            "resp": [np.asarray(f.response, float) for f in fs],
            "weff": np.array([f.effective_wavelength.value for f in fs])}


@lru_cache(maxsize=1)
def cosmos_disk_q() -> np.ndarray:
    """Disk axis ratios of the COSMOS bulge+disk fits (templates/cosmos), used as an empirical q draw."""
    with fits.open(COSMOS_FITS) as h:
        d = h[1].data
        q = np.asarray(d["bulgefit"][:, 3], float)
        ok = (np.asarray(d["fit_status"][:, 4]) > 0) & (q > 0.05) & (q <= 1.0)
    return q[ok] if ok.sum() > 10 else q


def band_weights(z: np.ndarray, bands=range(5)) -> np.ndarray:
    """Matrix W (B, nb, N_REST) so that f_nu [erg/s/cm2/Hz] = sum_rest f_lambda,obs(lambda_rest (1+z)) W.

    AB: f_nu = int f_lambda R lambda dlambda / int R c / lambda dlambda, evaluated on the rest grid mapped
    to the observed frame (d lambda_obs = lambda_obs ln10 dloglam).
    """
    f = filters()
    wobs = 10 ** rest_loglam()[None, :] * (1 + z[:, None])
    out = np.empty((len(z), len(bands), N_REST), dtype=np.float32)
    for j, b in enumerate(bands):
        r = np.interp(wobs, f["wave"][b], f["resp"][b], left=0.0, right=0.0)
        out[:, j] = r * wobs**2 / (C_KMS * 1e13 * r.sum(1, keepdims=True))
    return out


def line_band_factor(z: np.ndarray, lam_rest: np.ndarray) -> np.ndarray:
    """f_nu per unit line flux (erg/s/cm2) for lines at ``lam_rest`` (A, vacuum): (B, n_lines, 5)."""
    f = filters()
    wobs = lam_rest[None, :] * (1 + z[:, None])
    out = np.empty(wobs.shape + (5,))
    for b in range(5):
        r = np.interp(wobs, f["wave"][b], f["resp"][b], left=0.0, right=0.0)
        wf = 10 ** rest_loglam()[None, :] * (1 + z[:, None])
        rsum = np.interp(wf, f["wave"][b], f["resp"][b], left=0.0, right=0.0).sum(1, keepdims=True)
        out[..., b] = r * wobs / (C_KMS * 1e13 * np.log(10) * DLOGLAM * rsum)
    return out


def fnu_to_nmgy(fnu):
    """f_nu (erg/s/cm2/Hz) to nanomaggies."""
    return np.asarray(fnu) / 3631e-23 * 1e9


def nmgy_to_mag(f):
    """Nanomaggies to AB magnitude (non-positive flux -> 99)."""
    f = np.asarray(f, dtype=np.float64)
    return np.where(f > 0, 22.5 - 2.5 * np.log10(np.clip(f, 1e-30, None)), 99.0)


# ----------------------------------------------------------------------------------------- population
@lru_cache(maxsize=1)
def _zm_grid() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Joint (z, log M) sampling grid: comoving volume x double-Schechter SMF above a conservative floor.

    SMF: Baldry et al. (2012) z < 0.06 fit (log M* = 10.66, phi1 = 3.96e-3, a1 = -0.35, phi2 = 0.79e-3,
    a2 = -1.47). The floor removes galaxies that could not reach r = 17.77 even with the lowest M/L.
    """
    z = np.linspace(Z_MIN, Z_MAX, 356)
    zc = 0.5 * (z[1:] + z[:-1])
    lm = np.linspace(7.0, 12.2, 521)
    lmc = 0.5 * (lm[1:] + lm[:-1])
    x = 10 ** (lmc - 10.66)
    phi = np.exp(-x) * (3.96e-3 * x ** (-0.35) + 0.79e-3 * x ** (-1.47)) * x  # per dex
    dm = 5 * np.log10(_cosmo("dl_mpc", zc) * 1e5)
    floor = 0.4 * (4.65 - (R_LIMIT - dm - 0.1)) - 0.55  # log L_r of the limit minus the lowest log(M/L_r)
    dens = _cosmo("dvdz", zc)[:, None] * phi[None, :] * (lmc[None, :] > floor[:, None])
    cdf = np.cumsum(dens.ravel())
    return z, lm, cdf / cdf[-1]


def draw_candidates(rng: np.random.Generator, m: int) -> dict:
    """Draw ``m`` candidate galaxies' physical parameters (before the magnitude limit)."""
    zg, lmg, cdf = _zm_grid()
    cell = np.searchsorted(cdf, rng.random(m))
    iz, im = np.divmod(cell, len(lmg) - 1)
    z = zg[iz] + rng.random(m) * (zg[1] - zg[0])
    logm = lmg[im] + rng.random(m) * (lmg[1] - lmg[0])
    p = {"z": z, "log_mstar": logm}
    # red (quenched) fraction rising with mass
    p_red = 1 / (1 + np.exp(-(logm - 10.45) / 0.22))
    red = rng.random(m) < p_red
    p["red"] = red
    bt = np.where(red, 0.08 + 0.9 * rng.beta(4.0, 1.8, m), 0.9 * rng.beta(1.2, 5.5, m))
    p["bt_mass"] = bt
    # formation epochs are cosmic times (lookback from today, 8-12.5 Gyr); a galaxy seen at redshift z is
    # observed t_lb(z) earlier, so its stars are younger by that much (passive luminosity evolution)
    t_lb = _cosmo("lookback_gyr", z)
    # bulge: old, metal-rich, little dust; quenched (red-sequence) galaxies formed earliest (downsizing)
    p["b_tstart"] = np.where(red, rng.uniform(9.0, 12.5, m), rng.uniform(8.0, 12.5, m)) - t_lb
    p["b_tau"] = rng.uniform(0.3, 1.5, m)
    p["b_met"] = np.clip(0.05 + 0.2 * (logm - 10.8) + rng.normal(0, 0.08, m), -0.65, 0.38)
    # disks: star formation began early (8-12.5 Gyr ago) and declines (tau 1.5-6 Gyr), so the blue cloud's
    # light mixes old and young stars (SDSS blue cloud u-r ~1.6-2.0); ~15 % of blue disks are fading
    # (green valley, recent quench); red galaxies' disks were quenched 3-8 Gyr ago
    p["d_tstart"] = rng.uniform(8.0, 12.5, m) - t_lb
    p["d_tau"] = np.where(red, rng.uniform(1.0, 4.0, m), np.exp(rng.uniform(np.log(1.5), np.log(6.0), m)))
    green = ~red & (rng.random(m) < 0.15)
    p["d_tquench"] = np.where(red, rng.uniform(3.0, 8.0, m), np.where(green, rng.uniform(0.2, 2.0, m), 0.0))
    # stochastic star formation: 0.45 dex rms on 100 Myr steps (the disk's recent history is not smooth)
    p["d_noise"] = rng.normal(0.0, 0.45, (m, 131))
    # bursts: 50 % of blue disks had a burst in the last 2 Gyr (1-20 % of their mass); 1.5 % of red galaxies
    # had a disk burst 0.1-1.5 Gyr ago that ended in the quench (post-starburst, E+A when recent and strong)
    burst = ~red & (rng.random(m) < 0.5)
    psb = red & (rng.random(m) < 0.015)
    tb = np.where(psb, rng.uniform(0.1, 1.5, m), rng.uniform(0.02, 2.0, m))
    p["d_tburst"] = tb
    p["d_fburst"] = np.where(burst, np.exp(rng.uniform(np.log(0.01), np.log(0.2), m)),
                             np.where(psb, rng.uniform(0.05, 0.3, m), 0.0))
    p["d_tquench"] = np.where(psb, np.maximum(tb - 0.1, 0.02), p["d_tquench"])
    p["bt_mass"] = np.where(psb, np.minimum(bt, rng.uniform(0.2, 0.7, m)), bt)
    bt = p["bt_mass"]
    # stellar metallicity of disks: Gallazzi et al. (2005)-like, ~-0.3 at 1e10 Msun, rising with mass
    p["d_met"] = np.clip(np.where(red, p["b_met"] - 0.1 + rng.normal(0, 0.08, m),
                                  -0.25 + 0.3 * (logm - 10.3) + rng.normal(0, 0.15, m)), -0.69, 0.3)
    qpool = cosmos_disk_q()
    p["q_disk"] = np.clip(rng.choice(qpool, m) + rng.normal(0, 0.03, m), 0.12, 1.0)
    p["q_bulge"] = rng.uniform(0.55, 1.0, m)
    incl = np.sqrt(np.clip(1 / p["q_disk"] - 1, 0, None))  # more dust through inclined disks
    p["b_ebv"] = rng.uniform(0.0, 0.06, m)
    p["d_ebv"] = np.clip(np.where(red, rng.uniform(0.0, 0.05, m),
                                  0.13 * 10 ** (0.2 * (logm - 10.0)) * np.exp(rng.normal(0, 0.35, m))
                                  * (1 + 0.3 * incl)), 0.0, 0.6)
    # sizes: Shen et al. (2003) r-band size-mass relations (kpc), early types for bulges, late for disks
    mb = logm + np.log10(np.clip(bt, 0.02, None))
    p["re_bulge_kpc"] = np.clip(10 ** (0.56 * mb - 5.54 + rng.normal(0, 0.12, m)), 0.1, 12.0)
    late = -1.0 + 0.14 * logm + 0.25 * np.log10(1 + 10 ** logm / 3.98e10)
    p["re_disk_kpc"] = np.clip(10 ** (late + np.log10(1.15) + rng.normal(0, 0.16, m)), 0.3, 20.0)
    p["n_bulge"] = np.clip(2.5 + 2.0 * np.clip((bt - 0.2) / 0.7, 0, 1) + rng.normal(0, 0.3, m), 2.5, 4.5)
    # kinematics: Faber-Jackson-like bulge dispersion (0.08 dex scatter at fixed bulge mass); disk dispersion
    # (35 km/s x lognormal) + beam-smeared rotation in the fibre. Only physical bounds (20-450 km/s).
    p["sigma_b"] = np.clip(10 ** (2.2 + 0.3 * (mb - 10.7) + rng.normal(0, 0.08, m)), 30.0, 450.0)
    vrot = 10 ** (2.25 + 0.27 * (logm - 10.5) + rng.normal(0, 0.05, m))
    sini = np.sqrt(np.clip(1 - p["q_disk"] ** 2, 0, 1))
    p["sigma_d"] = np.clip(np.sqrt((35.0 * np.exp(rng.normal(0, 0.25, m))) ** 2 + (0.35 * vrot * sini) ** 2),
                           20.0, 450.0)
    p["sigma_gas"] = np.sqrt(30.0**2 + (0.3 * vrot * sini) ** 2)
    p["pa"] = rng.uniform(0, np.pi, m)
    p["pa_disk"] = p["pa"] + rng.normal(0, 0.15, m)
    return p


def component_seds(p: dict, wave_slice: slice | None = slice(None)) -> dict:
    """Template weights, rest-frame dusty SEDs (L_sun/A) and SFRs of the bulge and disk of each galaxy.

    ``wave_slice`` restricts the SEDs to part of the rest grid; None computes the weights and SFRs only.
    """
    tpl = load_templates()
    m = len(p["z"])
    out = {}
    mtot = 10 ** p["log_mstar"]
    for c, frac in (("b", p["bt_mass"]), ("d", 1 - p["bt_mass"])):
        w1, sfr1, age_mw = sfh_weights(p[f"{c}_tstart"], p[f"{c}_tau"],
                                       p.get(f"{c}_tquench", np.zeros(m)), p[f"{c}_met"], np.ones(m),
                                       p.get(f"{c}_tburst"), p.get(f"{c}_fburst"), p.get(f"{c}_noise"))
        formed = mtot * frac / surviving_fraction(age_mw)  # formed mass giving the target stellar mass
        w, sfr = w1 * formed[:, None], sfr1 * formed  # the SFH is linear in the formed mass
        out[c] = {"w": w, "sfr": sfr}
        if wave_slice is not None:
            sed = (w.astype(np.float32) @ tpl["flux"][:, wave_slice])
            att = 10 ** (-0.4 * p[f"{c}_ebv"][:, None] * calzetti_k(10 ** rest_loglam()[wave_slice])[None, :])
            out[c]["sed"] = (sed * att).astype(np.float32)
    return out


_TABLE_Z = np.linspace(Z_MIN, Z_MAX, 180)
_TABLE_EBV = np.linspace(0.0, 0.6, 13)


@lru_cache(maxsize=1)
def _template_r_table() -> np.ndarray:
    """Observed r-band f_nu of every template (per M_sun formed, before the 1/(4 pi D_L^2 (1+z)) factor) on a
    (z, stellar E(B-V)) grid.

    Used only to pre-screen selection candidates cheaply (bilinear interpolation); the selection itself is
    exact (``select``).
    """
    tpl = load_templates()["flux"].astype(np.float64)
    wr = band_weights(_TABLE_Z, bands=[2])[:, 0].astype(np.float64)  # the distance factor is applied exactly
    k = calzetti_k(10 ** rest_loglam())
    return np.stack([(tpl * 10 ** (-0.4 * e * k))[None] @ wr[:, :, None] for e in _TABLE_EBV], 1)[..., 0]


def _approx_r(p: dict, comp: dict) -> np.ndarray:
    """Approximate total r magnitude from template weights by bilinear interpolation of the r table."""
    t = _template_r_table()  # (nz, ne, n_tpl)
    fz = np.clip(np.interp(p["z"], _TABLE_Z, np.arange(len(_TABLE_Z))), 0, len(_TABLE_Z) - 1.000001)
    iz = fz.astype(int)
    wz = (fz - iz)[:, None]
    total = 0.0
    for c in ("b", "d"):
        fe = np.clip(np.interp(p[f"{c}_ebv"], _TABLE_EBV, np.arange(len(_TABLE_EBV))), 0,
                     len(_TABLE_EBV) - 1.000001)
        ie = fe.astype(int)
        we = (fe - ie)[:, None]
        row = ((1 - wz) * (1 - we) * t[iz, ie] + wz * (1 - we) * t[iz + 1, ie] + (1 - wz) * we * t[iz, ie + 1]
               + wz * we * t[iz + 1, ie + 1])
        total = total + (row * comp[c]["w"]).sum(1)
    return nmgy_to_mag(fnu_to_nmgy(total * _flux_scale(p["z"]) * 1e-17))


def _r_slice() -> slice:
    """Rest-grid pixels that the r filter (5379-7041 A) can see for Z_MIN < z < Z_MAX."""
    ll = rest_loglam()
    return slice(int(np.searchsorted(ll, np.log10(5370 / (1 + Z_MAX)))),
                 int(np.searchsorted(ll, np.log10(7050 / (1 + Z_MIN)))) + 1)


def select(p: dict, seds: dict, wave_slice: slice = slice(None)) -> np.ndarray:
    """Main-sample selection: R_BRIGHT < r < R_LIMIT on the total (continuum) r magnitude and the surface-
    brightness limit mu50 <= MU50_LIMIT (mean within the circularised light-weighted half-light radius)."""
    wr = band_weights(p["z"], bands=[2])[:, 0, wave_slice]
    scale = _flux_scale(p["z"]) * 1e-17
    fb = (seds["b"]["sed"] * wr).sum(1) * scale
    fd = (seds["d"]["sed"] * wr).sum(1) * scale
    r = nmgy_to_mag(fnu_to_nmgy(fb + fd))
    kpa = _cosmo("kpc_per_arcsec", p["z"])
    r50 = (fb * p["re_bulge_kpc"] * np.sqrt(p["q_bulge"]) + fd * p["re_disk_kpc"] * np.sqrt(p["q_disk"])) \
        / np.maximum(fb + fd, 1e-300) / kpa
    mu50 = r + 2.5 * np.log10(2 * np.pi * r50**2)
    return (r < R_LIMIT) & (r > R_BRIGHT) & (mu50 <= MU50_LIMIT)


def _flux_scale(z):
    """L_sun/A (rest) -> observed 1e-17 erg/s/cm2/A: L / (4 pi D_L^2 (1+z))."""
    dl = _cosmo("dl_mpc", z) * MPC_CM
    return L_SUN / (4 * np.pi * dl**2 * (1 + z)) * 1e17


def _subset(d, idx):
    if isinstance(d, dict):
        return {k: _subset(v, idx) for k, v in d.items()}
    return d[idx]


def draw_population(rng: np.random.Generator, n: int) -> tuple[dict, dict]:
    """Draw ``n`` galaxies passing the selection (rejection in rounds of candidates; deterministic).

    Candidates are screened with the tabulated template r magnitudes (0.1 mag margin), then the survivors go
    through the exact selection on their SEDs.
    """
    got_p, have = [], 0
    rs = _r_slice()
    while have < n:
        p = draw_candidates(rng, 8 * n)
        pre = np.flatnonzero(_approx_r(p, component_seds(p, None)) < R_LIMIT + 0.1)
        p = _subset(p, pre)
        keep = np.flatnonzero(select(p, component_seds(p, rs), rs))
        got_p.append(_subset(p, keep))
        have += len(keep)
    pop = {k: np.concatenate([x[k] for x in got_p])[:n] for k in got_p[0]}
    return pop, component_seds(pop)


# ----------------------------------------------------------------------------------------- emission lines
def line_luminosities(rng: np.random.Generator, p: dict, seds: dict) -> dict:
    """Intrinsic (dust-free) line luminosities (erg/s) of three ionising sources per galaxy.

    - ``sf``: HII regions of the disk, L(Halpha) from the disk SFR (Kennicutt), ratios on the star-forming
      BPT sequence set by the gas metallicity (Tremonti 2004 mass-metallicity relation shifted to the
      Pettini & Pagel 2004 N2 scale);
    - ``ret``: diffuse LINER-like emission of old stars (EW(Halpha) ~ 0.3-1.5 A on the bulge continuum);
    - ``agn``: a type-2 nucleus (Seyfert or LINER ratios), preferentially in massive, bulge-dominated,
      old hosts.
    Returns a dict source -> {"L": (B, n_lines) erg/s, "sigma": (B,) km/s, "ebv_gas": (B,)}.
    """
    m = len(p["z"])
    names = list(LINES)
    logm = p["log_mstar"]

    def ratios(x, y, oii_hb, oi_ha, sii_ha, l_ha):
        hb = l_ha / 2.86
        d = {"ha": l_ha, "hb": hb, "hg": 0.466 * hb, "hd": 0.256 * hb, "nii_6584": l_ha * 10**x,
             "oiii_5007": hb * 10**y, "oi_6300": l_ha * oi_ha}
        d["nii_6548"] = d["nii_6584"] / 3.0
        d["oiii_4959"] = d["oiii_5007"] / 2.98
        d["oii_3726"], d["oii_3729"] = 0.42 * hb * oii_hb, 0.58 * hb * oii_hb
        d["sii_6717"], d["sii_6731"] = sii_ha * l_ha * 1.35 / 2.35, sii_ha * l_ha / 2.35
        return np.stack([d[k] for k in names], axis=1)

    out = {}
    # star formation in the disk: position ALONG the star-forming sequence set by the gas metallicity (scatter
    # moves galaxies along it), 0.1 dex scatter across it
    t04 = -1.492 + 1.847 * logm - 0.08026 * logm**2
    # T04 -> PP04 N2 scale: -0.4 dex at high mass (Kewley & Ellison 2008); N2 saturates near -0.4
    oh = t04 - 0.4 + rng.normal(0, 0.08, m)
    x_raw = (oh - 8.90) / 0.57 + rng.normal(0, 0.04, m)  # Pettini & Pagel N2; saturates at high metallicity
    x = np.clip(-0.38 - 0.08 * np.log1p(np.exp((-0.38 - x_raw) / 0.08)), -1.3, None)
    y = 0.61 / (x - 0.05) + 1.30 - 0.2 + rng.normal(0, 0.1, m)
    oii = 10 ** (0.5 - 1.2 * (x + 0.8) ** 2 + rng.normal(0, 0.08, m))
    l_ha = seds["d"]["sfr"] / KENNICUTT_HA
    out["sf"] = {"L": ratios(x, y, oii, 10 ** rng.normal(-1.4, 0.12, m), 10 ** rng.normal(-0.5, 0.08, m),
                             l_ha),
                 "sigma": p["sigma_gas"], "ebv_gas": p["d_ebv"] / 0.44}
    # evolved-star (retired) LINER-like emission on the bulge continuum at Halpha
    ia = int(np.argmin(np.abs(10 ** rest_loglam() - 6564.6)))
    cont_b = seds["b"]["sed"][:, ia - 30:ia + 30].astype(np.float64).mean(1) * L_SUN * \
        10 ** (0.4 * p["b_ebv"] * 3.33)  # undo the stellar attenuation at Halpha: intrinsic continuum
    ew = 10 ** rng.normal(np.log10(0.4), 0.3, m)  # A; median 0.4, most below the S/N needed to classify
    out["ret"] = {"L": ratios(rng.normal(0.1, 0.1, m), rng.normal(0.0, 0.15, m),
                              10 ** rng.normal(0.6, 0.1, m), 10 ** rng.normal(-0.8, 0.1, m),
                              10 ** rng.normal(-0.15, 0.08, m), ew * cont_b),
                  "sigma": 0.8 * p["sigma_b"], "ebv_gas": p["b_ebv"] / 0.44}
    # AGN: every galaxy has a nucleus whose line luminosity scales with the black-hole (bulge) mass times a
    # broad, continuous Eddington-ratio-like distribution (Kauffmann & Heckman 2009): its share of the lines
    # (agn_frac) is continuous, so galaxies mixing HII-region and AGN light form a sequence from the star-
    # forming branch through the composites towards the Seyfert/LINER region
    mbulge = logm + np.log10(np.clip(p["bt_mass"], 0.01, None))
    active = rng.random(m) < 1 / (1 + np.exp(-(mbulge - 10.0) / 0.3))  # no strong AGN in bulgeless dwarfs
    # gas-rich (star-forming) hosts feed their black holes ~100x faster on average (Kauffmann & Heckman 2009:
    # a lognormal Eddington-ratio distribution in young bulges, a low power-law tail in old ones)
    gas = np.clip((np.log10(np.clip(seds["d"]["sfr"], 1e-6, None)) - logm + 11.0) / 1.0, 0.0, 1.0)
    l_agn = 10 ** (39.1 + 1.0 * (mbulge - 10.5) + 2.0 * gas + rng.normal(0, 0.7, m) - 1.5 * ~active)
    # LINER (high [NII]/Halpha, low [OIII]/Hbeta) to Seyfert: one continuous branch, position rising with the
    # Eddington-ratio-like excess; LINERs are the majority of SDSS AGN (Kewley et al. 2006)
    edd = (np.log10(l_agn) - 39.1 - (mbulge - 10.5) - 2.0 * gas) / 0.7
    ya = np.clip(0.15 + 0.25 * edd + rng.normal(0, 0.3, m), -0.4, 1.1)
    xa = 0.15 - 0.15 * (ya - 0.3) + rng.normal(0, 0.12, m)
    out["agn"] = {"L": ratios(xa, ya, 10 ** rng.normal(0.6, 0.12, m), 10 ** rng.normal(-0.8, 0.15, m),
                              10 ** rng.normal(-0.2, 0.1, m), l_agn),
                  "sigma": np.clip(0.8 * p["sigma_b"] + rng.normal(0, 30, m), 80.0, 400.0),
                  "ebv_gas": p["b_ebv"] / 0.44 + rng.uniform(0, 0.2, m)}
    return out


# ----------------------------------------------------------------------------------------- one block
def simulate_block(seed: int, block: int, n: int | None = None) -> dict:
    """Simulate block ``block`` of the survey with ``seed``: BLOCK galaxies (the first ``n`` returned).

    Returns a dict with ``images`` (n, 5, 64, 64) nanomaggies, ``flux``, ``ivar``, ``model`` (n, N_LOGLAM)
    and ``catalog`` (dict of (n,) arrays).
    """
    import torch
    torch.set_num_threads(1)
    rng = np.random.default_rng([int(seed), int(block)])
    B = BLOCK
    p, seds = draw_population(rng, B)
    z = p["z"]
    tpl = load_templates()
    lines = line_luminosities(rng, p, seds)

    # ---- total photometry of each component (nanomaggies), lines included where they are emitted
    W = band_weights(z)
    scale = _flux_scale(z)
    comp_flux = np.stack([fnu_to_nmgy((seds[c]["sed"][:, None, :] * W).sum(-1) * scale[:, None] * 1e-17)
                          for c in ("b", "d")], axis=1)  # (B, 2, 5)
    lam_rest = np.array(list(LINES.values()))
    kline = calzetti_k(lam_rest)
    dl2 = 4 * np.pi * (_cosmo("dl_mpc", z) * MPC_CM) ** 2
    lbf = line_band_factor(z, lam_rest)  # (B, n_lines, 5)
    line_tot = {}
    for src in ("sf", "ret", "agn"):
        att = 10 ** (-0.4 * lines[src]["ebv_gas"][:, None] * kline[None, :])
        line_tot[src] = lines[src]["L"] * att / dl2[:, None]  # erg/s/cm2, total (not fibre)
        ci = 1 if src == "sf" else 0
        comp_flux[:, ci] += fnu_to_nmgy((line_tot[src][:, :, None] * lbf).sum(1))

    # ---- geometry (pixels) and PSFs
    kpa = _cosmo("kpc_per_arcsec", z)
    re_b = p["re_bulge_kpc"] / kpa / PIXEL_SCALE_ARCSEC
    re_d = p["re_disk_kpc"] / kpa / PIXEL_SCALE_ARCSEC
    xc = render.CENTRE + rng.uniform(-0.6, 0.6, B)
    yc = render.CENTRE + rng.uniform(-0.6, 0.6, B)
    fw_r = np.clip(1.35 * np.exp(rng.normal(0, 0.13, B)), 1.0, 2.0)
    psf_fwhm = np.clip(fw_r[:, None] * (noise.PSF_MEDIAN / noise.PSF_MEDIAN[2])[None, :]
                       * np.exp(rng.normal(0, 0.03, (B, 5))), 1.0, 2.2)
    psf = render.moffat_psf(psf_fwhm / PIXEL_SCALE_ARCSEC)  # (B, 5, 64, 64)

    # ---- render: unit-flux bulge and disk (with spiral arms and clumps where stars form) -> PSF
    pre = np.zeros((B, 2, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    pre[:, 0] = render.render_sersic(xc, yc, re_b, p["n_bulge"], p["q_bulge"], p["pa"])
    pre[:, 1] = render.render_sersic(xc, yc, re_d, np.ones(B), p["q_disk"], p["pa_disk"])
    ssfr_d = (np.log10(np.clip(seds["d"]["sfr"], 1e-6, None)) - p["log_mstar"]
              - np.log10(1 - p["bt_mass"] + 1e-3))
    strength = np.clip((ssfr_d + 11.5) / 1.5, 0.0, 1.0)  # smooth quenched disks, structured star-forming ones
    pre[:, 1] = scene.disk_structure(rng, pre[:, 1], xc, yc, re_d, p["q_disk"], p["pa_disk"], strength)
    conv = render.convolve(pre, psf)
    img_true = (conv * comp_flux[:, :, :, None, None].astype(np.float32)).sum(1)
    # ---- neighbours (source counts + companions) and occasional bright stars
    nb_pre, nb_stats = scene.neighbours(rng, xc, yc, nmgy_to_mag(comp_flux.sum(1)), re_d)
    img_true += render.convolve_bands(nb_pre, psf)
    star_img, has_star = scene.bright_stars(rng, psf_fwhm / PIXEL_SCALE_ARCSEC, noise.E_PER_NMGY)
    img_true += star_img
    nb_stats["has_bright_star"] = has_star
    has_nb = (nb_stats["n_neighbours"] > 0) | has_star
    ap = render.aperture_weights(xc, yc, render.FIBRE_RADIUS_PX)
    fib = (conv[:, :2] * ap[:, None, None]).sum((-2, -1))  # (B, 2, 5) fibre fraction of each component
    ap0 = render.aperture_weights(np.full(1, float(render.CENTRE)), np.full(1, float(render.CENTRE)),
                                  render.FIBRE_RADIUS_PX)
    fib_psf = (psf * ap0[:, None]).sum((-2, -1))  # (B, 5) for the point-like AGN

    # ---- image noise: sky from its brightness (dark sky, ~0.1 mag brighter with moon/airmass) + object
    dark = np.array([noise.SKY_SB[k] for k in sorted(noise.SKY_SB)])
    sky_mu = dark[None, :] - np.abs(rng.normal(0, 0.1, (B, 1)))
    sky_sig = noise.image_sky_sigma(sky_mu)
    var = sky_sig[:, :, None, None] ** 2 + np.clip(img_true, 0, None) / noise.E_PER_NMGY[None, :, None, None]
    images = (img_true + rng.standard_normal(img_true.shape) * np.sqrt(var)).astype(np.float32)

    # ---- fibre spectrum (noiseless), observed frame
    wave = 10 ** sdss_loglam_grid()
    weff = filters()["weff"]

    def fibre_curve(fr):  # (B, 5) band fibre fractions -> (B, L) by linear interpolation in wavelength
        return np.stack([np.interp(wave, weff, f) for f in fr])

    extra = extra_broadening_kms(z)
    kms_per_pix = C_KMS * np.log(10) * DLOGLAM
    shift = (LOGLAM0 - REST_LOGLAM0 - np.log10(1 + z)) / DLOGLAM  # rest index of observed pixel 0
    i0 = np.floor(shift).astype(int)
    frac = (shift - i0)[:, None]
    idx = i0[:, None] + np.arange(N_LOGLAM)[None, :]
    rows = np.arange(B)[:, None]
    model = np.zeros((B, N_LOGLAM))
    comp_obs = {}
    for ci, c in enumerate(("b", "d")):
        sig = np.sqrt(p[f"sigma_{c}"] ** 2 + extra**2) / kms_per_pix
        sb = gaussian_broaden(seds[c]["sed"], sig)
        obs = ((1 - frac) * sb[rows, idx] + frac * sb[rows, idx + 1]) * _flux_scale(z)[:, None]
        comp_obs[c] = obs * fibre_curve(fib[:, ci])
        model += comp_obs[c]
    # emission lines: Gaussians of width sqrt(sigma_gas^2 + sigma_inst^2), pixel-integrated
    fibre_line = np.zeros((B, len(LINES)))
    line_sigma_aa = np.zeros((B, len(LINES)))
    pixw = wave * np.log(10) * DLOGLAM
    edges = 10 ** (sdss_loglam_grid() - DLOGLAM / 2)
    edges = np.append(edges, 10 ** (sdss_loglam_grid()[-1] + DLOGLAM / 2))
    from scipy.special import erf
    for src, ff in (("sf", fib[:, 1]), ("ret", fib[:, 0]), ("agn", fib_psf)):
        fcurve = fibre_curve(ff)
        lo = (lam_rest[None, :] * (1 + z[:, None]))  # (B, n_lines) observed
        fl = np.stack([np.interp(lo[i], wave, fcurve[i]) for i in range(B)]) * line_tot[src] * 1e17
        fibre_line += fl
        if src == "agn":
            lines["fibre_agn"] = fl
        sg = np.sqrt(lines[src]["sigma"][:, None] ** 2 + sigma_inst_kms(lo) ** 2) / C_KMS * lo
        line_sigma_aa = np.maximum(line_sigma_aa, sg * (fl > 0))
        for k in range(len(LINES)):
            cen, s_ = lo[:, k], sg[:, k]
            j = np.searchsorted(wave, cen)
            win = np.clip(j[:, None] + np.arange(-40, 41)[None, :], 0, N_LOGLAM - 1)
            a = (edges[win] - cen[:, None]) / (np.sqrt(2) * s_[:, None])
            b_ = (edges[win + 1] - cen[:, None]) / (np.sqrt(2) * s_[:, None])
            prof = 0.5 * (erf(b_) - erf(a)) / pixw[win]  # per A, integrates to 1
            inside = (cen > wave[0]) & (cen < wave[-1])
            np.add.at(model, (np.repeat(np.arange(B), win.shape[1]), win.ravel()),
                      (prof * (fl[:, k] * inside)[:, None]).ravel())

    # ---- spectrum noise
    exposure = np.exp(rng.normal(0.0, 0.3, B))
    sky = noise.sky_spectrum((LOGLAM0, DLOGLAM, N_LOGLAM))
    var_s = noise.spectrum_variance(model, wave, exposure, sky)
    flux = model + rng.standard_normal(model.shape) * np.sqrt(var_s)
    ivar = 1.0 / var_s

    # ---- truth catalogue
    cat = _catalog(rng, p, seds, lines, comp_flux, fib, comp_obs, fibre_line, line_sigma_aa, var_s, wave,
                   flux, ivar, psf_fwhm, has_nb, tpl, model)
    cat["n_neighbours"] = nb_stats["n_neighbours"]
    cat["nb_min_sep_arcsec"] = nb_stats["nb_min_sep_arcsec"]
    cat["has_bright_star"] = has_star.astype(np.int8)
    cat.update(_truth_indices(wave, model, z))
    n = B if n is None else n
    out = {"images": images[:n], "flux": flux[:n].astype(np.float32), "ivar": ivar[:n].astype(np.float32),
           "model": model[:n].astype(np.float32), "catalog": {k: v[:n] for k, v in cat.items()}}
    return out


def _truth_indices(wave, model, z) -> dict[str, np.ndarray]:
    """Dn4000 and the read-out's Lick indices (``lick_<name>``) of the noiseless fibre spectra, at their own
    resolution, through the project's toolbox (analysis.indices)."""
    from analysis.indices import READOUT_LICK, dn4000, lick_indices
    out = {"dn4000": np.asarray(dn4000(wave, model, z)[0], dtype=np.float64)}
    lick = lick_indices(wave, model, z, names=list(READOUT_LICK))
    out.update({f"lick_{k}": np.asarray(v[0], dtype=np.float64) for k, v in lick.items()})
    return out


def bpt_class(x, y, snr_ok) -> np.ndarray:
    """0 star-forming (below Kauffmann 2003), 1 composite, 2 AGN (above Kewley 2001), -1 unclassifiable."""
    a, b, c = DEMARC["kauffmann"]
    ka = np.where(x < b, a / (x - b) + c, -np.inf)
    a, b, c = DEMARC["kewley"]
    ke = np.where(x < b, a / (x - b) + c, -np.inf)
    cls = np.where(y > ke, 2, np.where(y > ka, 1, 0))
    return np.where(snr_ok, cls, -1).astype(np.int8)


def _catalog(rng, p, seds, lines, comp_flux, fib, comp_obs, fibre_line, line_sigma_aa, var_s, wave, flux,
             ivar, psf_fwhm, has_nb, tpl, model) -> dict:
    B = len(p["z"])
    z = p["z"]
    c = {}
    c["ra"] = rng.uniform(120.0, 250.0, B)
    c["dec"] = np.degrees(np.arcsin(rng.uniform(np.sin(np.radians(-3.0)), np.sin(np.radians(62.0)), B)))
    c["z"] = z
    tot = comp_flux.sum(1)
    for k, b in enumerate(BANDS):
        c[f"mag_{b}"] = nmgy_to_mag(tot[:, k])
    c["fibre_frac_r"] = np.clip((fib[:, :, 2] * comp_flux[:, :, 2]).sum(1) / tot[:, 2], 0, 1)
    c["fibermag_r"] = nmgy_to_mag((fib[:, :, 2] * comp_flux[:, :, 2]).sum(1))
    c["bulge_frac"] = comp_flux[:, 0, 2] / tot[:, 2]
    # light-weighted properties in the fibre at 5500 A rest
    i55 = int(np.argmin(np.abs(10 ** rest_loglam() - 5500.0)))
    l55 = tpl["flux"][:, i55 - 25:i55 + 25].mean(1)  # per template, L_sun/A per M_sun
    ages = np.repeat(tpl["ages"], tpl["n_met"])
    mets = np.tile(tpl["metals"], tpl["n_age"])
    j55 = np.argmin(np.abs(wave[None, :] - 5500.0 * (1 + z[:, None])), axis=1)
    num_a = num_m = num_e = den = 0.0
    for cc in ("b", "d"):
        lw = seds[cc]["w"] * l55[None, :]
        light = comp_obs[cc][np.arange(B), j55]  # fibre light of the component at 5500 A rest
        num_a = num_a + light * (lw * ages).sum(1) / lw.sum(1)
        num_m = num_m + light * (lw * mets).sum(1) / lw.sum(1)
        num_e = num_e + light * p[f"{cc}_ebv"]
        den = den + light
        if cc == "b":
            sv2 = light * p["sigma_b"] ** 2
        else:
            sv2 = sv2 + light * p["sigma_d"] ** 2
    c["age_lw"] = num_a / den
    c["metallicity_lw"] = num_m / den
    c["ebv"] = num_e / den
    c["sigma_v"] = np.sqrt(sv2 / den)
    c["log_mstar"] = p["log_mstar"]
    c["log_sfr"] = np.log10(np.clip(seds["b"]["sfr"] + seds["d"]["sfr"], 1e-4, None))
    # Galaxy-Zoo-like vote: elliptical probability from the r-band bulge fraction with vote noise
    p_ell = 1 / (1 + np.exp(-((c["bulge_frac"] - 0.55) / 0.1 + rng.normal(0, 1.0, B))))
    c["morphology"] = np.where(p_ell > 0.8, 0, np.where(p_ell < 0.2, 1, 2)).astype(np.int8)
    c["re_bulge_kpc"] = p["re_bulge_kpc"]
    c["re_disk_kpc"] = p["re_disk_kpc"]
    c["n_bulge"] = p["n_bulge"]
    c["q_disk"] = p["q_disk"]
    for k, b in enumerate(BANDS):
        c[f"psf_fwhm_{b}"] = psf_fwhm[:, k]
    c["has_neighbour"] = has_nb.astype(np.int8)
    good = ivar > 0
    c["snr_median"] = np.array([np.median((flux[i] * np.sqrt(ivar[i]))[good[i]]) for i in range(B)])
    # emission lines: fibre fluxes and optimal-extraction S/N (x1.2 for continuum-subtraction errors)
    names = list(LINES)
    lo = np.array(list(LINES.values()))[None, :] * (1 + z[:, None])
    sn = np.zeros_like(fibre_line)
    rows_ = np.arange(B)
    for k in range(len(names)):
        g = np.exp(-0.5 * ((wave[None, :] - lo[:, k:k + 1]) / line_sigma_aa[:, k:k + 1].clip(0.5)) ** 2)
        g /= g.sum(1, keepdims=True) * (wave * np.log(10) * DLOGLAM)[None, :]
        err = 1.0 / np.sqrt((g**2 / var_s).sum(1))
        # continuum (stellar absorption) subtraction: an error floor of 0.12 A in rest-frame equivalent width
        j = np.clip(np.searchsorted(wave, lo[:, k]), 40, len(wave) - 41)
        cont = np.median(np.stack([model[rows_, j + o] for o in (-40, -30, 30, 40)]), axis=0)
        err = np.sqrt(err**2 + (0.12 * (1 + z) * np.clip(cont, 0, None)) ** 2)
        sn[:, k] = fibre_line[:, k] / err
    out_names = {"oii_3727": ("oii_3726", "oii_3729"), "hb": ("hb",), "oiii_4959": ("oiii_4959",),
                 "oiii_5007": ("oiii_5007",), "oi_6300": ("oi_6300",), "ha": ("ha",),
                 "nii_6548": ("nii_6548",),
                 "nii_6584": ("nii_6584",), "sii_6717": ("sii_6717",), "sii_6731": ("sii_6731",)}
    for out_name, parts in out_names.items():
        ks = [names.index(q) for q in parts]
        c[f"flux_{out_name}"] = fibre_line[:, ks].sum(1)
        c[f"snr_{out_name}"] = np.sqrt((sn[:, ks] ** 2).sum(1)) if len(ks) > 1 else sn[:, ks[0]]
    x = np.log10(np.clip(c["flux_nii_6584"], 1e-30, None) / np.clip(c["flux_ha"], 1e-30, None))
    y = np.log10(np.clip(c["flux_oiii_5007"], 1e-30, None) / np.clip(c["flux_hb"], 1e-30, None))
    ok = np.all([c[f"snr_{q}"] >= 3 for q in ("hb", "oiii_5007", "ha", "nii_6584")], axis=0)
    c["bpt_class"] = bpt_class(x, y, ok)
    iha = names.index("ha")
    c["agn_frac"] = lines["fibre_agn"][:, iha] / np.clip(fibre_line[:, iha], 1e-30, None)
    c["is_agn"] = (c["agn_frac"] > 0.5).astype(np.int8)
    return c
