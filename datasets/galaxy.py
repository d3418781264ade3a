"""PyTorch datasets of (image, spectrum) pairs over a survey file, with a once-per-file preprocessed cache.

The first use of a survey file streams it once (bounded memory) through the paper's preprocessing and
writes a cache directory ``<file>.cache/<key>/`` of plain ``.npy`` files, opened as memory maps:

- ``images.npy``       (N, 5, 64, 64) float32, standardised with the TRAINING split's per-band mean/std
- ``flux_fullres.npy`` (N, 4500) float32, normalised linear flux (steps 1-4 of datasets.preprocess)
- ``flux_lowres.npy``  (N, 563) float32, every 8th point (contiguous copy for fast low-res reads)
- ``flux_lowres_bin.npy`` (N, 563) float32, the 8 A bins around those points (``data.lowres: bin``; written
  on first use, by ``SurveyCache.lowres``)
- ``ivar_fullres.npy`` (N, 4500) float32, ivar on the 1 Angstrom grid in normalised units
- ``photometry.npy``   (N, F) float32, aperture-photometry features of the ORIGINAL cutouts
  (datasets/photometry.py): the networks' optional ``model.photometry`` conditioning
- ``valid.npy``        (N,) bool, the positive-flux filter
- ``meta.json``        band statistics, split counts, source file identity

The key hashes the source file's identity (size, mtime) and the preprocessing version, so a changed
file or preprocessing rebuilds the cache. Loading an item is a memory-map read (microseconds); a whole
batch is one fancy-indexing read. Augmentation runs on whole batches (see :class:`ImageAugment`).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from datasets.photometry import image_features
from datasets.preprocess import (
    LOWRES_MODES,
    N_FULLRES,
    PREPROCESS_VERSION,
    lowres,
    preprocess_spectra,
    to_model_space,
)
from datasets.schema import BANDS, IMAGE_SIZE, N_BANDS, SPLIT_CODES, SurveyFileError, validate_survey

CACHE_LAYOUT = 2  # 2: photometry.npy added; part of the cache key (bump when the cache's files change)
AUGMENT_SIZE = 71  # resize 64 -> 71, then crop 64 (paper)
CROP_SIZE = IMAGE_SIZE


class DatasetError(ValueError):
    """Bad dataset input; the message names the file, the field and the value."""


def _file_key(path: Path, version: str = "") -> str:
    st = path.stat()
    ident = (f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|prep{PREPROCESS_VERSION}|layout{CACHE_LAYOUT}|"
             f"{version}")
    return hashlib.sha1(ident.encode()).hexdigest()[:16]


def _check_ivar(path, ivar: np.ndarray, start: int) -> None:
    """Negative inverse variances are corrupt data (not masked pixels, which are 0): refuse them."""
    neg = ivar < 0
    if neg.any():
        r = int(np.flatnonzero(neg.any(axis=1))[0])
        raise DatasetError(f"{path}: spectra/ivar: galaxy row {start + r} has negative inverse variance "
                           f"({float(ivar[r][neg[r]][0]):g} in {int(neg[r].sum())} pixels; masked pixels "
                           "must be 0)")


def _check_band_std(path, mean: np.ndarray, std: np.ndarray) -> None:
    """A band with (near) zero spread over the training images (all-zero or constant cutouts) would be
    standardised by ~1e-15 and blow every image up: refuse it."""
    flat = std < 1e-6 * np.maximum(1.0, np.abs(mean))
    if flat.any():
        b = int(np.flatnonzero(flat)[0])
        raise DatasetError(f"{path}: images: band {BANDS[b]!r} of the training split has std "
                           f"{std[b]:.3g} (mean {mean[b]:.3g}): the images are constant (all zero?)")


@dataclass
class SurveyCache:
    """Memory-mapped preprocessed arrays of one survey file (see module docstring)."""
    root: Path
    images: np.ndarray
    flux_fullres: np.ndarray
    flux_lowres: np.ndarray
    ivar_fullres: np.ndarray
    photometry: np.ndarray
    valid: np.ndarray
    split: np.ndarray
    meta: dict

    def lowres(self, mode: str = "subsample") -> np.ndarray:
        """The low-res spectra of ``data.lowres`` mode ("subsample": every 8th point, "bin": 8 A bins)."""
        if mode == "subsample":
            return self.flux_lowres
        if mode not in LOWRES_MODES:
            raise DatasetError(f"data.lowres: {mode!r} is not one of {list(LOWRES_MODES)}")
        f = self.root / f"flux_lowres_{mode}.npy"
        if not f.exists():  # derived once, on first use, atomically
            tmp = f.with_name(f"{f.stem}.{os.getpid()}.partial.npy")
            full = self.flux_fullres
            out = np.lib.format.open_memmap(tmp, "w+", np.float32, self.flux_lowres.shape)
            for s in range(0, full.shape[0], 2048):
                out[s:s + 2048] = lowres(np.asarray(full[s:s + 2048]), mode)
            out.flush()
            del out
            os.replace(tmp, f)
        return np.load(f, mmap_mode="r")

    def indices(self, split: str) -> np.ndarray:
        """Row indices of ``split`` ("train", "val", "test" or "all") that pass the positive-flux filter."""
        if split == "all":
            return np.flatnonzero(self.valid)
        if split not in SPLIT_CODES:
            raise DatasetError(f"split: {split!r} is not one of {list(SPLIT_CODES) + ['all']}")
        return np.flatnonzero((self.split == SPLIT_CODES[split]) & self.valid)


def build_cache(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None, chunk: int = 512,
                progress: bool = False) -> SurveyCache:
    """Return the preprocessed cache of survey ``path``, building it first if missing or stale."""
    path = Path(path)
    try:
        summary = validate_survey(path, check_values=False)
    except SurveyFileError as e:
        raise DatasetError(str(e)) from None
    base = Path(cache_dir) if cache_dir else path.with_name(path.name + ".cache")
    root = base / _file_key(path, summary["survey_version"])
    if not (root / "meta.json").exists():
        if base.exists() and not base.is_dir():
            raise DatasetError(f"{path}: data.cache_dir: {base} is a file, not a directory")
        new_base = not base.exists()
        try:
            _write_cache(path, root, summary, chunk, progress)
        except BaseException as e:  # leave no half-written cache behind, whatever stopped the build
            shutil.rmtree(base if new_base else root.with_name(root.name + ".partial"), ignore_errors=True)
            if not isinstance(e, (OSError, KeyError)):
                raise
            # a chunk that cannot be read (damaged file) or an unwritable cache directory
            raise DatasetError(f"{path}: file: cannot be read into the cache {base} ({type(e).__name__}: "
                               f"{' '.join(str(e).split())[:160]})") from None
    return open_cache(root)


def open_cache(root: Path) -> SurveyCache:
    meta = json.loads((root / "meta.json").read_text())

    def mm(name):
        return np.load(root / f"{name}.npy", mmap_mode="r")
    return SurveyCache(root=root, images=mm("images"), flux_fullres=mm("flux_fullres"),
                       flux_lowres=mm("flux_lowres"), ivar_fullres=mm("ivar_fullres"),
                       photometry=mm("photometry"),
                       valid=np.load(root / "valid.npy"), split=np.load(root / "split.npy"), meta=meta)


def _write_cache(path: Path, root: Path, summary: dict, chunk: int, progress: bool) -> None:
    tmp = root.with_name(root.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    n = summary["n_galaxies"]
    with h5py.File(path, "r") as f:
        split = f["split"][:]
        loglam = f["spectra/loglam"][:]
        # pass 1: per-band statistics of the training split (streamed, float64 accumulators)
        s1 = np.zeros(N_BANDS)
        s2 = np.zeros(N_BANDS)
        count = 0
        train = split == SPLIT_CODES["train"]
        for s in range(0, n, chunk):
            img = f["images"][s:s + chunk].astype(np.float64)
            bad = ~np.isfinite(img).all(axis=(1, 2, 3))
            if bad.any():
                row = s + int(np.flatnonzero(bad)[0])
                raise DatasetError(f"{path}: images: galaxy row {row} has NaN/inf pixels")
            _check_ivar(path, f["spectra/ivar"][s:s + chunk], s)
            img = img[train[s:s + chunk]]
            s1 += img.sum(axis=(0, 2, 3))
            s2 += (img ** 2).sum(axis=(0, 2, 3))
            count += img.shape[0] * img.shape[2] * img.shape[3]
        mean = s1 / count
        std = np.sqrt(np.maximum(s2 / count - mean ** 2, 1e-30))
        _check_band_std(path, mean, std)
        images = np.lib.format.open_memmap(tmp / "images.npy", "w+", np.float32, (n,) + f["images"].shape[1:])
        full = np.lib.format.open_memmap(tmp / "flux_fullres.npy", "w+", np.float32, (n, N_FULLRES))
        ivar_out = np.lib.format.open_memmap(tmp / "ivar_fullres.npy", "w+", np.float32, (n, N_FULLRES))
        phot = None
        valid = np.zeros(n, dtype=bool)
        rng = range(0, n, chunk)
        if progress:
            from tqdm import tqdm
            rng = tqdm(rng, desc=f"preprocessing {path.name}", unit="chunk")
        for s in rng:
            raw = f["images"][s:s + chunk]
            images[s:s + chunk] = ((raw - mean[None, :, None, None])
                                   / std[None, :, None, None]).astype(np.float32)
            feats = image_features(raw)
            if phot is None:
                phot = np.lib.format.open_memmap(tmp / "photometry.npy", "w+", np.float32,
                                                 (n, feats.shape[1]))
            phot[s:s + chunk] = feats
            out = preprocess_spectra(loglam, f["spectra/flux"][s:s + chunk], f["spectra/ivar"][s:s + chunk])
            full[s:s + chunk] = out["flux"]
            ivar_out[s:s + chunk] = out["ivar"]
            valid[s:s + chunk] = out["valid"]
        np.save(tmp / "flux_lowres.npy", np.ascontiguousarray(lowres(full)))
        for arr in (images, full, ivar_out, phot):
            arr.flush()
        del images, full, ivar_out, phot
    np.save(tmp / "valid.npy", valid)
    np.save(tmp / "split.npy", split)
    counts = {k: int(((split == v) & valid).sum()) for k, v in SPLIT_CODES.items()}
    meta = {"source": str(path.resolve()), "n_galaxies": n, "band_mean": mean.tolist(),
            "band_std": std.tolist(), "n_dropped_nonpositive": int((~valid).sum()),
            "split_counts_valid": counts, "preprocess_version": PREPROCESS_VERSION,
            "survey_version": summary["survey_version"]}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    if root.exists():
        shutil.rmtree(root)
    os.replace(tmp, root)


class GalaxyDataset(torch.utils.data.Dataset):
    """(image, spectrum) pairs of one split; ``ds[i]`` for one item, ``ds[array]`` for a whole batch.

    Parameters
    ----------
    path : survey HDF5 file (datasets/schema.py).
    split : "train", "val", "test" or "all".
    resolution : "lowres" (563 points) or "fullres" (4500 points): the ``spectrum`` returned.
    preprocessing : "log" (paper) or "none" (normalised linear flux).
    with_lowres : also return ``lowres`` (563 points) — the super-resolution stage's conditioning.
    lowres_mode : how the low-res spectra (``resolution="lowres"`` and ``lowres``) are made from the full
        resolution ones: "subsample" (every 8th point, the paper) or "bin" (``datasets.preprocess.lowres``).
    with_ivar : also return ``ivar`` on the full-resolution 1 Angstrom grid (normalised units).
    with_photometry : also return ``photometry`` (F,), the cutout's aperture-photometry features.

    Items are dicts of tensors: ``image`` (5, 64, 64) standardised, ``spectrum`` (L,), ``index`` (row in
    the survey file). Images are NOT augmented here: augmentation runs per batch (:class:`ImageAugment`).
    """

    def __init__(self, path, split="train", resolution="lowres", preprocessing="log", with_lowres=False,
                 with_ivar=False, cache_dir=None, cache: SurveyCache | None = None, with_photometry=False,
                 lowres_mode: str = "subsample"):
        if resolution not in ("lowres", "fullres"):
            raise DatasetError(f"resolution: {resolution!r} is not 'lowres' or 'fullres'")
        self.path = str(path)
        self.cache = cache or build_cache(path, cache_dir)
        self.rows = self.cache.indices(split)
        if self.rows.size == 0:
            raise DatasetError(f"{path}: split: {split!r} is empty (after dropping spectra with "
                               "non-positive flux)")
        self.split, self.resolution, self.preprocessing = split, resolution, preprocessing
        self.with_lowres, self.with_ivar = with_lowres, with_ivar
        self.with_photometry = with_photometry
        self.flux_lowres = self.cache.lowres(lowres_mode)
        to_model_space(np.ones(1), preprocessing)  # validates the name

    def __len__(self):
        return int(self.rows.size)

    def __getitem__(self, i):
        batched = not np.isscalar(i)
        idx = np.asarray(i, dtype=np.int64)
        rows = self.rows[idx]
        if batched:  # sorted reads are faster on memory maps; restore the requested order after
            order = np.argsort(rows, kind="stable")
            inv = np.empty_like(order)
            inv[order] = np.arange(order.size)
            rows_sorted = rows[order]
        else:
            rows_sorted, inv = rows, None

        def take(arr):
            x = arr[rows_sorted]
            return x[inv] if batched else np.array(x)  # a scalar row of a memmap is a read-only view
        c = self.cache
        spec = take(self.flux_lowres if self.resolution == "lowres" else c.flux_fullres)
        item = {"image": torch.from_numpy(np.ascontiguousarray(take(c.images))),
                "spectrum": torch.from_numpy(to_model_space(spec, self.preprocessing).astype(np.float32)),
                "index": torch.as_tensor(rows)}
        if self.with_lowres:
            item["lowres"] = torch.from_numpy(to_model_space(take(self.flux_lowres),
                                                             self.preprocessing).astype(np.float32))
        if self.with_ivar:
            item["ivar"] = torch.from_numpy(np.ascontiguousarray(take(c.ivar_fullres)))
        if self.with_photometry:
            item["photometry"] = torch.from_numpy(np.ascontiguousarray(take(c.photometry)))
        return item


class EpochBatchSampler(torch.utils.data.Sampler):
    """Deterministic, resumable batches: epoch ``e`` is a permutation seeded by (seed, e).

    A GLOBAL batch of ``batch_size`` is split across ``world_size`` ranks (rank r takes its contiguous
    share). ``set_epoch`` and ``skip`` let a resumed run continue with exactly the same data order.
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0, shuffle: bool = True, drop_last: bool = True,
                 rank: int = 0, world_size: int = 1):
        if batch_size % world_size:
            raise DatasetError(f"train.batch_size: {batch_size} is not divisible by world size {world_size}")
        if drop_last and n < batch_size:
            raise DatasetError(f"train.batch_size: {batch_size} is larger than the split ({n} galaxies)")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.shuffle, self.drop_last = shuffle, drop_last
        self.rank, self.world_size = rank, world_size
        self.epoch, self._skip = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip(self, n_batches: int) -> None:
        """Skip the first ``n_batches`` of the next pass (resume mid-epoch)."""
        self._skip = n_batches

    def __len__(self):
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def __iter__(self):
        order = (np.random.default_rng([self.seed, self.epoch]).permutation(self.n) if self.shuffle
                 else np.arange(self.n))
        per_rank = self.batch_size // self.world_size
        skip, self._skip = self._skip, 0
        for b in range(skip, len(self)):
            batch = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield batch[self.rank * per_rank:(self.rank + 1) * per_rank]


