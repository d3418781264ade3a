"""Validation figure of the diffusion trainers: images with their true and sampled spectra."""
from __future__ import annotations

import numpy as np

from datasets.preprocess import FULLRES_WAVE, LOWRES_WAVE
from utils.plotting import plt, rgb_image, save_figure


def sample_figure(path, batch, truth, pred, cache, title: str = "", n_show: int = 4):
    """Rows of (RGB image | true spectrum and samples), linear normalised flux vs observed wavelength."""
    n = min(n_show, truth.shape[0])
    wave = LOWRES_WAVE if truth.shape[-1] == LOWRES_WAVE.size else FULLRES_WAVE
    fig, axes = plt.subplots(n, 2, figsize=(10, 2.1 * n), gridspec_kw={"width_ratios": [1, 5]})
    axes = np.atleast_2d(axes)
    for i in range(n):
        axes[i, 0].imshow(rgb_image(batch["image"][i].numpy()), origin="lower")
        axes[i, 0].set_axis_off()
        ax = axes[i, 1]
        for k in range(pred.shape[1]):
            ax.plot(wave, pred[i, k].numpy(), lw=0.6, alpha=0.7, color=f"C{k + 1}",
                    label="samples" if k == 0 else None)
        ax.plot(wave, truth[i].numpy(), lw=0.8, color="k", label="true")
        mse = float(((pred[i] - truth[i]) ** 2).mean(-1).min())
        ax.text(0.01, 0.92, f"row {int(batch['index'][i])}  best MSE {mse:.3g}", transform=ax.transAxes,
                fontsize=8, va="top")
        top = float(np.percentile(truth[i].numpy(), 99.5)) * 1.6
        ax.set_ylim(0, max(top, 1.5))
        if i == 0:
            ax.legend(fontsize=7, loc="upper right")
        if i == n - 1:
            ax.set_xlabel("observed wavelength [Å]")
        ax.set_ylabel("norm. flux", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)
