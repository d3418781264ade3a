"""Time of evaluate.py's candidate calibration (prints JSON): z and Dn4000 of every full-res candidate, PIT.

It takes a results file's FULLRES_CANDIDATES cube (N galaxies x M candidates; rows repeated to reach
``--galaxies``), measures every candidate the way ``evaluation.run.measure_candidates`` does (one batched
``measure_cheap`` call: ``analysis.fit_redshifts`` scan, then Dn4000 and Lick indices at each candidate's own
z), then the PIT and its KS distance (``evaluation.metrics``) of a stand-in truth (the first candidate:
the cost does not depend on it). Wall-clock seconds of each part, min of ``--repeats``.

    python benchmarks/bench_pit.py --results outputs/generated.fits [--galaxies 120] [--repeats 2]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evaluation import metrics as M  # noqa: E402
from evaluation.measure import measure_cheap  # noqa: E402
from utils.results_fits import read_spectra_fits  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", required=True)
    p.add_argument("--galaxies", type=int, default=120)
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args(argv)
    r = read_spectra_fits(a.results)
    cube, _ = r["cubes"]["FULLRES_CANDIDATES"]
    idx = np.resize(np.arange(cube.shape[0]), a.galaxies)  # repeat the file's galaxies up to --galaxies
    cand = cube[idx].astype(np.float64)
    n, m = cand.shape[:2]
    wave = r["wave"]
    t_meas, t_pit = [], []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        cm = measure_cheap(wave, cand.reshape(n * m, -1))
        z, d4 = cm["z"].reshape(n, m), cm["dn4000"].reshape(n, m)
        t1 = time.perf_counter()
        for s in (z, d4):
            M.pit_uniformity(M.pit_values(s, s[:, 0]))
        t2 = time.perf_counter()
        t_meas.append(t1 - t0)
        t_pit.append(t2 - t1)
    print(json.dumps({
        "galaxies": n, "candidates_per_galaxy": m, "spectra_measured": n * m,
        "measure_seconds": round(min(t_meas), 3), "per_spectrum_ms": round(1e3 * min(t_meas) / (n * m), 2),
        "pit_and_ks_seconds": round(min(t_pit), 5), "repeats": a.repeats,
        "threads": os.environ.get("OMP_NUM_THREADS", "default"),
        "cpu": os.uname().machine,
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
