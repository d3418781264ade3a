"""Build a mock SDSS survey file (schema v1) from fixed, independently seeded blocks of galaxies."""
from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from analysis.indices import LICK_BANDS, READOUT_LICK
from datasets.schema import N_LOGLAM, SPECTRUM_CHUNK, assign_split, create_survey, write_column
from surveys.mock.simulate import BANDS, BLOCK, MOCK_VERSION, simulate_block

LINE_DESC = {
    "oii_3727": "[OII]3726+3729 doublet", "hb": "Hbeta 4861", "oiii_4959": "[OIII]4959",
    "oiii_5007": "[OIII]5007", "oi_6300": "[OI]6300", "ha": "Halpha 6563", "nii_6548": "[NII]6548",
    "nii_6584": "[NII]6584", "sii_6717": "[SII]6717", "sii_6731": "[SII]6731",
}

COLUMNS = {
    "id": ("", "galaxy index in the survey (row number; a survey is a prefix of the seed's sequence)"),
    "ra": ("deg", "right ascension (fake, uniform over an SDSS-like area)"),
    "dec": ("deg", "declination (fake, uniform on the sphere within -3..62 deg)"),
    "z": ("", "redshift (cosmological, no peculiar velocity); n(z) shaped by the r <= 17.77 flux limit"),
    "sigma_v": ("km/s", "stellar velocity dispersion: rms of bulge and disk dispersions weighted by their "
                        "fibre light at 5500 A rest"),
    "age_lw": ("Gyr", "light-weighted (5500 A rest, in the fibre) stellar age"),
    "metallicity_lw": ("dex", "light-weighted (5500 A rest, in the fibre) stellar [M/H]"),
    "ebv": ("mag", "stellar E(B-V) (Calzetti 2000, R_V=4.05), fibre-light weighted over bulge and disk"),
    "log_mstar": ("log10 Msun", "total stellar mass (formed mass x surviving fraction)"),
    "log_sfr": ("log10 Msun/yr", "total SFR averaged over the last 100 Myr (floor -4)"),
    "bulge_frac": ("", "bulge fraction of the total r-band light"),
    "morphology": ("", "Galaxy-Zoo-like label: p_ell = logistic((bulge_frac-0.55)/0.1 + N(0,1)); "
                       "0 elliptical (p_ell>0.8), 1 spiral (p_ell<0.2), 2 uncertain"),
    "re_bulge_kpc": ("kpc", "bulge half-light radius (semi-major axis)"),
    "re_disk_kpc": ("kpc", "disk half-light radius (semi-major axis)"),
    "n_bulge": ("", "bulge Sersic index"),
    "q_disk": ("", "disk axis ratio b/a (COSMOS bulge+disk fits resampled)"),
    "fibermag_r": ("AB mag", "r magnitude in the 3-arcsec fibre aperture after the PSF, no noise"),
    "fibre_frac_r": ("", "fraction of the total r light inside the fibre (0..1)"),
    "has_neighbour": ("", "1 if any other source (star, galaxy, bright-star artefact) is in the cutout"),
    "n_neighbours": ("", "number of other detected sources (r <= 22.2) centred in the cutout"),
    "nb_min_sep_arcsec": ("arcsec", "distance of the nearest neighbour from the target centre (nan if none)"),
    "has_bright_star": ("", "1 if a bright star (r 9-13.5) near the cutout adds halo, spikes, bleed trail"),
    "snr_median": ("", "median over pixels of flux*sqrt(ivar) of the observed spectrum"),
    "bpt_class": ("", "0 star-forming (below Kauffmann 2003), 1 composite, 2 AGN (above Kewley 2001), "
                      "-1 unclassifiable (any of Hbeta, [OIII]5007, Halpha, [NII]6584 with S/N < 3); "
                      "from the catalogue fibre line fluxes"),
    "agn_frac": ("", "fraction of the fibre's observed Halpha flux from the AGN (continuous: SF-AGN mixing)"),
    "is_agn": ("", "1 if the AGN gives most of the fibre's Halpha (agn_frac > 0.5; truth)"),
    "dn4000": ("", "Dn4000 (Balogh et al. 1999) of the noiseless fibre spectrum, analysis.indices.dn4000"),
}
for _n in READOUT_LICK:
    COLUMNS[f"lick_{_n}"] = ("mag" if LICK_BANDS[_n][3] == "mag" else "Angstrom",
                             f"Lick index {_n} of the noiseless fibre spectrum at its own resolution, "
                             "analysis.indices.lick_indices")
for _b in BANDS:
    COLUMNS[f"mag_{_b}"] = ("AB mag", f"total {_b} magnitude (bulge+disk+lines, SDSS filter sdss2010-{_b}), "
                                      "no noise")
    COLUMNS[f"psf_fwhm_{_b}"] = ("arcsec", f"PSF FWHM in {_b} (Moffat beta=3)")
