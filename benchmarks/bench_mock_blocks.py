"""Time single mock blocks on one core: ``python benchmarks/bench_mock_blocks.py [--repo PATH] [--blocks 3]``.

Prints JSON: seconds per block of 64 galaxies (``surveys.mock.simulate.simulate_block``, seed 1, blocks 1..n
after a warm-up block that fills the caches) and galaxies per second on one core. ``--repo`` points at
another checkout (e.g. ``git worktree add /tmp/v1 a4621b8``) so two versions of the mock can be timed
alternately under the same machine load.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", default=str(Path(__file__).resolve().parents[1]))
    ap.add_argument("--blocks", type=int, default=3)
    a = ap.parse_args(argv)
    sys.path.insert(0, a.repo)
    import torch
    torch.set_num_threads(1)
    from surveys.mock import simulate
    load = os.getloadavg()[0]
    simulate.simulate_block(1, 0)
    ts = []
    for b in range(1, 1 + a.blocks):
        t = time.perf_counter()
        simulate.simulate_block(1, b)
        ts.append(time.perf_counter() - t)
    print(json.dumps({"benchmark": "mock_blocks", "repo": a.repo, "load_avg_1min_at_start": round(load, 2),
                      "block_s": [round(x, 3) for x in ts],
                      "galaxies_per_s_one_core": round(simulate.BLOCK * len(ts) / sum(ts), 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
