"""Small plotting helpers shared by the figure writers (matplotlib, Agg backend)."""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from surveys.description import SURVEY  # noqa: E402
from utils.files import atomic_path


def rgb_image(image: np.ndarray, bands=SURVEY.rgb_index, q: float = 8.0) -> np.ndarray:
    """(5, H, W) image (nanomaggies or standardised) -> (H, W, 3) asinh-stretched RGB of i, r, g
    (the survey description's ``rgb_bands``; SDSS planes 3, 2, 1).

    A Lupton-style asinh stretch on the summed intensity, scaled per image from the 99.5th percentile,
    so both bright and faint galaxies are visible.
    """
    rgb = np.stack([image[b] for b in bands], axis=-1).astype(np.float64)
    rgb = rgb - np.percentile(rgb, 5, axis=(0, 1), keepdims=True)
    intensity = rgb.mean(axis=-1, keepdims=True)
    scale = np.percentile(intensity, 99.5) + 1e-12
    stretched = np.arcsinh(q * np.clip(intensity, 0, None) / scale) / np.arcsinh(q)
    out = rgb * stretched / np.maximum(intensity, 1e-12)
    return np.clip(out, 0, 1)


def save_figure(fig, path: str | os.PathLike, dpi: int = 90) -> Path:
    """Save atomically (temporary name, then rename) and close the figure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(path, keep_suffix=True) as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path
