"""Learning curves of trained runs: validation quality against wall-clock training time (and iterations),
read from each run's metrics.csv, one panel per run; written as a figure and a JSON table.

    python benchmarks/learning_curves.py --runs runs/reference --out docs/figures/learning_curves.png

Per run kind the panel shows what its validation measures: contrastive = median rank of the true spectrum
among the validation spectra (chance = (n+1)/2); diffusion = best-of-n sample MSE in linear flux, beside the
training-mean spectrum's MSE and the same draws conditioned on shuffled images (a model that ignores the
image sits on the shuffled line); CNN baseline = z sigma_NMAD and Dn4000 scatter. Time is the wall time
between the first and each logged row of the current metrics.csv (a resumed run's pause is removed: gaps
longer than 10 minutes between rows count as 0).
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from utils.plotting import plt, save_figure  # noqa: E402

SERIES = {  # run kind (from the metrics columns) -> [(column, label, style)]
    "contrastive": [("val_median_rank", "median rank", "-o"), ("val_chance_median_rank", "chance", "k:")],
    "diffusion": [("val_mse_best", "best-of-n sample", "-o"),
                  ("val_mse_best_shuffled_images", "same, shuffled images", "--"),
                  ("val_mse_train_mean_spectrum", "training-mean spectrum", "k:")],
    "baseline": [("val_z_sigma_nmad", "z sigma_NMAD", "-o"), ("val_dn4000_scatter", "Dn4000 scatter", "-s")],
}


def read_metrics(path: Path) -> dict[str, np.ndarray]:
    with open(path) as f:
        rows = list(csv.DictReader(f))
    cols = {k: np.array([float(r[k]) if r[k] not in ("", None) else np.nan for r in rows]) for k in rows[0]}
    t = cols["time"]
    dt = np.diff(t, prepend=t[0])
    dt[dt > 600] = 0.0  # a resume: do not count the pause
    cols["minutes"] = np.cumsum(dt) / 60.0
    return cols


def kind_of(cols: dict) -> str:
    if "val_median_rank" in cols:
        return "contrastive"
    if "val_mse_best" in cols:
        return "diffusion"
    return "baseline"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", required=True, help="directory whose sub-directories hold metrics.csv")
    p.add_argument("--out", default="docs/figures/learning_curves.png")
    a = p.parse_args(argv)
    runs = sorted(d for d in Path(a.runs).iterdir() if (d / "metrics.csv").exists())
    if not runs:
        print(f"error: {a.runs}: no <run>/metrics.csv", file=sys.stderr)
        return 2
    fig, axes = plt.subplots(1, len(runs), figsize=(3.6 * len(runs), 3.2), squeeze=False)
    table = {}
    for ax, d in zip(axes[0], runs):
        cols = read_metrics(d / "metrics.csv")
        kind = kind_of(cols)
        table[d.name] = {"kind": kind}
        for col, label, style in SERIES[kind]:
            if col not in cols:
                continue
            ok = np.isfinite(cols[col])
            ax.plot(cols["minutes"][ok], cols[col][ok], style, ms=3, label=label)
            table[d.name][col] = [[round(float(m), 2), int(i), float(v)] for m, i, v in
                                  zip(cols["minutes"][ok], cols["iteration"][ok], cols[col][ok])]
        ax.set_title(f"{d.name} ({int(np.nanmax(cols['iteration']))} it.)", fontsize=9)
        ax.set_xlabel("training time [min]")
        ax.legend(fontsize=7)
        ax.set_ylim(bottom=0)
    fig.tight_layout()
    save_figure(fig, a.out)
    out_json = Path(a.out).with_suffix(".json")
    out_json.write_text(json.dumps(table, indent=1))
    print(f"wrote {a.out} and {out_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
