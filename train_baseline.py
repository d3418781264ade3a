"""Train the supervised image -> (z, Dn4000, sigma_v, AGN) CNN baseline (training/baseline.py).

    python train_baseline.py --preset cpu            # ~2 minutes on 2 cores -> runs/baseline/best.pt
    python train_baseline.py --set train.max_iterations=500

Reads params_baseline.yml unless --config is given; resumes from <out_dir>/last.pt if present.
evaluate.py --baselines runs/baseline/best.pt puts it in the "cnn" column of the report.
"""

import sys

from training.cli import main

if __name__ == "__main__":
    sys.exit(main("baseline"))
