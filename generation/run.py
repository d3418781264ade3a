"""Catalogue-scale generation: streaming input, resumable chunks, process sharding, FITS output.

The input (a survey file of the project's schema, or any HDF5 with an ``images`` dataset (N, 5, 64, 64)
in nanomaggies and optionally ``catalog/id``, ``ra``, ``dec``, ``z``) is read in chunks of
``generate.chunk_galaxies`` (fewer with several processes: ``chunk_size``). Each finished chunk is
written atomically to ``<output>.parts/`` and skipped when a killed run is restarted; ranks of a
distributed run take chunks round-robin; when every chunk exists, rank 0 merges them into the final FITS
file (one row per galaxy, each galaxy exactly once) and removes the parts. Parts are resumed only if
``parts/manifest.json`` matches this run: the checkpoints' sha256, the input and its catalogue
fingerprint, the settings (otherwise a one-line error, or with ``--overwrite`` the parts are discarded).
A galaxy whose image has NaN/inf pixels or a constant band is flagged (``status`` column, with the
reason) and gets no spectrum, while the rest complete.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import h5py
import ignite.distributed as idist
import numpy as np
import torch
from tqdm import tqdm

from datasets.preprocess import FULLRES_WAVE, LOWRES_WAVE, N_FULLRES, N_LOWRES, preprocess_spectra
from datasets.schema import IMAGE_SIZE, N_BANDS, SPLIT_CODES, catalog_fingerprint
from generation.chain import GenerationChain, GenerationError, chain_roles, load_chain
from models.precision import use_bf16
from utils.config import to_dict
from utils.files import atomic_path

STATUS_OK = "ok"


class ImageSource:
    """Lazy reader of the galaxies to generate for (validates shape and selection before any work)."""

    def __init__(self, path, split: str = "test", limit: int | None = None):
        self.path = str(path)
        if not Path(path).is_file():
            raise GenerationError(f"{path}: file: does not exist" if not Path(path).exists() else
                                  f"{path}: file: is a directory, not an HDF5 file")
        try:
            f = h5py.File(path, "r")
        except OSError as e:
            raise GenerationError(f"{path}: file: not a readable HDF5 file: {' '.join(str(e).split())}"
                                  ) from None
        reading = {"field": "file"}
        try:
            with f:
                self._open(f, path, split, limit, reading)
        except GenerationError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, OSError, RuntimeError) as e:
            # a damaged file (unreadable chunk, a group where a dataset belongs, ...): one line, no traceback
            raise GenerationError(f"{path}: {reading['field']}: unreadable or malformed ({type(e).__name__}: "
                                  f"{' '.join(str(e).split())[:160]})") from None

    def _open(self, f, path, split, limit, reading):
        reading["field"] = "images"
        if "images" not in f:
            raise GenerationError(f"{path}: images: missing")
        if not isinstance(f["images"], h5py.Dataset) or f["images"].dtype.kind not in "fiu":
            raise GenerationError(f"{path}: images: {f['images']!r} is not a numeric dataset")
        shape = f["images"].shape
        if len(shape) != 4 or shape[1:] != (N_BANDS, IMAGE_SIZE, IMAGE_SIZE):
            raise GenerationError(f"{path}: images: shape {shape}, expected (N, {N_BANDS}, {IMAGE_SIZE}, "
                                  f"{IMAGE_SIZE}) (u,g,r,i,z cutouts of 64x64 px)")
        n = shape[0]
        if split == "all":
            rows = np.arange(n)
        else:
            if "split" not in f:
                raise GenerationError(f"{path}: split: missing, so generate.split={split!r} cannot be "
                                      "selected (use split: all)")
            if split not in SPLIT_CODES:
                raise GenerationError(f"generate.split: {split!r} is not one of "
                                      f"{list(SPLIT_CODES) + ['all']}")
            reading["field"] = "split"
            sp = f["split"][:]
            if sp.shape != (n,):
                raise GenerationError(f"{path}: split: shape {sp.shape}, expected ({n},)")
            rows = np.flatnonzero(sp == SPLIT_CODES[split])
        if limit is not None:
            rows = rows[:limit]
        if rows.size == 0:
            raise GenerationError(f"{path}: split: no galaxies selected (split={split!r})")
        cat = f["catalog"] if "catalog" in f else {}
        for c in ("id", "ra", "dec", "z"):
            reading["field"] = f"catalog/{c}"
            if c in cat and cat[c].shape != (n,):
                raise GenerationError(f"{path}: catalog/{c}: shape {cat[c].shape}, expected ({n},)")
        self.ids = cat["id"][:][rows] if "id" in cat else rows.astype(np.int64)
        self.columns = {c: cat[c][:][rows] for c in ("ra", "dec", "z") if c in cat}
        self.has_spectra = "spectra/flux" in f and "spectra/loglam" in f
        reading["field"] = "spectra/loglam"
        self.loglam = f["spectra/loglam"][:] if self.has_spectra else None
        if self.has_spectra:
            self._check_spectra(f, path, n, reading)
        self.fingerprint = catalog_fingerprint(self.ids, self.columns.get("ra", np.zeros(rows.size)),
                                               self.columns.get("dec", np.zeros(rows.size)))
        self.rows = rows

    def _check_spectra(self, f, path, n, reading):
        """Observed spectra go into the results beside the predictions: refuse corrupt ones up front."""
        for key in ("spectra/flux", "spectra/ivar"):
            reading["field"] = key
            if key not in f or f[key].shape != (n, self.loglam.size):
                raise GenerationError(f"{path}: {key}: shape {f[key].shape if key in f else None}, expected "
                                      f"({n}, {self.loglam.size}) (spectra/loglam has {self.loglam.size})")
        reading["field"] = "spectra/loglam"
        try:
            preprocess_spectra(self.loglam, np.ones((1, self.loglam.size)))
        except ValueError as e:
            raise GenerationError(f"{path}: {e}") from None
        reading["field"] = "spectra/ivar"
        for s in range(0, n, 1024):
            iv = f["spectra/ivar"][s:s + 1024]
            if (iv < 0).any():
                r = s + int(np.flatnonzero((iv < 0).any(axis=1))[0])
                raise GenerationError(f"{path}: spectra/ivar: galaxy row {r} has negative inverse variance "
                                      "(masked pixels must be 0)")

    def __len__(self):
        return int(self.rows.size)

    def read(self, sel: slice) -> dict:
        """Images (and observed spectra where present) of the selected galaxies, in file order."""
        rows = self.rows[sel]
        with h5py.File(self.path, "r") as f:
            out = {"images": f["images"][np.sort(rows)]}
            if self.has_spectra:
                out["flux"] = f["spectra/flux"][np.sort(rows)]
                out["ivar"] = f["spectra/ivar"][np.sort(rows)]
        order = np.argsort(np.argsort(rows))  # rows may be unsorted (a custom selection): restore order
        return {k: v[order] for k, v in out.items()}


def _part_path(parts: Path, c: int) -> Path:
    return parts / f"part_{c:06d}.npz"


def _save_part(path: Path, arrays: dict) -> None:
    with atomic_path(path, keep_suffix=True) as tmp:
        np.savez(tmp, **arrays)


def process_chunk(chain: GenerationChain, src: ImageSource, sel: slice, batch: int) -> dict:
    """Run the chain over one chunk; bad galaxies are flagged, not fatal."""
    data = src.read(sel)
    ids = src.ids[sel]
    images = data["images"]
    n = len(ids)
    finite = np.isfinite(images).all(axis=(1, 2, 3))
    with np.errstate(invalid="ignore"):
        flat = finite & (np.nanstd(images, axis=(2, 3)) <= 1e-6 * np.maximum(
            1.0, np.abs(np.nanmean(images, axis=(2, 3))))).any(axis=1)
    status = np.where(finite, STATUS_OK, "image has NaN/inf pixels").astype("U40")
    status[flat] = "image band is constant (no signal)"
    finite &= ~flat  # neither kind gets a spectrum: a constant band carries no information
    g = chain.g
    out = {"lowres_candidates": np.full((n, g.n_lowres, N_LOWRES), np.nan, np.float32),
           "lowres_scores": np.full((n, g.n_lowres), np.nan, np.float32),
           "kept": np.full((n, g.keep_lowres), -1, np.int16),
           "fullres_candidates": np.full((n, g.n_fullres, N_FULLRES), np.nan, np.float32),
           "fullres_parent": np.full((n, g.n_fullres), -1, np.int16),
           "fullres_scores": np.full((n, g.n_fullres), np.nan, np.float32),
           "top": np.full(n, -1, np.int16), "flux_pred": np.full((n, N_FULLRES), np.nan, np.float32)}
    if chain.z_prior or g.prediction == "consensus":
        out["lowres_z"] = np.full((n, g.n_lowres), np.nan)
    if chain.z_prior:
        out["z_prior"] = np.full(n, np.nan)
    if g.prediction == "consensus":
        out["z_consensus"] = np.full(n, np.nan)
    if chain.z_prior or g.prediction != "top":
        out["fullres_z"] = np.full((n, g.n_fullres), np.nan)
    good = np.flatnonzero(finite)
    for s in range(0, good.size, batch):
        idx = good[s:s + batch]
        res = chain.run(torch.from_numpy(images[idx]), ids[idx])
        for k, v in res.items():
            out[k][idx] = v
    out["status"] = status
    out["id"] = ids
    if src.has_spectra:
        pre = preprocess_spectra(src.loglam, data["flux"], data["ivar"])
        out["flux_obs"] = np.where(pre["valid"][:, None], pre["flux"], np.nan).astype(np.float32)
        out["ivar_obs"] = np.where(pre["valid"][:, None], pre["ivar"], 0).astype(np.float32)
    return out


def sha256_file(path, block: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes (what a checkpoint IS, whatever its path)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for b in iter(lambda: fh.read(block), b""):
            h.update(b)
    return h.hexdigest()


def checkpoint_fingerprints(checkpoints: dict) -> dict:
    """role -> sha256 of each checkpoint file (missing files are left to load_chain's message)."""
    return {r: sha256_file(p) for r, p in sorted(checkpoints.items()) if Path(p).is_file()}


def _manifest_difference(old: dict, new: dict, key: str = ""):
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new)):
            d = _manifest_difference(old.get(k), new.get(k), f"{key}.{k}" if key else k)
            if d:
                return d
        return None
    return None if old == new else (key, old, new)


