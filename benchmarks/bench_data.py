"""Dataset loading speed (prints JSON): items/s for single items and whole batches, low-res and
full-res, from the preprocessed memory-mapped cache; and the one-off cache build time.

    python benchmarks/bench_data.py --survey data/mock_sdss.h5 [--batch 256]
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datasets.galaxy import EpochBatchSampler, GalaxyDataset, build_cache, make_loader  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--survey", default="data/mock_sdss.h5")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--rebuild-cache", action="store_true", help="time the cache build from scratch")
    a = p.parse_args()
    out = {"survey": a.survey}
    if a.rebuild_cache:
        cache_root = Path(a.survey + ".cache")
        shutil.rmtree(cache_root, ignore_errors=True)
        t0 = time.perf_counter()
        cache = build_cache(a.survey)
        dt = time.perf_counter() - t0
        out["cache_build_s"] = dt
        out["cache_build_galaxies_per_s"] = cache.meta["n_galaxies"] / dt
    rng = np.random.default_rng(0)
    for res in ("lowres", "fullres"):
        ds = GalaxyDataset(a.survey, "train", res, with_lowres=res == "fullres")
        idx = rng.integers(0, len(ds), 2000)
        ds[0]
        t0 = time.perf_counter()
        for i in idx:
            ds[int(i)]
        single = (time.perf_counter() - t0) / len(idx)
        loader = make_loader(ds, EpochBatchSampler(len(ds), a.batch, seed=0))
        t0 = time.perf_counter()
        n = 0
        for b in loader:
            n += b["image"].shape[0]
        batched = (time.perf_counter() - t0) / n
        out[res] = {"single_item_us": single * 1e6, "single_items_per_s": 1 / single,
                    "batched_item_us": batched * 1e6, "batched_items_per_s": 1 / batched,
                    "batch": a.batch, "n_items": n}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
