"""Train the conditional diffusion models: low-res (stage lr) and super-resolution (stage sr).

    python train_generative.py                        # paper settings from params_generative.yml
    python train_generative.py --preset cpu --stage sr
    python train_generative.py --nproc 4 --backend nccl

Reads the YAML beside this file unless --config is given; resumes from <out_dir>/last.pt if present.
"""
import sys

from training.cli import main as _cli_main


def main(argv=None) -> int:
    """Entry point (``galspec-train-generative``): the same as ``python train_generative.py``."""
    return _cli_main("generative", argv)


if __name__ == "__main__":
    sys.exit(main())