def check_resumable(parts: Path, manifest: dict, overwrite: bool) -> bool:
    """True if ``parts`` holds chunks of this very run (same checkpoints by content, same input and
    settings). Parts of another run are refused with one line naming both sides, unless ``overwrite``
    (then the caller discards them)."""
    mpath = parts / "manifest.json"
    if not mpath.exists():
        return True
    try:
        old = json.loads(mpath.read_text())
    except (OSError, ValueError):
        old = {}
    new = json.loads(json.dumps(manifest))
    diff = _manifest_difference(old, new)
    if diff is None:
        return True
    if overwrite:
        return False
    key, a, b = diff
    if key.startswith("checkpoint_sha256."):
        role = key.split(".", 1)[1]
        raise GenerationError(f"{parts}: checkpoints.{role}: the parts were made by a checkpoint with sha256 "
                              f"{str(a)[:16]}, but {manifest['generate']['checkpoints'][role]} has sha256 "
                              f"{str(b)[:16]}; refusing to mix models (pass --overwrite to discard them)")
    raise GenerationError(f"{parts}: {key}: the parts were made with {a!r}, this run has {b!r}; refusing to "
                          "mix runs (pass --overwrite to discard the parts)")


def chunk_size(n_galaxies: int, chunk_galaxies: int, world: int) -> int:
    """Galaxies per chunk: ``generate.chunk_galaxies``, capped with several processes at two chunks' worth
    per process (chunks are dealt round-robin), so that a run smaller than ``world x chunk_galaxies`` still
    keeps every process busy with about the same number of galaxies (64 galaxies and chunks of 25 on 2
    processes: 4 chunks of 16, not 39 galaxies for rank 0 and 25 for rank 1)."""
    if world <= 1:
        return chunk_galaxies
    return max(1, min(chunk_galaxies, -(-n_galaxies // (2 * world))))


def generate(gen_cfg, cfg_dict: dict, input_path, device=None, amp: str = "auto", progress: bool = True,
             stop_after_chunks: int | None = None, overwrite: bool = False) -> Path | None:
    """Run the chain over ``input_path`` and write ``gen_cfg.output``; returns its path (rank 0).

    Finished chunks in ``<output>.parts/`` are resumed only if they were made by the same checkpoints
    (sha256 of the files), input and settings; otherwise the run stops with a one-line error unless
    ``overwrite``. The results header records the checkpoints' sha256 and the input's catalogue
    fingerprint (evaluate.py checks it against the survey).
    """
    rank, world = idist.get_rank(), idist.get_world_size()
    device = device or idist.device()
    src = ImageSource(input_path, gen_cfg.split, gen_cfg.limit)   # bad input fails here, before any work
    output = Path(gen_cfg.output)
    parts = output.with_name(output.name + ".parts")
    chunk = chunk_size(len(src), gen_cfg.chunk_galaxies, world)
    n_chunks = -(-len(src) // chunk)
    sha = checkpoint_fingerprints({r: gen_cfg.checkpoints[r] for r in chain_roles(gen_cfg)})
    manifest = {"input": str(Path(input_path).resolve()), "input_catalog_sha256": src.fingerprint,
                "n_galaxies": len(src), "chunk_galaxies": chunk,
                "checkpoint_sha256": sha, "generate": to_dict(gen_cfg),
                "precision": "bf16" if use_bf16(amp, device) else "float32"}  # parts of both never mix
    resumable = check_resumable(parts, manifest, overwrite)   # before loading models: a quick refusal
    chain = load_chain(gen_cfg, device, amp)
    if rank == 0:
        if not resumable:
            shutil.rmtree(parts)   # --overwrite: parts of a different run are discarded, never mixed
        parts.mkdir(parents=True, exist_ok=True)
        mpath = parts / "manifest.json"
        mpath.write_text(json.dumps(manifest, indent=1))
    idist.barrier()
    mine = [c for c in range(n_chunks) if c % world == rank and not _part_path(parts, c).exists()]
    todo = sum(min(chunk, len(src) - c * chunk) for c in mine)
    # one process counts the whole run (resumed chunks as done); with several, each counts its own share
    bar = tqdm(total=len(src) if world == 1 else todo, initial=len(src) - todo if world == 1 else 0,
               desc=f"generating (rank {rank})", unit="gal", disable=not progress)
    t0 = time.perf_counter()
    done = 0
    for i, c in enumerate(mine):
        if stop_after_chunks is not None and i >= stop_after_chunks:
            return None
        sel = slice(c * chunk, (c + 1) * chunk)
        _save_part(_part_path(parts, c), process_chunk(chain, src, sel, gen_cfg.batch_galaxies))
        n_sel = len(src.ids[sel])
        done += n_sel
        bar.update(n_sel)
        bar.set_postfix(gal_per_s=f"{done / (time.perf_counter() - t0):.3g}")
    bar.close()
    idist.barrier()
    if rank != 0:
        return None
    merged = _merge(parts, n_chunks)
    table = {"id": merged.pop("id"), "status": merged.pop("status"),
             "row": src.rows.astype(np.int64), **{k: v for k, v in src.columns.items()}}
    scores = merged["fullres_scores"]
    top = np.maximum(merged["top"], 0)[:, None].astype(int)
    table["score_top"] = np.take_along_axis(scores, top, 1)[:, 0]
    table["top"] = merged.pop("top")
    for k in ("lowres_scores", "kept", "fullres_scores", "fullres_parent",
              "z_prior", "lowres_z", "fullres_z", "z_consensus"):   # with z_prior / prediction options
        if k in merged:
            table[k] = merged.pop(k)
    spectra = {"flux_pred": merged.pop("flux_pred"),
               "flux_pred_std": candidate_std(merged["fullres_candidates"])}
    for k in ("flux_obs", "ivar_obs"):
        if k in merged:
            spectra[k] = merged.pop(k)
    header = {"checkpoints": {r: gen_cfg.checkpoints[r] for r in chain_roles(gen_cfg)},
              "z_prior": gen_cfg.z_prior or "none", "sampler": gen_cfg.sampler, "steps": gen_cfg.steps,
              "alpha_bar_min": gen_cfg.stage_sampler("sr")["alpha_bar_min"], "start": gen_cfg.start,
              "eta": gen_cfg.eta, "guidance": gen_cfg.stage_sampler("sr")["guidance"],
              "lowres_sampling": gen_cfg.stage_sampler("lr"), "prediction": gen_cfg.prediction,
              "prediction_width": gen_cfg.prediction_width, "precision": manifest["precision"], "amp": amp,
              "seed": gen_cfg.seed, "n_lowres": gen_cfg.n_lowres, "keep_lowres": gen_cfg.keep_lowres,
              "keep_policy": gen_cfg.keep_policy,
              "n_fullres": gen_cfg.n_fullres, "input": str(input_path), "split": gen_cfg.split,
              "checkpoint_sha256": sha, "input_catalog_sha256": src.fingerprint,
              "preprocessing": chain.preprocessing, "lowres": chain.lowres_mode,
              "flux": "normalised linear flux (mean 1 in 6900-6950 A, observed frame, 2 A Gaussian "
                      "smoothing)",
              "config": cfg_dict}
    from utils.results_fits import write_spectra_fits
    cubes = {"LOWRES_CANDIDATES": (merged.pop("lowres_candidates"), LOWRES_WAVE),
             "FULLRES_CANDIDATES": (merged.pop("fullres_candidates"), FULLRES_WAVE)}
    write_spectra_fits(output, table, spectra, FULLRES_WAVE, header=header, units={"flux_pred": "",
                       "flux_pred_std": "", "flux_obs": "", "ivar_obs": ""}, cubes=cubes)
    shutil.rmtree(parts)
    return output


def candidate_std(candidates: np.ndarray) -> np.ndarray:
    """Per-pixel standard deviation over the M full-res candidates of each galaxy: the uncertainty of
    ``flux_pred`` (results column ``flux_pred_std``).

    ``candidates`` (N, M, L) -> (N, L) float32, ddof = 1 (the unbiased sample variance) when M > 1; all NaN
    when M == 1 (one draw says nothing about the spread). Computed in float64; NaN candidates (failed
    galaxies) give NaN."""
    c = np.asarray(candidates, dtype=np.float64)
    if c.shape[1] < 2:
        return np.full((c.shape[0], c.shape[2]), np.nan, np.float32)
    return c.std(axis=1, ddof=1).astype(np.float32)


def _merge(parts: Path, n_chunks: int) -> dict:
    missing = [c for c in range(n_chunks) if not _part_path(parts, c).exists()]
    if missing:
        raise GenerationError(f"{parts}: chunks {missing[:5]} missing after all ranks finished")
    chunks = [dict(np.load(_part_path(parts, c))) for c in range(n_chunks)]
    return {k: np.concatenate([ch[k] for ch in chunks]) for k in chunks[0]}
