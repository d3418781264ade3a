"""Content fingerprint of a whole small pipeline run: before/after a refactor, the outputs must be identical.

    python benchmarks/output_fingerprint.py --out /tmp/fp_before     # writes /tmp/fp_before/fingerprint.json
    python benchmarks/output_fingerprint.py --out /tmp/fp_after
    diff /tmp/fp_before/fingerprint.json /tmp/fp_after/fingerprint.json   # no output = byte-identical
    python benchmarks/output_fingerprint.py --out /tmp/fp_before --hash-only --json /tmp/a.json  # no re-run

It builds a 40-galaxy mock, trains every kind of network for a few iterations (contrastive lr/sr, diffusion
lr/sr, CNN baseline; the CPU presets, one thread), runs generate.py and evaluate.py, and hashes the CONTENT
of every output: each HDF5 dataset, each tensor of each checkpoint, each FITS HDU's data and header cards
(without dates), the evaluation report JSON and metrics CSVs without wall-clock columns. File-level hashes
would differ by timestamps alone. The output directory's own path, which configs (run.out_dir), the report and
the FITS provenance (PROVJSON, with the checkpoint files' sha256 dropped) embed, is hashed as <OUT>, and the
report's wall-clock ``timings_s`` is left out, so that two runs in two directories compare equal.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VOLATILE = ("time", "timings", "date", "seconds", "created", "elapsed", "per_s", "sha256", "path", "input",
            "results", "survey", "checkpoint", "commit", "host", "cpu")
HEADER_VOLATILE = ("date", "time", "sha", "path", "input", "ckpt")
OUT = {"dir": None}  # the output directory: embedded in configs (run.out_dir), reports and FITS provenance


def _h(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()[:16]


def _clean(obj):
    """Drop volatile keys, and write the output directory as <OUT> so that two runs in two directories
    compare equal."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items() if not any(w in k.lower() for w in VOLATILE)}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    if isinstance(obj, str) and OUT["dir"]:
        return obj.replace(OUT["dir"], "<OUT>")
    return obj


def fp_h5(path: Path) -> dict:
    import h5py
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, _h(obj[()].tobytes()))
                     if isinstance(obj, h5py.Dataset) else None)
    return out


def fp_pt(path: Path) -> dict:
    import torch
    ck = torch.load(path, map_location="cpu", weights_only=True)
    out = {}
    for key in ("model", "ema_model"):
        for name, t in (ck.get(key) or {}).items():
            out[f"{key}.{name}"] = _h(t.detach().contiguous().numpy().tobytes())
    out["run.config"] = _h(json.dumps(_clean(ck["run"].get("config", {})), sort_keys=True).encode())
    return out


def fp_fits(path: Path) -> dict:
    from astropy.io import fits
    out = {}
    with fits.open(path) as hdul:
        for i, hdu in enumerate(hdul):
            cards = [f"{c.keyword}={c.value}" if c.keyword != "PROVJSON" else  # provenance JSON: cleaned
                     f"PROVJSON={json.dumps(_clean(json.loads(hdu.header['PROVJSON'])), sort_keys=True)}"
                     for c in hdu.header.cards
                     if not any(w in c.keyword.lower() for w in HEADER_VOLATILE)]
            out[f"hdu{i}.header"] = _h("\n".join(cards).encode())
            if hdu.data is not None:
                data = hdu.data
                out[f"hdu{i}.data"] = _h(data.tobytes() if hasattr(data, "tobytes") else bytes(data))
    return out


def fp_csv(path: Path) -> dict:
    lines = path.read_text().splitlines()
    if not lines:
        return {}
    head = lines[0].split(",")
    keep = [i for i, c in enumerate(head) if not any(w in c.lower() for w in VOLATILE)]
    rows = [",".join(r.split(",")[i] for i in keep) for r in lines]
    return {"content": _h("\n".join(rows).encode())}


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--hash-only", action="store_true",
                   help="hash the outputs already in --out (no pipeline run)")
    p.add_argument("--json", help="where to write the fingerprint (default <out>/fingerprint.json)")
    a = p.parse_args(argv)
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    OUT["dir"] = str(out)
    runs = {name: out / name for name in ("contrastive_lr", "contrastive_sr", "diffusion_lr", "diffusion_sr",
                                          "baseline")}
    if not a.hash_only:
        _run_pipeline(out, a.python)
    dest = Path(a.json) if a.json else out / "fingerprint.json"
    dest.write_text(json.dumps(fingerprint(out, runs), indent=1, sort_keys=True))
    print(f"wrote {dest}")
    return 0


def fingerprint(out: Path, runs: dict) -> dict:
    mock, res = out / "mock.h5", out / "generated.fits"
    fp = {"mock": fp_h5(mock)}
    for name, d in runs.items():
        fp[f"{name}/last.pt"] = fp_pt(d / "last.pt")
        fp[f"{name}/metrics.csv"] = fp_csv(d / "metrics.csv")
    fp["generated.fits"] = fp_fits(res)
    fp["eval_report.json"] = _h(json.dumps(_clean(json.loads((out / "eval_report.json").read_text())),
                                           sort_keys=True).encode())
    return fp


def _run_pipeline(out: Path, py: str) -> None:
    mock = out / "mock.h5"
    run([py, "-m", "utils.make_mock", "--n", "40", "--out", str(mock), "--seed", "3", "--n-val", "8",
         "--workers", "1", "--overwrite"])
    common = ["--preset", "cpu", "--threads", "1", "--no-resume", "--set", f"data.path={mock}",
              "--set", "train.max_iterations=4", "--set", "train.batch_size=8",
              "--set", "run.validate_every=4", "--set", "run.checkpoint_every=4",
              "--set", "validation.n_galaxies=4"]
    runs = {}
    for kind, script in (("contrastive", "train_contrastive.py"), ("diffusion", "train_generative.py")):
        for stage in ("lr", "sr"):
            d = out / f"{kind}_{stage}"
            extra = ["--set", "train.crop_length=512"] if stage == "sr" else []
            run([py, script, *common, "--stage", stage, "--set", f"run.out_dir={d}", *extra])
            runs[f"{kind}_{stage}"] = d
    d = out / "baseline"
    run([py, "train_baseline.py", *common, "--set", f"run.out_dir={d}"])
    runs["baseline"] = d
    res = out / "generated.fits"
    gen = [py, "generate.py", "--preset", "cpu", "--threads", "1", "--overwrite", "--amp", "off",
           "--no-figure", "--input", str(mock), "--set", f"generate.output={res}",
           "--set", "generate.steps=3"]
    for role in ("diffusion_lr", "diffusion_sr", "contrastive_lr", "contrastive_sr", "baseline"):
        gen += ["--set", f"generate.checkpoints.{role}={runs[role]}/last.pt"]
    run(gen)
    rep = out / "eval_report"
    run([py, "evaluate.py", "--results", str(res), "--survey", str(mock), "--out-dir", str(out / "figs"),
         "--report", str(rep), "--max-fit", "2", "--workers", "1",
         "--baselines", str(runs["baseline"] / "last.pt"), "--overwrite"])


if __name__ == "__main__":
    sys.exit(main())
