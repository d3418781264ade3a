"""Figure of generated spectra: image | predicted spectrum with the spread of the candidates | truth."""
from __future__ import annotations

import h5py
import numpy as np

from utils.plotting import plt, rgb_image, save_figure
from utils.results_fits import read_spectra_fits


def generated_figure(results_path, out_path, input_path, n_show: int = 5):
    """Plot the first ``n_show`` successfully generated galaxies of a generate.py output file."""
    res = read_spectra_fits(results_path)
    t, spec, wave = res["table"], res["spectra"], res["wave"]
    cands = res["cubes"]["FULLRES_CANDIDATES"][0]
    ok = np.flatnonzero(np.asarray(t["status"]).astype(str) == "ok")[:n_show]
    rows = np.asarray(t["row"])[ok]
    with h5py.File(input_path, "r") as f:
        images = f["images"][np.sort(rows)][np.argsort(np.argsort(rows))]
    fig, axes = plt.subplots(len(ok), 2, figsize=(11, 2.2 * len(ok)), gridspec_kw={"width_ratios": [1, 5]})
    axes = np.atleast_2d(axes)
    label = {"z_mean": "predicted (mean of the z-consistent candidates)",
             "z_aligned": "predicted (mean of the z-consistent candidates, aligned in z)",
             "consensus": "predicted (mean of the candidates at the consensus z)"}.get(
        res["header"].get("prediction"), "predicted (top-ranked)")
    for j, i in enumerate(ok):
        axes[j, 0].imshow(rgb_image(images[j]), origin="lower")
        axes[j, 0].set_axis_off()
        ax = axes[j, 1]
        lo, hi = np.nanmin(cands[i], axis=0), np.nanmax(cands[i], axis=0)
        ax.fill_between(wave, lo, hi, color="C1", alpha=0.35, lw=0, label="candidates (min-max)")
        if "flux_obs" in spec and np.isfinite(spec["flux_obs"][i]).all():
            ax.plot(wave, spec["flux_obs"][i], color="k", lw=0.6, label="observed")
        ax.plot(wave, spec["flux_pred"][i], color="C3", lw=0.7, label=label)
        z = f"z = {t['z'][i]:.3f}  " if "z" in t else ""
        if "z_prior" in t:   # generate.z_prior: the CNN's photo-z
            z += f"photo-z {t['z_prior'][i]:.3f}  "
        if "z_consensus" in t:   # the prediction sits at the low-res candidates' median z
            z += f"z of prediction (consensus) {t['z_consensus'][i]:.3f}  "
        elif "z_prior" in t:     # the top candidate's own fitted z
            z += f"z of prediction {t['fullres_z'][i, t['top'][i]]:.3f}  "
        ax.text(0.01, 0.93, f"id {t['id'][i]}  {z}score {t['score_top'][i]:.2f}", transform=ax.transAxes,
                fontsize=8, va="top")
        ref = spec["flux_obs"][i] if "flux_obs" in spec else spec["flux_pred"][i]
        ax.set_ylim(0, max(1.5, float(np.nanpercentile(ref, 99.5)) * 1.5))
        ax.set_ylabel("norm. flux", fontsize=8)
        if j == 0:
            ax.legend(fontsize=7, loc="lower right", ncol=3)
    axes[-1, 1].set_xlabel("observed wavelength [Å]")
    save_figure(fig, out_path, dpi=65)
