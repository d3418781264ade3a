"""Train the supervised image -> (z, Dn4000, sigma_v, AGN) CNN baseline (training/baseline.py).

    python train_baseline.py --preset cpu            # ~2 minutes on 2 cores -> runs/baseline/best.pt
    python train_baseline.py --set train.max_iterations=500

Reads params_baseline.yml unless --config is given; resumes from <out_dir>/last.pt if present.
evaluate.py --baselines runs/baseline/best.pt puts it in the "cnn" column of the report.
"""

import sys

from training.cli import main as _cli_main


def main(argv=None) -> int:
    """Entry point (``galspec-train-baseline``): the same as ``python train_baseline.py``."""
    return _cli_main("baseline", argv)


if __name__ == "__main__":
    sys.exit(main())
