"""Throughput of the spectroscopic toolbox; prints one JSON object (spectra per second).

Run: .venv/bin/python benchmarks/bench_analysis.py
Inputs: the real fixture spectra in tests/data/sdss, preprocessed like the project's spectra
(1 A grid 4000-8499 A, Gaussian sigma 2 A, mean 1 in 6900-6950 A) and replicated with noise.
"""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
from scipy.interpolate import CubicSpline
from scipy.ndimage import gaussian_filter1d

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from analysis import dn4000, fit_redshifts, fit_spectrum, lick_indices  # noqa: E402
from datasets.sdss_spec import read_spec  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = ["spec-0266-51602-0573", "spec-0266-51630-0623", "spec-1045-52725-0628", "spec-0266-51602-0001"]


def main():
    grid = np.arange(4000.0, 8500.0)
    specs, zs = [], []
    for n in NAMES:
        s = read_spec(os.path.join(ROOT, "tests", "data", "sdss", n + ".fits"))
        keep = (s.wave > 4000) & (s.wave < 8500)
        f = gaussian_filter1d(CubicSpline(s.wave[keep], s.flux[keep])(grid), 2.0)
        specs.append(f / f[(grid >= 6900) & (grid <= 6950)].mean())
        zs.append(s.z)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(specs), 1000)
    flux = np.array(specs)[idx] * (1 + 0.02 * rng.standard_normal((1000, grid.size)))
    z = np.array(zs)[idx]
    ivar = np.full_like(flux, 1 / 0.02 ** 2)
    out = {"n_cpu": os.cpu_count()}

    t = time.perf_counter()
    lick_indices(grid, flux, z, ivar=ivar)
    dn4000(grid, flux, z, ivar=ivar)
    out["indices_all_lick_plus_dn4000_per_s_N1000"] = round(1000 / (time.perf_counter() - t), 1)

    fit_redshifts(grid, flux[:2], extra_sigma=2.0)           # template preparation (cached)
    t = time.perf_counter()
    fit_redshifts(grid, flux[:100], extra_sigma=2.0)
    out["redshift_per_s_preprocessed_no_ivar"] = round(100 / (time.perf_counter() - t), 1)

    sel = [i for i in range(len(idx)) if 0.02 < z[i] < 0.07][:12]
    fit_spectrum(grid, flux[sel[0]], z[sel[0]], extra_sigma=2.0)   # warm the template cache
    t = time.perf_counter()
    ok = sum(fit_spectrum(grid, flux[i], z[i], extra_sigma=2.0).success for i in sel)
    out["ppxf_per_s_preprocessed_warm_cache"] = round(len(sel) / (time.perf_counter() - t), 2)
    out["ppxf_success"] = f"{ok}/{len(sel)}"
    print(json.dumps(out))


if __name__ == "__main__":
    main()
