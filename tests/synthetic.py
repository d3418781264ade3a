"""A tiny synthetic survey in the project's schema, for tests that must not wait for the full mock.

Each galaxy has a power-law continuum whose slope also sets its image colours, a 4000 Angstrom break
and an H-alpha line at (1+z) 6564.6 Angstrom, so a network can learn the image -> spectrum map quickly.
"""
from __future__ import annotations

import numpy as np

from datasets.schema import assign_split, create_survey, sdss_loglam_grid, write_column


def write_synthetic_survey(path, n: int = 64, seed: int = 0, n_val: int = 8, test_fraction: float = 0.125):
    rng = np.random.default_rng(seed)
    wave = 10 ** sdss_loglam_grid()
    z = rng.uniform(0.05, 0.15, n)
    slope = rng.uniform(-2.0, 1.0, n)
    amp = rng.uniform(5.0, 20.0, n)
    rest = wave[None, :] / (1 + z[:, None])
    cont = amp[:, None] * (wave[None, :] / 5000.0) ** slope[:, None]
    cont *= np.where(rest < 4000.0, 0.6, 1.0)
    line = 3.0 * amp[:, None] * np.exp(-0.5 * ((wave[None, :] - 6564.6 * (1 + z[:, None])) / 3.0) ** 2)
    model = cont + line
    sigma = 0.05 * model + 0.1
    flux = model + sigma * rng.standard_normal(model.shape)
    ivar = 1.0 / sigma ** 2
    yy, xx = np.mgrid[:64, :64] - 31.5
    r2 = xx ** 2 + yy ** 2
    size = 3.0 + 20 * (z - 0.05)
    blob = np.exp(-0.5 * r2[None] / size[:, None, None] ** 2)
    band_w = np.array([3550, 4690, 6170, 7480, 8930.0])
    colours = amp[:, None] * (band_w[None, :] / 5000.0) ** slope[:, None]
    images = colours[:, :, None, None] * blob[:, None] + 0.05 * rng.standard_normal((n, 5, 64, 64))
    with create_survey(path, n, survey="synthetic-test", attrs={"seed": seed}) as f:
        f["images"][:] = images.astype(np.float32)
        f["spectra/flux"][:] = flux.astype(np.float32)
        f["spectra/ivar"][:] = ivar.astype(np.float32)
        f.create_dataset("spectra/model", data=model.astype(np.float32))
        f["split"][:] = assign_split(n, seed, n_val=n_val, test_fraction=test_fraction)
        write_column(f, "id", np.arange(n, dtype=np.int64) + 1000)
        write_column(f, "ra", rng.uniform(0, 360, n), "deg")
        write_column(f, "dec", rng.uniform(-10, 60, n), "deg")
        write_column(f, "z", z, "", "redshift")
        write_column(f, "slope", slope, "", "power-law slope of the continuum")
    return path
