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
from utils.mock import noise, render
from utils.mock.sed import (
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
from utils.mock.sed import (
    DLOGLAM as REST_DLOGLAM,
)

BLOCK = 64  # galaxies per deterministic block
Z_MIN, Z_MAX = 0.05, 0.15
R_LIMIT, R_BRIGHT = 17.77, 14.0
BANDS = "ugriz"
COSMOS_FITS = REPO / "templates" / "cosmos" / "real_galaxy_catalog_23.5_example_fits.fits"
KENNICUTT_HA = 5.37e-42  # SFR [M_sun/yr] per L(Halpha) [erg/s] (Kennicutt & Evans 2012, Kroupa/Chabrier IMF)
DEMARC = {"kauffmann": (0.61, 0.05, 1.30), "kewley": (0.61, 0.47, 1.19)}
assert REST_DLOGLAM == DLOGLAM


# ----------------------------------------------------------------------------------------- set-up caches
@lru_cache(maxsize=1)
def cosmology_tables() -> dict:
    """Planck18 look-up tables on a fine redshift grid (interpolated per galaxy)."""
    from astropy.cosmology import Planck18 as cosmo
    z = np.linspace(0.04, 0.16, 1201)
    return {
        "z": z,
        "dl_mpc": cosmo.luminosity_distance(z).value,
        "kpc_per_arcsec": cosmo.kpc_proper_per_arcmin(z).value / 60.0,
        "dvdz": cosmo.differential_comoving_volume(z).value,
    }


def _cosmo(name: str, z: np.ndarray) -> np.ndarray:
    t = cosmology_tables()
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
    z = np.linspace(Z_MIN, Z_MAX, 201)
    zc = 0.5 * (z[1:] + z[:-1])
    lm = np.linspace(8.8, 12.0, 321)
    lmc = 0.5 * (lm[1:] + lm[:-1])
    x = 10 ** (lmc - 10.66)
    phi = np.exp(-x) * (3.96e-3 * x ** (-0.35) + 0.79e-3 * x ** (-1.47)) * x  # per dex
    dm = 5 * np.log10(_cosmo("dl_mpc", zc) * 1e5)
    floor = 0.4 * (4.65 - (R_LIMIT - dm - 0.1)) - 0.75  # log L_r of the limit minus the lowest log(M/L_r)
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
    # bulge: old, metal-rich, little dust; disk: younger, star-forming (quenched for red galaxies)
    p["b_tstart"] = rng.uniform(7.0, 12.0, m)
    p["b_tau"] = rng.uniform(0.3, 1.5, m)
    p["b_met"] = np.clip(0.05 + 0.2 * (logm - 10.8) + rng.normal(0, 0.08, m), -0.65, 0.38)
    # blue disks: declining delayed-tau histories; ~20 % of them are fading (green valley, recent quench)
    p["d_tstart"] = np.where(red, rng.uniform(7.0, 12.0, m), rng.uniform(6.0, 12.0, m))
    p["d_tau"] = np.where(red, rng.uniform(1.0, 4.0, m), np.exp(rng.uniform(np.log(1.5), np.log(10.0), m)))
    green = ~red & (rng.random(m) < 0.2)
    p["d_tquench"] = np.where(red, rng.uniform(1.0, 6.0, m), np.where(green, rng.uniform(0.2, 2.0, m), 0.0))
    p["d_met"] = np.clip(np.where(red, p["b_met"] - 0.1, -0.25 + 0.25 * (logm - 10.3))
                         + rng.normal(0, 0.1, m), -0.69, 0.3)
    qpool = cosmos_disk_q()
    p["q_disk"] = np.clip(rng.choice(qpool, m) + rng.normal(0, 0.03, m), 0.12, 1.0)
    p["q_bulge"] = rng.uniform(0.55, 1.0, m)
    incl = np.sqrt(np.clip(1 / p["q_disk"] - 1, 0, None))  # more dust through inclined disks
    p["b_ebv"] = rng.uniform(0.0, 0.06, m)
    p["d_ebv"] = np.clip(np.where(red, rng.uniform(0.0, 0.1, m),
                                  0.13 * 10 ** (0.2 * (logm - 10.0)) * np.exp(rng.normal(0, 0.35, m))
                                  * (1 + 0.3 * incl)), 0.0, 0.6)
    # sizes: Shen et al. (2003) r-band size-mass relations (kpc), early types for bulges, late for disks
    mb = logm + np.log10(np.clip(bt, 0.02, None))
    p["re_bulge_kpc"] = np.clip(10 ** (0.56 * mb - 5.54 + rng.normal(0, 0.12, m)), 0.25, 12.0)
    late = -1.0 + 0.14 * logm + 0.25 * np.log10(1 + 10 ** logm / 3.98e10)
    p["re_disk_kpc"] = np.clip(10 ** (late + np.log10(1.15) + rng.normal(0, 0.16, m)), 0.8, 20.0)
    p["n_bulge"] = np.clip(2.5 + 2.0 * np.clip((bt - 0.2) / 0.7, 0, 1) + rng.normal(0, 0.3, m), 2.5, 4.5)
    # kinematics: Faber-Jackson-like bulge dispersion; disk dispersion + beam-smeared rotation in the fibre
    p["sigma_b"] = np.clip(10 ** (2.2 + 0.28 * (mb - 10.7) + rng.normal(0, 0.06, m)), 60.0, 350.0)
    vrot = 10 ** (2.25 + 0.27 * (logm - 10.5) + rng.normal(0, 0.05, m))
    sini = np.sqrt(np.clip(1 - p["q_disk"] ** 2, 0, 1))
    p["sigma_d"] = np.clip(np.sqrt(35.0**2 + (0.35 * vrot * sini) ** 2), 50.0, 200.0)
    p["sigma_gas"] = np.sqrt(30.0**2 + (0.3 * vrot * sini) ** 2)
    p["pa"] = rng.uniform(0, np.pi, m)
    p["pa_disk"] = p["pa"] + rng.normal(0, 0.15, m)
    return p


def component_seds(p: dict, wave_slice: slice = slice(None)) -> dict:
    """Template weights, rest-frame dusty SEDs (L_sun/A) and SFRs of the bulge and disk of each galaxy.

    ``wave_slice`` restricts the SEDs to part of the rest grid (the selection needs only the r band).
    """
    tpl = load_templates()
    m = len(p["z"])
    out = {}
    mtot = 10 ** p["log_mstar"]
    for c, frac in (("b", p["bt_mass"]), ("d", 1 - p["bt_mass"])):
        w1, sfr1, age_mw = sfh_weights(p[f"{c}_tstart"], p[f"{c}_tau"],
                                       p.get(f"{c}_tquench", np.zeros(m)), p[f"{c}_met"], np.ones(m))
        formed = mtot * frac / surviving_fraction(age_mw)  # formed mass giving the target stellar mass
        w, sfr = w1 * formed[:, None], sfr1 * formed  # the SFH is linear in the formed mass
        sed = (w.astype(np.float32) @ tpl["flux"][:, wave_slice])
        att = 10 ** (-0.4 * p[f"{c}_ebv"][:, None] * calzetti_k(10 ** rest_loglam()[wave_slice])[None, :])
        out[c] = {"w": w, "sfr": sfr, "sed": (sed * att).astype(np.float32)}
    return out


def _r_slice() -> slice:
    """Rest-grid pixels that the r filter (5379-7041 A) can see for Z_MIN < z < Z_MAX."""
    ll = rest_loglam()
    return slice(int(np.searchsorted(ll, np.log10(5370 / (1 + Z_MAX)))),
                 int(np.searchsorted(ll, np.log10(7050 / (1 + Z_MIN)))) + 1)


def select(p: dict, seds: dict, wave_slice: slice = slice(None)) -> np.ndarray:
    """Main-sample selection: R_BRIGHT < r < R_LIMIT on the total (continuum) r magnitude."""
    wr = band_weights(p["z"], bands=[2])[:, 0, wave_slice]
    scale = _flux_scale(p["z"])
    fr = ((seds["b"]["sed"] + seds["d"]["sed"]) * wr).sum(1) * scale * 1e-17
    r = nmgy_to_mag(fnu_to_nmgy(fr))
    return (r < R_LIMIT) & (r > R_BRIGHT)


def _flux_scale(z):
    """L_sun/A (rest) -> observed 1e-17 erg/s/cm2/A: L / (4 pi D_L^2 (1+z))."""
    dl = _cosmo("dl_mpc", z) * MPC_CM
    return L_SUN / (4 * np.pi * dl**2 * (1 + z)) * 1e17


def _subset(d, idx):
    if isinstance(d, dict):
        return {k: _subset(v, idx) for k, v in d.items()}
    return d[idx]


def draw_population(rng: np.random.Generator, n: int) -> tuple[dict, dict]:
    """Draw ``n`` galaxies passing the magnitude limit (rejection in rounds of candidates; deterministic)."""
    got_p, have = [], 0
    rs = _r_slice()
    while have < n:
        p = draw_candidates(rng, 3 * n)
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
    Returns a dict source -> {"L": (B, n_lines) erg/s, "sigma": (B,) km/s, "ebv_gas": (B,)} + "is_agn".
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
    # star formation in the disk
    t04 = -1.492 + 1.847 * logm - 0.08026 * logm**2
    oh = t04 - 0.25 + rng.normal(0, 0.08, m)
    x_raw = (oh - 8.90) / 0.57  # Pettini & Pagel N2; saturates at high metallicity (smooth minimum)
    x = np.clip(-0.28 - 0.08 * np.log1p(np.exp((-0.28 - x_raw) / 0.08)), -1.3, None)
    y = 0.61 / (x - 0.05) + 1.30 - 0.15 + rng.normal(0, 0.08, m)
    x = x + rng.normal(0, 0.04, m)
    oii = 10 ** (0.5 - 1.2 * (x + 0.8) ** 2 + rng.normal(0, 0.08, m))
    l_ha = seds["d"]["sfr"] / KENNICUTT_HA
    out["sf"] = {"L": ratios(x, y, oii, 10 ** rng.normal(-1.4, 0.12, m), 10 ** rng.normal(-0.5, 0.08, m),
                             l_ha),
                 "sigma": p["sigma_gas"], "ebv_gas": p["d_ebv"] / 0.44}
    # evolved-star (retired) LINER-like emission on the bulge continuum at Halpha
    ia = int(np.argmin(np.abs(10 ** rest_loglam() - 6564.6)))
    cont_b = seds["b"]["sed"][:, ia - 30:ia + 30].astype(np.float64).mean(1) * L_SUN * \
        10 ** (0.4 * p["b_ebv"] * 3.33)  # undo the stellar attenuation at Halpha: intrinsic continuum
    ew = rng.uniform(0.3, 1.5, m)
    out["ret"] = {"L": ratios(rng.normal(0.1, 0.1, m), rng.normal(0.0, 0.15, m),
                              10 ** rng.normal(0.6, 0.1, m), 10 ** rng.normal(-0.8, 0.1, m),
                              10 ** rng.normal(-0.15, 0.08, m), ew * cont_b),
                  "sigma": 0.8 * p["sigma_b"], "ebv_gas": p["b_ebv"] / 0.44}
    # AGN
    p_agn = 0.5 / (1 + np.exp(-(logm - 10.5) / 0.2)) * (0.25 + 0.75 * p["bt_mass"]) * \
        np.where(p["red"], 1.0, 0.7)
    is_agn = rng.random(m) < p_agn
    sey = rng.random(m) < 0.35
    # one continuous AGN branch: Seyferts (high [OIII]/Hbeta) to LINERs (high [NII]/Halpha)
    ya = np.where(sey, rng.uniform(0.4, 1.05, m), rng.uniform(-0.2, 0.4, m))
    xa = 0.3 - 0.25 * (ya + 0.15) / 1.15 + rng.normal(0, 0.08, m)
    l_agn = 10 ** (40.2 + 0.6 * (logm - 11.0) + rng.normal(0, 0.6, m)) * is_agn
    out["agn"] = {"L": ratios(xa, ya, 10 ** rng.normal(0.6, 0.12, m), 10 ** rng.normal(-0.8, 0.15, m),
                              10 ** rng.normal(-0.2, 0.1, m), l_agn),
                  "sigma": rng.uniform(150.0, 350.0, m),
                  "ebv_gas": p["b_ebv"] / 0.44 + rng.uniform(0, 0.2, m)}
    out["is_agn"] = is_agn
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

    # ---- neighbours (one at most): a star or a small galaxy 9-30 px from the centre
    has_nb = rng.random(B) < 0.3
    nb_star = rng.random(B) < 0.55
    rad, ang = rng.uniform(9, 30, B), rng.uniform(0, 2 * np.pi, B)
    nx = np.clip(xc + rad * np.cos(ang), 1, IMAGE_SIZE - 2)
    ny = np.clip(yc + rad * np.sin(ang), 1, IMAGE_SIZE - 2)
    nb_r = np.where(nb_star, rng.uniform(16.5, 22.0, B), rng.uniform(17.5, 22.0, B))
    gr = np.where(nb_star, rng.uniform(0.2, 1.4, B), rng.uniform(0.3, 1.0, B))
    ug = np.where(nb_star, 1.0 + 1.1 * (gr - 0.4), rng.uniform(1.0, 1.9, B)) + rng.normal(0, 0.1, B)
    ri = np.where(nb_star, 0.45 * gr - 0.05, rng.uniform(0.3, 0.5, B))
    iz = np.where(nb_star, 0.5 * ri, rng.uniform(0.2, 0.4, B))
    nb_mag = np.stack([nb_r + gr + ug, nb_r + gr, nb_r, nb_r - ri, nb_r - ri - iz], 1)
    nb_flux = 10 ** ((22.5 - nb_mag) / 2.5) * has_nb[:, None]
    nb_re = rng.uniform(0.4, 1.5, B) / PIXEL_SCALE_ARCSEC
    nb_q, nb_pa = rng.uniform(0.3, 1.0, B), rng.uniform(0, np.pi, B)

    # ---- render: unit-flux bulge, disk, neighbour -> PSF -> (B, 3, 5, 64, 64)
    pre = np.zeros((B, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    pre[:, 0] = render.render_sersic(xc, yc, re_b, p["n_bulge"], p["q_bulge"], p["pa"])
    pre[:, 1] = render.render_sersic(xc, yc, re_d, np.ones(B), p["q_disk"], p["pa_disk"])
    gal_nb = has_nb & ~nb_star
    if gal_nb.any():
        pre[gal_nb, 2] = render.render_sersic(nx[gal_nb], ny[gal_nb], nb_re[gal_nb], np.ones(gal_nb.sum()),
                                              nb_q[gal_nb], nb_pa[gal_nb])
    star_nb = has_nb & nb_star
    if star_nb.any():
        pre[star_nb, 2] = render.render_point(nx[star_nb], ny[star_nb])
    conv = render.convolve(pre, psf)
    fluxes = np.concatenate([comp_flux, nb_flux[:, None, :]], axis=1)  # (B, 3, 5)
    img_true = (conv * fluxes[:, :, :, None, None].astype(np.float32)).sum(1)
    ap = render.aperture_weights(xc, yc, render.FIBRE_RADIUS_PX)
    fib = (conv[:, :2] * ap[:, None, None]).sum((-2, -1))  # (B, 2, 5) fibre fraction of each component
    ap0 = render.aperture_weights(np.full(1, float(render.CENTRE)), np.full(1, float(render.CENTRE)),
                                  render.FIBRE_RADIUS_PX)
    fib_psf = (psf * ap0[:, None]).sum((-2, -1))  # (B, 5) for the point-like AGN

    # ---- image noise: sky (depth) + object Poisson
    sky_sig = noise.image_sky_sigma()[None, :] * rng.uniform(0.85, 1.2, (B, 5))
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
                   flux, ivar, psf_fwhm, has_nb, tpl)
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
             ivar, psf_fwhm, has_nb, tpl) -> dict:
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
    for k in range(len(names)):
        g = np.exp(-0.5 * ((wave[None, :] - lo[:, k:k + 1]) / line_sigma_aa[:, k:k + 1].clip(0.5)) ** 2)
        g /= g.sum(1, keepdims=True) * (wave * np.log(10) * DLOGLAM)[None, :]
        err = 1.0 / np.sqrt((g**2 / var_s).sum(1))
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
    ha_tot = sum(lines[s]["L"][:, names.index("ha")] for s in ("sf", "ret", "agn"))
    c["agn_frac"] = lines["agn"]["L"][:, names.index("ha")] / np.clip(ha_tot, 1e-30, None)
    c["is_agn"] = lines["is_agn"].astype(np.int8)
    return c
