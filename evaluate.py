"""Score generated spectra: the paper's science read-out vs the truth, the measurement ceiling and baselines.

    python evaluate.py --results outputs/generated.fits                       # survey from the file's header
    python evaluate.py --results outputs/generated.fits --baselines runs/baseline/best.pt --max-fit 25

Writes <report>.json / <report>.md (one table: predicted | observed | noiseless | cnn | photometric |
retrieval | train_mean) and figures/eval_*.png. See docs/EVALUATION.md for every number.
"""

import sys
from pathlib import Path

from utils.launch import ArgumentParser, OutputError, UsageError, check_output_path, run_reporting


def _check_args(a) -> None:
    """Numbers and output paths, before the (minutes-long) evaluation starts."""
    for name, v, lo in (("--max-fit", a.max_fit, 0), ("--workers", a.workers, 1),
                        ("--pool-size", a.pool_size, 1)):
        if v < lo:
            raise UsageError(f"{name}: {v} must be >= {lo}")
    for ck in a.baselines:
        if not Path(ck).is_file():
            raise UsageError(f"{ck}: --baselines: checkpoint file does not exist")
    base = Path(a.report)
    for ext in (".json", ".md"):
        check_output_path(base.with_name(base.name + ext), a.overwrite, "--report")
    out = Path(a.out_dir)
    for d in [out, *out.parents]:
        if d.exists():
            if not d.is_dir():
                raise OutputError(f"{out}: --out-dir: {d} is a file, not a directory")
            break


def main(argv=None) -> int:
    p = ArgumentParser(prog="evaluate.py", description=__doc__.splitlines()[0])
    p.add_argument(
        "--results", default="outputs/generated.fits", help="generate.py output (default: %(default)s)"
    )
    p.add_argument("--survey", default=None, help="survey HDF5 (default: the results header's 'input')")
    p.add_argument("--out-dir", default="figures", help="figure directory (default: %(default)s)")
    p.add_argument(
        "--report", default="outputs/eval_report", help="writes <report>.json and .md (default: %(default)s)"
    )
    p.add_argument(
        "--max-fit", type=int, default=25, help="galaxies in the pPXF subset (default: %(default)s)"
    )
    p.add_argument(
        "--baselines", nargs="*", default=[],
        help="supervised CNN checkpoint(s) (train_baseline.py); 'reference' = the shipped reference CNN"
    )
    p.add_argument(
        "--no-retrieval", action="store_true", help="skip the contrastive nearest-neighbour baseline"
    )
    p.add_argument(
        "--workers", type=int, default=2, help="processes for the pPXF fits (default: %(default)s)"
    )
    p.add_argument(
        "--pool-size",
        type=int,
        default=5000,
        help="training spectra for retrieval/mean (default: %(default)s)",
    )
    p.add_argument(
        "--no-photometric", action="store_true", help="skip the aperture-photometry baseline"
    )
    p.add_argument(
        "--cache", default=None, metavar="DIR",
        help="reuse the photometric fit and the retrieval pool's embeddings stored here (keyed by survey, "
             "pool, seed and checkpoint; `python -m evaluation.baselines` fills it ahead)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing <report>.json/.md")
    a = p.parse_args(argv)
    from evaluation.run import evaluate

    def run():
        if "reference" in a.baselines:
            from models.reference import reference_path
            a.baselines = [reference_path("baseline") if b == "reference" else b for b in a.baselines]
        _check_args(a)
        evaluate(
            a.results,
            a.survey,
            a.out_dir,
            a.report,
            a.max_fit,
            a.baselines,
            not a.no_retrieval,
            a.workers,
            a.pool_size,
            a.seed,
            photometric=not a.no_photometric,
            cache_dir=a.cache,
        )

    return run_reporting(run)


if __name__ == "__main__":
    sys.exit(main())
