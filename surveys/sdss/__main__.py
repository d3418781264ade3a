"""CLI of the real-SDSS route: ``python -m surveys.sdss <subcommand> --help`` (docs/REAL_DATA.md)."""

from __future__ import annotations

import json
import sys

from surveys.description import SDSS
from surveys.sdss.catalog import CatalogError, build_query, query_skyserver, read_catalog_csv
from surveys.sdss.download import SAS_URL, download_all, plan_downloads
from utils.launch import ArgumentParser, check_output_path


def _z_range(a) -> tuple[float, float] | None:
    return None if a.no_z_check else (a.zmin, a.zmax)


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m surveys.sdss", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=ArgumentParser)

    q = sub.add_parser("sql", help="print the SkyServer/CasJobs SQL of the paper's sample")
    q.add_argument("--release", default="DR16", choices=["DR16", "DR17"])
    q.add_argument("--limit", type=int)

    c = sub.add_parser("catalog", help="run the SQL on SkyServer and write a validated CSV")
    c.add_argument("--out", required=True)
    c.add_argument("--release", default="DR16", choices=["DR16", "DR17"])
    c.add_argument("--limit", type=int)
    c.add_argument("--url", help="SqlSearch endpoint (default: public SkyServer for the release)")
    c.add_argument("--ra-slices", type=int, default=24, help="RA slices (SkyServer caps 500k rows/request)")
    c.add_argument("--timeout", type=float, default=600.0)
    c.add_argument("--overwrite", action="store_true", help="replace an existing --out file")

    for name, hlp in (
        ("download", "download spec-lite + frame files (resumable)"),
        ("build", "build the HDF5 survey from the catalogue and downloaded files"),
        ("import-pasquet", "build the HDF5 survey with images from the Pasquet et al. cube"),
    ):
        s = sub.add_parser(name, help=hlp)
        s.add_argument("--catalog", required=True, help="catalogue CSV")
        s.add_argument("--release", default="DR16", choices=["DR16", "DR17"])
        s.add_argument("--zmin", type=float, default=0.05)
        s.add_argument("--zmax", type=float, default=0.15)
        s.add_argument("--no-z-check", action="store_true")
        s.add_argument("--quiet", action="store_true")
        if name == "download":
            s.add_argument("--out", required=True, help="local SAS mirror root")
            s.add_argument("--base-url", default=SAS_URL)
            s.add_argument("--workers", type=int, default=8)
            s.add_argument("--timeout", type=float, default=60.0)
            s.add_argument("--retries", type=int, default=5)
            s.add_argument("--backoff", type=float, default=1.0)
            s.add_argument("--bands", default=SDSS.bands)
            s.add_argument(
                "--no-frames", action="store_true", help="spectra only (e.g. with the Pasquet cube)"
            )
            s.add_argument("--no-spectra", action="store_true")
        else:
            s.add_argument("--data", required=True, help="download root (download --out)")
            s.add_argument("--out", required=True, help="survey HDF5")
            s.add_argument("--seed", type=int, default=0)
            s.add_argument("--n-val", type=int, default=512)
            s.add_argument("--test-fraction", type=float, default=0.1)
            s.add_argument("--compression", choices=["gzip", "lzf"])
            s.add_argument("--scratch-dir")
            s.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
            if name == "build":
                s.add_argument("--orientation", default="native", choices=["native", "north"])
            else:
                s.add_argument("--npz", required=True, help="the Pasquet et al. (2019) cube npz")

    r = sub.add_parser("results-to-fits", help="predictions HDF5 + survey -> results FITS")
    r.add_argument("--predictions", required=True)
    r.add_argument("--survey", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--overwrite", action="store_true", help="replace an existing --out file")

    a = ap.parse_args(argv)
    try:
        if a.cmd in ("catalog", "build", "import-pasquet", "results-to-fits"):
            check_output_path(a.out, a.overwrite, "--out")  # before any download or build work
        if a.cmd == "sql":
            print(build_query(a.release, a.limit))
            return 0
        if a.cmd == "catalog":
            p = query_skyserver(a.out, a.release, a.limit, a.url, n_ra_slices=a.ra_slices, timeout=a.timeout)
            print(json.dumps({"catalog": str(p), "n": len(read_catalog_csv(p, z_range=None)["z"])}))
            return 0
        if a.cmd == "results-to-fits":
            from utils.results_fits import results_to_fits

            print(json.dumps({"fits": str(results_to_fits(a.predictions, a.survey, a.out))}))
            return 0
        cat = read_catalog_csv(a.catalog, z_range=_z_range(a))
        if a.cmd == "download":
            tasks = plan_downloads(
                cat, a.base_url, a.release, a.bands, spectra=not a.no_spectra, frames=not a.no_frames
            )
            res = download_all(
                tasks,
                a.out,
                workers=a.workers,
                timeout=a.timeout,
                retries=a.retries,
                backoff=a.backoff,
                progress=not a.quiet,
            )
            res["failures"] = f"{a.out}/failures.csv"
            print(json.dumps(res))
            return 0
        from surveys.sdss.build import build_survey, import_pasquet_cube

        kw = dict(
            release=a.release,
            seed=a.seed,
            n_val=a.n_val,
            test_fraction=a.test_fraction,
            compression=a.compression,
            scratch_dir=a.scratch_dir,
            progress=not a.quiet,
        )
        if a.cmd == "build":
            res = build_survey(cat, a.data, a.out, orientation=a.orientation, **kw)
        else:
            res = import_pasquet_cube(a.npz, cat, a.data, a.out, **kw)
        print(json.dumps(res))
        return 0
    except (CatalogError, ValueError, OSError) as e:
        # every error class of this route is a ValueError with a one-line "file: field: value" message
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