for _k, _d in LINE_DESC.items():
    COLUMNS[f"flux_{_k}"] = ("1e-17 erg/s/cm2", f"{_d} fibre flux, observed (after dust), no noise")
    COLUMNS[f"snr_{_k}"] = ("", f"{_d} expected S/N (optimal extraction with the spectrum's "
                                                "variance, x1/1.2)")


def _run(args):
    seed, block, n = args
    return block, simulate_block(seed, block, n)


def build_survey(out: str | os.PathLike, n: int, seed: int = 0, n_val: int = 512, test_fraction: float = 0.1,
                 workers: int = 1, chunk: int = 1024, compression: str | None = None,
                 progress: bool = True) -> dict:
    """Build the mock survey and write it atomically to ``out`` (schema v1 via ``create_survey``).

    Parameters
    ----------
    out : output path (``<out>.partial`` while writing).
    n : number of galaxies (> 0).
    seed : survey seed; block b uses ``default_rng([seed, b])`` so results do not depend on ``workers``
        or ``chunk``.
    n_val, test_fraction : the fixed split (``datasets.schema.assign_split`` with ``seed``).
    workers : processes; chunk : galaxies held in memory between writes (rounded to whole blocks).
    compression : h5py compression for images/spectra (None, "lzf", "gzip").

    Returns
    -------
    dict with n, seconds, bytes, galaxies_per_s, snr_median, red_fraction, bpt fractions.
    """
    if int(n) <= 0:
        raise ValueError(f"make_mock: --n: must be > 0, got {n}")
    n = int(n)
    split = assign_split(n, seed=seed, n_val=n_val, test_fraction=test_fraction)  # raises on a bad split
    if workers < 1:
        raise ValueError(f"make_mock: --workers: must be >= 1, got {workers}")
    if chunk < 1:
        raise ValueError(f"make_mock: --chunk: must be >= 1, got {chunk}")
    n_blocks = -(-n // BLOCK)
    per_write = max(1, chunk // BLOCK)
    t0 = time.time()
    cols: dict[str, list] = {}
    # "builder" keeps the module's historical name (still a working entry point, utils/make_mock.py) so that
    # survey files stay byte-identical across the move to surveys/.
    attrs = {"seed": int(seed), "builder": "utils.make_mock", "mock_block": BLOCK,
             "mock_version": MOCK_VERSION,
             "description": "galspec mock SDSS main-sample survey (BC03 bulge+disk, Calzetti dust, nebular "
                            "lines, 3-arcsec fibre spectra, SDSS-like noise); see docs/MOCK.md"}
    out = Path(out)
    tasks = [(seed, b, min(BLOCK, n - b * BLOCK)) for b in range(n_blocks)]
    with create_survey(out, n, "mock-sdss", attrs=attrs, compression=compression) as f:
        f["spectra"].create_dataset("model", (n, N_LOGLAM), dtype="f4",
                                    chunks=(min(SPECTRUM_CHUNK, n), N_LOGLAM), compression=compression)
        f["spectra/model"].attrs["description"] = "noiseless observed fibre spectrum (the truth)"
        pool = ProcessPoolExecutor(workers) if workers > 1 else None
        try:
            for w0 in range(0, n_blocks, per_write):
                group = tasks[w0:w0 + per_write]
                res = list(pool.map(_run, group)) if pool else [_run(t) for t in group]
                for b, r in res:
                    s = b * BLOCK
                    e = s + len(r["flux"])
                    f["images"][s:e] = r["images"]
                    f["spectra/flux"][s:e] = r["flux"]
                    f["spectra/ivar"][s:e] = r["ivar"]
                    f["spectra/model"][s:e] = r["model"]
                    for k, v in r["catalog"].items():
                        cols.setdefault(k, []).append(v)
                if progress:
                    done = min(n, (w0 + len(group)) * BLOCK)
                    el = time.time() - t0
                    print(f"make_mock: {done}/{n} galaxies, {el:.0f} s ({done / el:.1f} gal/s)", flush=True)
        finally:
            if pool:
                pool.shutdown()
        cat = {k: np.concatenate(v) for k, v in cols.items()}
        cat["id"] = np.arange(n, dtype=np.int64)
        for k in ["id"] + [c for c in cat if c != "id"]:
            unit, desc = COLUMNS.get(k, ("", ""))
            write_column(f, k, cat[k], unit=unit, description=desc)
        f["split"][:] = split
    size = out.stat().st_size
    sec = time.time() - t0
    ur = cat["mag_u"] - cat["mag_r"]
    summary = {"n": n, "seconds": round(sec, 2), "galaxies_per_s": round(n / sec, 2), "bytes": size,
               "bytes_per_galaxy": round(size / n), "snr_median": float(np.median(cat["snr_median"])),
               "red_fraction_ur_2.22": float(np.mean(ur > 2.22)),
               "bpt_fractions": {str(k): float(np.mean(cat["bpt_class"] == k)) for k in (-1, 0, 1, 2)},
               "r_range": [float(cat["mag_r"].min()), float(cat["mag_r"].max())],
               "z_range": [float(cat["z"].min()), float(cat["z"].max())]}
    return summary