def make_loader(dataset: GalaxyDataset, sampler: EpochBatchSampler, num_workers: int = 0):
    """A DataLoader that fetches whole batches with one memory-map read per array."""
    return torch.utils.data.DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=num_workers,
                                       persistent_workers=num_workers > 0)


class ImageAugment(torch.nn.Module):
    """The paper's image augmentation on a whole batch.

    Training: bilinear (antialiased) resize 64 -> 71, a random 64x64 crop per image, random horizontal
    and vertical flips. Evaluation: resize 64 -> 71 and the centre 64x64 crop. Randomness comes from an
    explicit generator so a resumed run repeats it exactly.
    """

    def forward(self, images: torch.Tensor, train: bool, generator: torch.Generator | None = None):
        b = images.shape[0]
        x = F.interpolate(images, size=(AUGMENT_SIZE, AUGMENT_SIZE), mode="bilinear", align_corners=False,
                          antialias=True)
        margin = AUGMENT_SIZE - CROP_SIZE
        if not train:
            o = margin // 2
            return x[:, :, o:o + CROP_SIZE, o:o + CROP_SIZE]
        r = torch.randint(0, margin + 1, (b, 2), generator=generator)
        flips = torch.rand(b, 2, generator=generator) < 0.5
        # gather crops with one indexing op: per-image row/column index grids
        ar = torch.arange(CROP_SIZE)
        rows = (r[:, 0:1] + ar)  # (b, 64)
        cols = (r[:, 1:2] + ar)
        rows = torch.where(flips[:, 0:1], rows.flip(1), rows)
        cols = torch.where(flips[:, 1:2], cols.flip(1), cols)
        bi = torch.arange(b)[:, None, None]
        out = x.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]]  # (b, 64, 64, C)
        return out.permute(0, 3, 1, 2).contiguous()
