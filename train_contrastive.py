"""Train the CLIP-style contrastive image/spectrum network (one per resolution).

    python train_contrastive.py                       # paper settings from params_contrastive.yml
    python train_contrastive.py --preset cpu --stage sr
    python train_contrastive.py --set train.batch_size=256 --nproc 2 --backend gloo

Reads the YAML beside this file unless --config is given; resumes from <out_dir>/last.pt if present.
"""
import sys

from training.cli import main as _cli_main


def main(argv=None) -> int:
    """Entry point (``galspec-train-contrastive``): the same as ``python train_contrastive.py``."""
    return _cli_main("contrastive", argv)


if __name__ == "__main__":
    sys.exit(main())
