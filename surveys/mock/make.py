"""Build the embedded mock SDSS survey.

Usage: ``python -m surveys.mock.make --n 20000 --out data/mock_sdss.h5 --seed 0``.

See docs/MOCK.md for the physics and the catalogue columns.
"""
from __future__ import annotations

import json
import sys

from utils.launch import ArgumentParser, OutputError, check_output_path, report


def main(argv=None) -> int:
    """Parse arguments, build the survey, print a JSON summary (incl. size on disk)."""
    ap = ArgumentParser(prog="python -m surveys.mock.make",
                                 description="Build the embedded mock SDSS survey.")
    ap.add_argument("--n", type=int, default=20000, help="number of galaxies")
    ap.add_argument("--out", default="data/mock_sdss.h5", help="output HDF5 (schema v1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-val", type=int, default=512, help="validation galaxies")
    ap.add_argument("--test-fraction", type=float, default=0.1)
    ap.add_argument("--workers", type=int, default=2, help="worker processes")
    ap.add_argument("--chunk", type=int, default=1024, help="galaxies per write (memory bound)")
    ap.add_argument("--compression", default=None, choices=[None, "lzf", "gzip"],
                    help="HDF5 compression of images/spectra (default none: fastest to read)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    a = ap.parse_args(argv)
    if a.n <= 0:
        ap.error(f"--n: must be > 0, got {a.n}")
    if not 0 <= a.test_fraction < 1:
        ap.error(f"--test-fraction: must be in [0, 1), got {a.test_fraction}")
    if a.n_val < 0:
        ap.error(f"--n-val: must be >= 0, got {a.n_val}")
    n_test = int(round(a.test_fraction * a.n))
    if a.n_val + n_test >= a.n:
        ap.error(f"--n: {a.n} galaxies cannot hold --n-val {a.n_val} + {n_test} test galaxies "
                 "with any training galaxies left")
    if a.workers < 1 or a.chunk < 1:
        ap.error(f"--workers/--chunk: must be >= 1, got {a.workers}/{a.chunk}")
    try:
        check_output_path(a.out, a.overwrite, "--out")
    except OutputError as e:
        return report(e)
    from surveys.mock.build import build_survey
    s = build_survey(a.out, a.n, seed=a.seed, n_val=a.n_val, test_fraction=a.test_fraction,
                     workers=a.workers, chunk=a.chunk, compression=a.compression)
    s["out"] = a.out
    s["size_mb"] = round(s["bytes"] / 1e6, 1)
    print(json.dumps(s, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
