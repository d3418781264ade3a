"""Generate spectra from galaxy images with the trained models: the paper's chain, batched.

    python generate.py                                # settings from params_generative.yml `generate:`
    python generate.py --preset cpu --set generate.limit=100
    python generate.py --input my_images.h5 --set generate.split=all --set generate.sampler=dpmpp_2m
    python generate.py --nproc 2 --backend gloo       # shard galaxies over processes

Writes one FITS file (generate.output): a table of galaxies with every candidate's score, the top
prediction on the 4000-8499 A grid, and the candidate cubes; killed runs resume where they stopped.
"""
import sys

from generation.cli import main

if __name__ == "__main__":
    sys.exit(main())
