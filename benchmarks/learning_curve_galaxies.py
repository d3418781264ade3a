"""Learning curve against the number of training galaxies at a fixed training budget (prints JSON, writes a
figure): what more data buys for the low-res contrastive ranker and the low-res diffusion model.

For each size N it builds a mock v2 of N galaxies (``surveys.mock.make``, one seed for all sizes; the
validation split is each mock's own 512 galaxies), trains ``contrastive_lr`` and ``diffusion_lr`` with the
cpu preset for the same number of iterations (so a small mock is seen for more epochs), and reads the
validation of the last iteration from each run's final_metrics.json: median rank of the true spectrum
(contrastive; chance = (n + 1) / 2) and the best-of-n sample MSE beside the training-mean spectrum's and the
shuffled-image control's (diffusion). Runs and mocks are kept in --work, so a killed run resumes.

    python benchmarks/learning_curve_galaxies.py --sizes 2500 5000 10000 20000 --work runs/lc_galaxies \
        --parallel 2 --out docs/figures/learning_curve_galaxies.png
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from utils.files import write_text  # noqa: E402
from utils.plotting import plt, save_figure  # noqa: E402

RUNS = {"contrastive_lr": ("train_contrastive.py", "lr"), "diffusion_lr": ("train_generative.py", "lr")}


def run(cmd: list[str], log: Path) -> None:
    with open(log, "a") as fh:
        subprocess.run(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, check=True)


def one_size(n: int, a) -> dict:
    work = Path(a.work)
    mock = work / f"mock_{n}.h5"
    log = work / f"log_{n}.txt"
    if not mock.exists():
        run([sys.executable, "-m", "surveys.mock.make", "--n", str(n), "--out", str(mock), "--seed",
             str(a.seed), "--workers", "1"], log)
    out = {"n_galaxies": n}
    for role, (script, stage) in RUNS.items():
        d = work / f"{role}_{n}"
        run([sys.executable, script, "--preset", "cpu", "--stage", stage, "--threads", "1",
             "--set", f"data.path={mock}", "--set", f"run.out_dir={d}",
             "--set", f"train.max_iterations={a.iterations[role]}"], log)
        out[role] = json.loads((d / "final_metrics.json").read_text())
    return out


def figure(rows: list[dict], path: str) -> None:
    ns = [r["n_galaxies"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    ax1.plot(ns, [r["contrastive_lr"]["median_rank"] for r in rows], "-o", label="median rank")
    ax1.plot(ns, [r["contrastive_lr"]["chance_median_rank"] for r in rows], "k:", label="chance")
    ax1.set_yscale("log")
    ax1.set_title("low-res ranker (cpu preset)", fontsize=9)
    ax1.set_ylabel("median rank of the true spectrum")
    # each mock has its own validation galaxies, whose MSE scale differs: plot relative to the training-mean
    # spectrum's MSE on the same galaxies (below 1 = better than the mean spectrum)
    for key, label, style in (("mse_best", "best-of-n sample", "-o"),
                              ("mse_best_shuffled_images", "same, shuffled images", "--")):
        ax2.plot(ns, [r["diffusion_lr"][key] / r["diffusion_lr"]["mse_train_mean_spectrum"] for r in rows],
                 style, label=label)
    ax2.axhline(1.0, color="k", ls=":", label="training-mean spectrum")
    ax2.set_title("low-res diffusion model (cpu preset)", fontsize=9)
    ax2.set_ylabel("validation MSE / training-mean MSE")
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_xticks(ns, [str(n) for n in ns], minor=False)
        ax.set_xticks([], minor=True)
        ax.set_xlabel("galaxies in the mock (N)", fontsize=8)
        ax.legend(fontsize=7)
    fig.suptitle("Fixed number of iterations, more galaxies (train = N - 512 val - 10 % test)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    save_figure(fig, path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[2500, 5000, 10000, 20000])
    p.add_argument("--work", default="runs/lc_galaxies")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--contrastive-iterations", dest="ci", type=int, default=300)
    p.add_argument("--diffusion-iterations", dest="di", type=int, default=700)
    p.add_argument("--parallel", type=int, default=1, help="sizes trained at once (one thread each)")
    p.add_argument("--out", default="docs/figures/learning_curve_galaxies.png")
    a = p.parse_args()
    a.iterations = {"contrastive_lr": a.ci, "diffusion_lr": a.di}
    Path(a.work).mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(a.parallel) as ex:
        rows = list(ex.map(lambda n: one_size(n, a), a.sizes))
    figure(rows, a.out)
    text = json.dumps({"sizes": a.sizes, "iterations": a.iterations, "seed": a.seed, "rows": rows}, indent=1)
    write_text(Path(a.out).with_suffix(".json"), text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
