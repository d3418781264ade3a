"""Reference models shipped with the repository: the four networks of the chain and the CNN baseline,
trained on the embedded mock survey by ``scripts/train_reference.sh`` (docs/MODELS.md, "Reference models").

``models/reference/`` holds one slim checkpoint per role (the EMA weights, large tensors in float16, and the
run record that rebuilds the network) and ``manifest.json`` (mock version and seed, config, commit, training
time, validation metrics and the sha256 of every file). ``generate.py --checkpoints reference`` and
``evaluate.py --baselines reference`` resolve to these files; every use checks the file against the manifest,
so a missing or damaged weight file is a one-line error naming it.

    python -m models.reference export --runs runs/reference --out models/reference   # after training
    python -m models.reference check                                                  # verify the files
    python -m models.reference recalibrate --survey runs/reference/mock_ref.h5            # precise BatchNorm
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import torch

from utils.files import write_text

REFERENCE_DIR = Path(__file__).resolve().parent / "reference"
MANIFEST = "manifest.json"
#: the shipped roles: ``<role>.pt`` here, trained in ``<runs>/<role>/`` (scripts/train_reference.sh); the
#: chain's four (generation.chain.ROLES) and the CNN of generate.z_prior / evaluate.py --baselines
ROLES = ("diffusion_lr", "diffusion_sr", "contrastive_lr", "contrastive_sr", "baseline")
#: tensors with fewer elements than this stay float32 (normalisation buffers, biases, GroupNorm)
HALF_MIN_NUMEL = 4096


class ReferenceError(ValueError):
    """A missing, damaged or inconsistent reference file; the message names it."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_manifest(root: Path = REFERENCE_DIR) -> dict:
    path = Path(root) / MANIFEST
    if not path.exists():
        raise ReferenceError(f"{path}: file: missing (no reference models here; scripts/train_reference.sh "
                             "trains and exports them)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ReferenceError(f"{path}: file: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(manifest.get("files"), dict):
        raise ReferenceError(f"{path}: files: missing (not a reference manifest)")
    return manifest


def reference_path(role: str, root: Path = REFERENCE_DIR, verify: bool = True) -> str:
    """Path of the reference checkpoint of ``role`` (e.g. "diffusion_lr"), checked against the manifest."""
    if role not in ROLES:
        raise ReferenceError(f"role: {role!r} is not one of {sorted(ROLES)}")
    root = Path(root)
    manifest = load_manifest(root)
    entry = manifest["files"].get(role)
    if entry is None:
        raise ReferenceError(f"{root / MANIFEST}: files.{role}: missing")
    path = root / entry["file"]
    if not path.exists():
        raise ReferenceError(f"{path}: file: missing (listed in {root / MANIFEST})")
    if verify:
        got = sha256(path)
        if got != entry["sha256"]:
            raise ReferenceError(f"{path}: sha256: {got[:16]}... does not match the manifest's "
                                 f"{entry['sha256'][:16]}... (damaged or replaced file)")
    return str(path)


def reference_checkpoints(root: Path = REFERENCE_DIR) -> dict[str, str]:
    """The chain's roles (the four networks and the CNN of ``generate.z_prior``) -> verified reference
    checkpoint paths (``generate.checkpoints``)."""
    return {role: reference_path(role, root) for role in ROLES}


def slim_state(state: dict) -> dict:
    """Float tensors of ``HALF_MIN_NUMEL`` elements or more in float16, the rest as they are."""
    out = {}
    for k, v in state.items():
        if torch.is_tensor(v) and v.is_floating_point() and v.numel() >= HALF_MIN_NUMEL:
            v = v.half()
        out[k] = v.contiguous()
    return out


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def validation_at(metrics_csv: Path, iteration) -> dict:
    """The validation metrics a run logged at ``iteration`` (its ``val_*`` columns of metrics.csv, names
    without the prefix, plus ``iteration``): those of the exported best checkpoint. {} if none."""
    import csv

    if iteration is None or not Path(metrics_csv).exists():
        return {}
    with open(metrics_csv, newline="") as fh:
        for row in csv.DictReader(fh):
            vals = {k[4:]: float(v) for k, v in row.items() if k.startswith("val_") and v not in ("", None)}
            if vals and int(float(row["iteration"])) == iteration:
                return {"iteration": iteration, **vals}
    return {}


def export(runs: Path, out: Path, extra: dict | None = None, roles=None, sources: dict | None = None) -> dict:
    """Slim each role's best checkpoint under ``runs/<role>/best.pt`` into ``out`` and write the manifest.

    ``roles``: re-export only these (e.g. one retrained network); the other entries of the existing
    manifest are kept as they are. ``sources``: role -> run directory where a role's run is not
    ``runs/<role>`` (e.g. a fine-tune of it). Every file entry records the commit it was exported at."""
    from models.checkpoint import load_checkpoint, save_checkpoint

    runs, out = Path(runs), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files, old = {}, {}
    if roles is not None:
        bad = sorted(set(roles) - set(ROLES))
        if bad:
            raise ReferenceError(f"--roles: {bad} not among {sorted(ROLES)}")
        old = load_manifest(out)
        files = {r: {"commit": old.get("commit"), **f} for r, f in old["files"].items() if r not in roles}
    commit = _git_commit()
    for role in ROLES:
        if roles is not None and role not in roles:
            continue
        src = Path((sources or {}).get(role, runs / role)) / "best.pt"
        ck = load_checkpoint(src)
        state = ck.get("ema_model") or ck["model"]
        dst = out / f"{role}.pt"
        save_checkpoint({"run": ck["run"], "model": slim_state(state)}, dst)
        run_dir = src.parent
        final = {}
        if (run_dir / "final_metrics.json").exists():
            final = json.loads((run_dir / "final_metrics.json").read_text())
        it = int(ck.get("trainer", {}).get("iteration", 0)) if isinstance(ck.get("trainer"), dict) else None
        metrics = validation_at(run_dir / "metrics.csv", it) or final
        timing = {}
        if (run_dir / "train_time.json").exists():
            timing = json.loads((run_dir / "train_time.json").read_text())
        files[role] = {"file": dst.name, "sha256": sha256(dst), "bytes": dst.stat().st_size,
                       "iteration": it,
                       "survey_version": ck["run"].get("survey_version"), "config": ck["run"]["config"],
                       "validation": metrics, "final_validation": final, "training": timing,
                       "commit": commit}
    files = {r: files[r] for r in ROLES if r in files}
    manifest = {**{k: v for k, v in old.items() if k != "files"}, "format": 1, "commit": commit,
                "files": files, **(extra or {})}
    write_text(out / MANIFEST, json.dumps(manifest, indent=1, default=str))
    return manifest


def recalibrate(survey, root: Path = REFERENCE_DIR, roles=None, n: int = 4096, seed: int = 0) -> dict:
    """Re-estimate the BatchNorm statistics of the shipped files' image encoders on ``n`` training images of
    ``survey`` (models.batchnorm: the EMA weights get statistics of their own activations) and rewrite the
    files and their manifest entries (sha256, bytes, ``batchnorm``). Returns the manifest."""
    from models.batchnorm import batchnorm_layers, recalibrate_batchnorm, survey_batches
    from models.checkpoint import load_checkpoint, save_checkpoint
    from models.loading import load_model

    root = Path(root)
    manifest = load_manifest(root)
    for role in roles or ROLES:
        path = Path(reference_path(role, root))
        ck = load_checkpoint(path)
        lm = load_model(path, ck["run"]["kind"], ck["run"].get("stage"), given_as=role)
        if not batchnorm_layers(lm.model):
            continue
        phot = getattr(lm.model, "photometry", None) is not None
        used = recalibrate_batchnorm(lm.model, survey_batches(survey, lm.band_mean, lm.band_std, phot, n=n,
                                                              seed=seed))
        save_checkpoint({"run": ck["run"], "model": slim_state(lm.model.state_dict())}, path)
        manifest["files"][role].update(sha256=sha256(path), bytes=path.stat().st_size, batchnorm={
            "recalibrated": "models.batchnorm.recalibrate_batchnorm", "images": used, "seed": seed,
            "survey": Path(survey).name, "commit": _git_commit()})
        write_text(root / MANIFEST, json.dumps(manifest, indent=1, default=str))   # after every file
    return manifest


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.reference", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export", help="slim trained runs into reference files + manifest")
    e.add_argument("--runs", required=True, help="directory with <role>/best.pt for every role")
    e.add_argument("--out", default=str(REFERENCE_DIR))
    e.add_argument("--info", default=None, help="JSON file merged into the manifest (mock, timings)")
    e.add_argument("--roles", nargs="+", default=None, help="re-export only these roles (default: all)")
    e.add_argument("--source", nargs="+", default=[], metavar="ROLE=DIR",
                   help="a role's run directory where it is not RUNS/<role> (e.g. a fine-tune)")
    c = sub.add_parser("check", help="verify every reference file against the manifest")
    c.add_argument("--dir", default=str(REFERENCE_DIR))
    b = sub.add_parser("recalibrate", help="re-estimate the image encoders' BatchNorm statistics")
    b.add_argument("--survey", required=True, help="the survey the models were trained on (its train split)")
    b.add_argument("--dir", default=str(REFERENCE_DIR))
    b.add_argument("--roles", nargs="+", default=None)
    b.add_argument("--n", type=int, default=4096, help="training images (default 4096)")
    a = p.parse_args(argv)
    try:
        if a.cmd == "export":
            extra = json.loads(Path(a.info).read_text()) if a.info else None
            sources = dict(kv.split("=", 1) for kv in a.source if "=" in kv)
            if len(sources) != len(a.source) or not set(sources) <= set(ROLES):
                raise ReferenceError(f"--source: {a.source}: expected ROLE=DIR with ROLE among "
                                     f"{sorted(ROLES)}")
            m = export(Path(a.runs), Path(a.out), extra, a.roles, sources)
            total = sum(f.get("bytes", 0) for f in m["files"].values())
            print(f"wrote {a.out}/{MANIFEST}: {len(m['files'])} files, {total / 1e6:.1f} MB")
        elif a.cmd == "recalibrate":
            m = recalibrate(a.survey, Path(a.dir), a.roles, a.n)
            for role, f in m["files"].items():
                bn = f.get("batchnorm")
                print(f"{role}: " + (f"BatchNorm from {bn['images']} images" if bn else "no BatchNorm"))
        else:
            for role in ROLES:
                print(f"{role}: {reference_path(role, Path(a.dir))} ok")
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
