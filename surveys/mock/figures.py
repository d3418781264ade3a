"""Diagnostic figures of a mock survey: ``python -m surveys.mock.figures data/mock_sdss.h5 [--outdir DIR]``.

Writes mock_examples.png, mock_vs_sdss.png and mock_distributions.png.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import h5py
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from datasets.schema import open_survey  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "data" / "sdss"
TYPES = {0: "SF", 1: "composite", 2: "AGN", -1: "no-BPT"}


def rgb(img: np.ndarray) -> np.ndarray:
    """g, r, i (nanomaggies) -> asinh-stretched RGB in [0, 1] (Lupton et al. 2004 style)."""
    i, r, g = img[3], img[2], img[1]
    x = np.stack([i * 1.0, r * 1.1, g * 1.5], axis=-1)
    m = x.mean(-1, keepdims=True)
    scale = np.arcsinh(np.clip(m, 0, None) / 0.08) / np.clip(m, 1e-6, None)
    return np.clip(x * scale / np.arcsinh(np.percentile(m, 99.7) / 0.08 + 1e-6) * 1.0, 0, 1)


def _smooth(y, k=5):
    return np.convolve(y, np.ones(k) / k, mode="same")


def plot_examples(f: h5py.File, out: Path, n: int = 6) -> None:
    """Cutouts (g,r,i) beside observed + noiseless spectra for galaxies of different types."""
    c = {k: f["catalog"][k][:2000] for k in ("z", "mag_u", "mag_r", "bpt_class", "bulge_frac", "morphology")}
    ur = c["mag_u"] - c["mag_r"]
    picks = []
    for cond in (ur > 2.6, (ur > 2.22) & (c["bpt_class"] == 2), (ur < 1.8) & (c["bpt_class"] == 0),
                 c["bpt_class"] == 1, (ur < 2.22) & (c["bulge_frac"] < 0.1), c["bpt_class"] == -1):
        idx = [i for i in np.flatnonzero(cond) if i not in picks]
        if idx:
            picks.append(idx[0])
    picks = picks[:n]
    wave = 10 ** f["spectra/loglam"][:]
    fig, axes = plt.subplots(len(picks), 2, figsize=(11, 2.0 * len(picks)),
                             gridspec_kw={"width_ratios": [1, 4.5]})
    for row, i in enumerate(picks):
        axes[row, 0].imshow(rgb(f["images"][i]), origin="lower")
        axes[row, 0].set_axis_off()
        fl, mo = f["spectra/flux"][i], f["spectra/model"][i]
        a = axes[row, 1]
        a.plot(wave, _smooth(fl, 3), lw=0.4, color="0.5", label="observed")
        a.plot(wave, mo, lw=0.6, color="C3", label="noiseless")
        a.set_ylim(np.percentile(mo, 0.5) * 0.5 - 1, np.percentile(mo, 99.5) * 1.25)
        morph = {0: "E", 1: "S", 2: "?"}[int(c["morphology"][i])]
        a.set_title(f"#{i}  z={c['z'][i]:.3f}  r={c['mag_r'][i]:.2f}  u-r={ur[i]:.2f}  "
                    f"B/T={c['bulge_frac'][i]:.2f}"
                    f"  GZ={morph}  BPT={TYPES[int(c['bpt_class'][i])]}", fontsize=8)
        a.tick_params(labelsize=7)
        if row == 0:
            a.legend(fontsize=7, loc="upper left")
    axes[-1, 1].set_xlabel("observed vacuum wavelength [A]")
    fig.text(0.005, 0.5, "flux [1e-17 erg/s/cm2/A]", rotation=90, va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=62)
    plt.close(fig)


def plot_vs_sdss(f: h5py.File, out: Path) -> None:
    """Real SDSS fixture spectra beside the mock spectrum nearest in redshift and type."""
    from datasets.sdss_spec import read_spec
    cat = {k: f["catalog"][k][:] for k in ("z", "bpt_class", "mag_u", "mag_r", "snr_median")}
    ur = cat["mag_u"] - cat["mag_r"]
    wave = 10 ** f["spectra/loglam"][:]
    files = sorted(FIXTURES.glob("spec-*.fits"))
    rows = []
    for p in files:
        try:
            s = read_spec(p)
        except ValueError:
            continue
        if not (0.0 < s.z < 0.3) or s.meta.get("HDU2") != "SPECOBJ":
            continue
        sub = str(s.meta.get("SUBCLASS", ""))
        want_sf = "STARFORMING" in sub
        ok = (ur > 1.5) & (ur < 2.22) & (cat["bpt_class"] == 0) if want_sf else (ur > 2.22)
        if "BROADLINE" in sub or "AGN" in sub:
            ok = (ur > 2.22) & (cat["bpt_class"] == 2)
        j = int(np.flatnonzero(ok)[np.argmin(np.abs(cat["z"][ok] - s.z))])
        rows.append((s, sub, j))
    fig, axes = plt.subplots(len(rows), 2, figsize=(12, 2.2 * len(rows)), sharex=True)
    axes = np.atleast_2d(axes)
    for r, (s, sub, j) in enumerate(rows):
        good = s.ivar > 0
        a = axes[r, 0]
        a.plot(s.wave[good], _smooth(s.flux[good], 3), lw=0.4, color="k")
        a.set_title(f"SDSS {Path(s.path).name}  z={s.z:.3f}  {s.meta.get('CLASS', '')} {sub}", fontsize=8)
        b = axes[r, 1]
        b.plot(wave, _smooth(f["spectra/flux"][j], 3), lw=0.4, color="k")
        b.plot(wave, f["spectra/model"][j], lw=0.5, color="C3")
        b.set_title(f"mock #{j}  z={cat['z'][j]:.3f}  u-r={ur[j]:.2f}  BPT={TYPES[int(cat['bpt_class'][j])]}"
                    f"  S/N={cat['snr_median'][j]:.1f}", fontsize=8)
        for ax, fl in ((a, s.flux[good]), (b, f["spectra/model"][j])):
            ax.set_ylim(min(0, np.percentile(fl, 1)), np.percentile(fl, 99.7) * 1.2)
            ax.tick_params(labelsize=7)
            ax.set_xlim(3800, 9200)
    axes[-1, 0].set_xlabel("observed vacuum wavelength [A]")
    axes[-1, 1].set_xlabel("observed vacuum wavelength [A]")
    fig.tight_layout()
    fig.savefig(out, dpi=75)
    plt.close(fig)


def plot_distributions(f: h5py.File, out: Path) -> None:
    """CMD, g-r and Dn4000 bimodality, Hdelta_A-Dn4000, BPT diagram, sigma_v, redshift and r distributions
    (first 5000 galaxies)."""
    from astropy.cosmology import Planck18
    c = {k: f["catalog"][k][:5000] for k in f["catalog"]}  # the first 5000: readable scatter plots
    ur = c["mag_u"] - c["mag_r"]
    gr = c["mag_g"] - c["mag_r"]
    mr = c["mag_r"] - Planck18.distmod(c["z"]).value
    fig, ax = plt.subplots(2, 4, figsize=(17, 7.5))
    a = ax[0, 0]
    a.scatter(mr, ur, s=1, c=c["bulge_frac"], cmap="coolwarm", vmin=0, vmax=1, rasterized=True)
    a.axhline(2.22, color="k", ls="--", lw=0.8)
    a.set_xlim(-23.5, -17.5)
    a.set_ylim(0.5, 3.5)
    a.set_xlabel("M_r (no k-correction)")
    a.set_ylabel("u - r  (colour: r bulge fraction)")
    a.set_title(f"red (u-r>2.22): {np.mean(ur > 2.22):.2f}", fontsize=9)
    a = ax[0, 1]
    a.hist(gr, bins=60, range=(0.2, 1.2), color="0.4")
    a.set_xlabel("g - r")
    a.set_title("g-r distribution", fontsize=9)
    a = ax[0, 2]
    if "dn4000" in c:
        a.hist(c["dn4000"][np.isfinite(c["dn4000"])], bins=60, range=(0.9, 2.3), color="0.4")
        a.set_xlabel("Dn4000 (noiseless fibre spectrum)")
    else:
        a.hist(ur, bins=60, range=(0.5, 3.5), color="0.4")
        a.set_xlabel("u - r")
    a = ax[1, 0]
    x = np.log10(np.clip(c["flux_nii_6584"], 1e-9, None) / np.clip(c["flux_ha"], 1e-9, None))
    y = np.log10(np.clip(c["flux_oiii_5007"], 1e-9, None) / np.clip(c["flux_hb"], 1e-9, None))
    for k, col in ((0, "C0"), (1, "C2"), (2, "C3")):
        s = c["bpt_class"] == k
        a.scatter(x[s], y[s], s=1.5, color=col, label=f"{TYPES[k]} ({s.mean():.2f})", rasterized=True)
    xx = np.linspace(-1.5, 0.04, 100)
    a.plot(xx, 0.61 / (xx - 0.05) + 1.30, "k--", lw=0.8, label="Kauffmann 03")
    xx = np.linspace(-1.5, 0.46, 100)
    a.plot(xx, 0.61 / (xx - 0.47) + 1.19, "k-", lw=0.8, label="Kewley 01")
    a.set_xlim(-1.5, 0.6)
    a.set_ylim(-1.3, 1.3)
    a.set_xlabel("log [NII]6584/Halpha")
    a.set_ylabel("log [OIII]5007/Hbeta")
    a.legend(fontsize=7, markerscale=4, title=f"unclassifiable {np.mean(c['bpt_class'] == -1):.2f}",
             title_fontsize=7)
    a = ax[1, 1]
    a.hist(c["z"], bins=70, range=(0.0, 0.35), color="0.4")
    a.set_xlabel("redshift")
    a.set_title(f"median z = {np.median(c['z']):.3f}", fontsize=9)
    a = ax[1, 2]
    a.hist(c["mag_r"], bins=50, range=(13.5, 18), color="0.4", label="total r")
    a.hist(c["fibermag_r"], bins=50, range=(13.5, 21), histtype="step", color="C3", label="fibre r")
    a.set_xlabel("r [AB mag]")
    a.legend(fontsize=7)
    a.set_title(f"median S/N per pixel {np.median(c['snr_median']):.1f}", fontsize=9)
    a = ax[0, 3]
    if "lick_Hdelta_A" in c:
        a.scatter(c["dn4000"], c["lick_Hdelta_A"], s=1, c=ur, cmap="coolwarm", vmin=1.0, vmax=3.0,
                  rasterized=True)
        a.set_xlim(0.9, 2.3)
        a.set_ylim(-4, 10)
        a.set_xlabel("Dn4000")
        a.set_ylabel("Hdelta_A [A]  (colour: u-r)")
        a.set_title(f"Hdelta_A > 5 A: {np.mean(c['lick_Hdelta_A'] > 5):.3f}", fontsize=9)
    a = ax[1, 3]
    ell = c["morphology"] == 0
    a.hist(c["sigma_v"], bins=60, range=(0, 450), color="0.4", label="all")
    a.hist(c["sigma_v"][ell], bins=60, range=(0, 450), histtype="step", color="C3", label="ellipticals")
    a.set_xlabel("sigma_v [km/s]")
    a.legend(fontsize=7)
    a.set_title(f"median sigma_v {np.median(c['sigma_v']):.0f} km/s (ellipticals "
                f"{np.median(c['sigma_v'][ell]):.0f})", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=70)
    plt.close(fig)


def main(argv=None) -> int:
    """Regenerate the three mock figures from a survey file."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("survey")
    ap.add_argument("--outdir", default=str(REPO / "figures"))
    a = ap.parse_args(argv)
    out = Path(a.outdir)
    out.mkdir(parents=True, exist_ok=True)
    with open_survey(a.survey) as f:
        plot_examples(f, out / "mock_examples.png")
        plot_vs_sdss(f, out / "mock_vs_sdss.png")
        plot_distributions(f, out / "mock_distributions.png")
    print(f"wrote {out}/mock_examples.png, mock_vs_sdss.png, mock_distributions.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
