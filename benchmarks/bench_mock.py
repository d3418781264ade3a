"""Benchmark the mock-survey build: ``python benchmarks/bench_mock.py --n 20000 [--workers 2] [--out PATH]``.

Prints JSON: galaxies per second of the full build (simulation + HDF5 write + validation), bytes on disk
per galaxy, and the machine load at start (the build shares its cores with whatever else runs).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from surveys.mock.build import build_survey  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="keep the survey here (default: a temporary file, deleted)")
    a = ap.parse_args(argv)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        out = a.out or os.path.join(tmp, "bench_mock.h5")
        s = build_survey(out, a.n, seed=a.seed, n_val=min(512, a.n // 10), workers=a.workers, progress=False)
    res = {"benchmark": "mock_build", "n": a.n, "workers": a.workers, "cpu_count": os.cpu_count(),
           "load_avg_1min_at_start": round(load, 2), "seconds": s["seconds"],
           "galaxies_per_s": s["galaxies_per_s"], "bytes_per_galaxy": s["bytes_per_galaxy"],
           "bytes_total": s["bytes"], "snr_median": round(s["snr_median"], 2),
           "red_fraction": round(s["red_fraction_ur_2.22"], 3), "bpt_fractions": s["bpt_fractions"]}
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
