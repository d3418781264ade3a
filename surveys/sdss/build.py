"""Catalogue + downloaded SDSS files -> the project's HDF5 survey (``datasets.schema``, version 1).

Two passes with bounded memory (nothing of size N x spectrum is ever held in RAM):

1. every catalogue galaxy is processed in field-sorted order (frames are cached per field) and written to a
   per-row scratch HDF5 next to the output, with a keep/drop flag and a reason for every drop (missing or
   broken spec-lite file, spectrum redshift or position disagreeing with the catalogue, cutout off the frame
   edge, missing frame, not in the Pasquet cube, ...);
2. the kept rows are copied in chunks into :func:`datasets.schema.create_survey` (atomic; validated before
   the rename), with the catalogue columns, the MPA-JHU truth (NaN where missing) and
   :func:`datasets.schema.assign_split`.

Drops go to ``<output stem>_dropped.csv`` (specObjID, reason). Images come either from the calibrated
frames (:mod:`surveys.sdss.cutouts`) or from the Pasquet et al. (2019) cube (:func:`import_pasquet_cube`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import struct
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
from astropy.io import fits
from astropy.wcs import FITSFixedWarning
from tqdm import tqdm

from datasets.schema import (
    IMAGE_SIZE,
    N_BANDS,
    N_LOGLAM,
    SPECTRUM_CHUNK,
    assign_split,
    create_survey,
    write_column,
)
from datasets.sdss_spec import SpecFileError, read_spec, to_schema_grid
from surveys.sdss.catalog import COLUMNS, Z_MAX, Z_MIN, read_catalog_csv
from surveys.sdss.cutouts import CutoutError, FrameCache, make_cutout
from surveys.sdss.download import spec_lite_relpath
from utils.files import write_csv


class BuildError(ValueError):
    """A build that cannot produce a usable survey; the message names the file and the field."""


def _spec_and_model(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    spec = read_spec(path)
    flux, ivar = to_schema_grid(spec)
    with fits.open(path, memmap=False) as hdul:
        cols = {c.lower(): c for c in hdul[1].columns.names}
        model = np.asarray(hdul[1].data[cols["model"]], dtype=np.float64) if "model" in cols else None
    if model is None:
        mflux = np.zeros(N_LOGLAM, dtype=np.float32)
    else:
        mflux, _ = to_schema_grid(dataclasses.replace(spec, flux=np.where(np.isfinite(model), model, 0.0)))
    return flux, ivar, mflux, spec.meta


def _angsep_arcsec(ra1, dec1, ra2, dec2) -> float:
    r1, d1, r2, d2 = map(np.radians, (ra1, dec1, ra2, dec2))
    c = np.sin(d1) * np.sin(d2) + np.cos(d1) * np.cos(d2) * np.cos(r1 - r2)
    return float(np.degrees(np.arccos(np.clip(c, -1, 1))) * 3600.0)


def open_pasquet_cube(npz_path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Open the Pasquet et al. (2019) cube: ``cube`` (N, 64, 64, 5) and the ``labels`` record array.

    If ``cube`` is stored uncompressed in the npz (``np.savez``), it is memory-mapped (the real cube is
    ~50 GB); a compressed member (``np.savez_compressed``) is loaded into memory.
    """
    npz_path = str(npz_path)
    try:
        zf = zipfile.ZipFile(npz_path)
    except (OSError, zipfile.BadZipFile) as e:
        raise BuildError(f"{npz_path}: file: not a readable npz: {e}") from None
    with zf:
        names = zf.namelist()
        for need in ("cube.npy", "labels.npy"):
            if need not in names:
                raise BuildError(f"{npz_path}: {need[:-4]}: missing (have {[n[:-4] for n in names]})")
        info = zf.getinfo("cube.npy")
    cube = None
    if info.compress_type == zipfile.ZIP_STORED:
        with open(npz_path, "rb") as fh:
            fh.seek(info.header_offset)
            local = fh.read(30)
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            fh.seek(info.header_offset + 30 + name_len + extra_len)
            version = np.lib.format.read_magic(fh)
            reader = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = reader(fh)
            offset = fh.tell()
        cube = np.memmap(
            npz_path, dtype=dtype, mode="r", shape=shape, offset=offset, order="F" if fortran else "C"
        )
    with np.load(npz_path, allow_pickle=False) as z:
        if cube is None:
            cube = z["cube"]
        labels = z["labels"]
    if cube.ndim != 4 or cube.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, N_BANDS):
        raise BuildError(f"{npz_path}: cube: shape {cube.shape}, expected (N, 64, 64, 5)")
    if labels.dtype.names is None or len(labels) != len(cube):
        raise BuildError(
            f"{npz_path}: labels: expected a record array of {len(cube)} rows, got "
            f"{labels.dtype} x {len(labels)}"
        )
    return cube, labels


def _label_field(labels: np.ndarray, name: str, path) -> np.ndarray:
    for f in labels.dtype.names:
        if f.lower() == name.lower():
            return labels[f]
    raise BuildError(f"{path}: labels/{name}: missing field (have {labels.dtype.names})")


def _as_uint64(values) -> np.ndarray:
    v = np.asarray(values)
    if v.dtype.kind in "SUO":
        return np.array([int(x.decode() if isinstance(x, bytes) else x) for x in v], dtype=np.uint64)
    return v.astype(np.uint64)


@dataclasses.dataclass(frozen=True)
class _PasquetCube:
    """The opened Pasquet et al. (2019) cube with its labels' specObjID and z, indexed by specObjID."""

    cube: np.ndarray
    ids: np.ndarray
    z: np.ndarray
    index: dict[int, int]


def _open_pasquet_index(npz_path: str | os.PathLike) -> _PasquetCube:
    """Open the cube (:func:`open_pasquet_cube`) and index its rows by ``labels['specObjID']``."""
    cube, labels = open_pasquet_cube(npz_path)
    ids = _as_uint64(_label_field(labels, "specObjID", npz_path))
    cube_z = np.asarray(_label_field(labels, "z", npz_path), dtype=np.float64)
    return _PasquetCube(cube, ids, cube_z, {int(s): j for j, s in enumerate(ids)})


def _read_galaxy(
    i: int,
    cat: dict,
    data_dir: Path,
    release: str,
    frames: FrameCache,
    pasquet: _PasquetCube | None,
    orientation: str,
    max_dz: float,
    max_sep_arcsec: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int | None] | str:
    """Catalogue row ``i``'s (image, flux, ivar, model, cube row or None), or the reason it is dropped.

    The image is a frame cutout when ``pasquet`` is None, else the row's image in the Pasquet cube.
    """
    sid = int(cat["specObjID"][i])
    rel = spec_lite_relpath(cat["plate"][i], cat["mjd"][i], cat["fiberID"][i], cat["run2d"][i], release)
    p = data_dir / rel
    if not p.exists():
        return f"spec-lite not downloaded: {rel}"
    try:
        flux, ivar, model, meta = _spec_and_model(p)
    except (SpecFileError, OSError, KeyError) as e:
        return f"spec-lite unreadable: {e}"
    if "Z" in meta and abs(float(meta["Z"]) - float(cat["z"][i])) > max_dz:
        return f"spec-lite Z={float(meta['Z']):.5f} != catalogue z={float(cat['z'][i]):.5f}"
    if "PLUG_RA" in meta and "PLUG_DEC" in meta:
        sep = _angsep_arcsec(meta["PLUG_RA"], meta["PLUG_DEC"], cat["ra"][i], cat["dec"][i])
        if sep > max_sep_arcsec:
            return f"fibre position {sep:.1f} arcsec from catalogue ra/dec"
    if not (ivar > 0).any() or not (flux > 0).any():
        return "spectrum has no good pixels on the schema grid"
    if pasquet is None:
        try:
            fr = frames.field(cat["run"][i], cat["camcol"][i], cat["field"][i], cat["rerun"][i])
            img = make_cutout(fr, float(cat["ra"][i]), float(cat["dec"][i]), orientation=orientation)
        except CutoutError as e:
            return f"cutout: {e}"
        return img, flux, ivar, model, None
    j = pasquet.index.get(sid)
    if j is None:
        return "not in the Pasquet cube"
    if abs(pasquet.z[j] - float(cat["z"][i])) > max_dz:
        return f"Pasquet cube z={pasquet.z[j]:.5f} != catalogue z={float(cat['z'][i]):.5f}"
    img = np.ascontiguousarray(np.asarray(pasquet.cube[j], dtype=np.float32).transpose(2, 0, 1))
    if not np.isfinite(img).all():
        return "Pasquet cube image has non-finite pixels"
    return img, flux, ivar, model, j


def _fill_scratch(
    scratch_path: Path,
    n_cat: int,
    order: np.ndarray,
    read_row: Callable[[int], tuple | str],
    progress: bool,
) -> tuple[dict[int, str], set[int]]:
    """Pass 1: write every kept row (``read_row(i)``, in ``order``) to the per-row scratch HDF5.

    Returns the drop reasons (catalogue row -> reason) and the Pasquet cube rows used.
    """
    reasons: dict[int, str] = {}
    used_cube_rows: set[int] = set()
    with h5py.File(scratch_path, "w") as s:
        s_img = s.create_dataset(
            "images",
            (n_cat, N_BANDS, IMAGE_SIZE, IMAGE_SIZE),
            "f4",
            chunks=(1, N_BANDS, IMAGE_SIZE, IMAGE_SIZE),
        )
        s_spec = {
            k: s.create_dataset(k, (n_cat, N_LOGLAM), "f4", chunks=(1, N_LOGLAM))
            for k in ("flux", "ivar", "model")
        }
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            for i in tqdm(order, desc="build", unit="gal", disable=not progress):
                i = int(i)
                row = read_row(i)
                if isinstance(row, str):
                    reasons[i] = row
                    continue
                img, flux, ivar, model, j = row
                if j is not None:
                    used_cube_rows.add(j)
                s_img[i] = img
                s_spec["flux"][i] = flux
                s_spec["ivar"][i] = ivar
                s_spec["model"][i] = model
    return reasons, used_cube_rows


def _copy_kept_rows(
    scratch_path: Path,
    out_path: Path,
    cat: dict,
    kept: np.ndarray,
    split: np.ndarray,
    attrs: dict,
    release: str,
    compression: str | None,
    chunk: int,
) -> None:
    """Pass 2: copy the ``kept`` scratch rows in chunks into the survey, with the catalogue columns."""
    n = len(kept)
    with (
        h5py.File(scratch_path, "r") as s,
        create_survey(
            out_path, n, survey=f"SDSS-{release.upper()}", attrs=attrs, compression=compression
        ) as f,
    ):
        mdl = f["spectra"].create_dataset(
            "model",
            (n, N_LOGLAM),
            dtype="f4",
            chunks=(min(SPECTRUM_CHUNK, n), N_LOGLAM),
            compression=compression,
        )
        mdl.attrs["description"] = "SDSS pipeline best-fit model (spec-lite COADD 'model')"
        for a in range(0, n, chunk):
            idx = kept[a : a + chunk]
            f["images"][a : a + len(idx)] = s["images"][idx]
            f["spectra/flux"][a : a + len(idx)] = s["flux"][idx]
            f["spectra/ivar"][a : a + len(idx)] = s["ivar"][idx]
            mdl[a : a + len(idx)] = s["model"][idx]
        f["split"][:] = split
        sid = cat["specObjID"][kept].astype(np.uint64)
        write_column(
            f,
            "id",
            sid.view(np.int64),
            "",
            "SDSS specObjID as int64 (bit-identical; values >= 2**63 read negative)",
        )
        for col, arr in cat.items():
            kind, unit, desc = COLUMNS.get(col, ("", "", "catalogue column"))
            write_column(f, col, arr[kept], unit, desc)


def _write_drop_lists(
    out_path: Path,
    cat: dict,
    reasons: dict[int, str],
    n: int,
    split: np.ndarray,
    pasquet: _PasquetCube | None,
    used_cube_rows: set[int],
) -> dict:
    """Write ``<stem>_dropped.csv`` (and ``<stem>_pasquet_unused.csv``); return the build summary."""
    dropped_path = out_path.with_name(out_path.stem + "_dropped.csv")
    _write_csv(
        dropped_path,
        ["specObjID", "plate", "mjd", "fiberID", "reason"],
        [
            [int(cat["specObjID"][i]), int(cat["plate"][i]), int(cat["mjd"][i]), int(cat["fiberID"][i]), r]
            for i, r in sorted(reasons.items())
        ],
    )
    summary = {
        "out": str(out_path),
        "n_catalog": len(cat["specObjID"]),
        "n_kept": n,
        "n_dropped": len(reasons),
        "dropped_csv": str(dropped_path),
        "split_counts": {k: int((split == v).sum()) for k, v in (("train", 0), ("val", 1), ("test", 2))},
        "drop_reasons": _count_reasons(reasons.values()),
    }
    if pasquet is not None:
        cube = pasquet.cube
        unmatched = sorted(set(range(len(cube))) - used_cube_rows)
        um_path = out_path.with_name(out_path.stem + "_pasquet_unused.csv")
        _write_csv(um_path, ["cube_row", "specObjID"], [[j, int(pasquet.ids[j])] for j in unmatched])
        summary.update(
            {"n_cube": len(cube), "n_cube_unused": len(unmatched), "cube_unused_csv": str(um_path)}
        )
    return summary


def build_survey(
    catalog: str | os.PathLike | dict,
    data_dir: str | os.PathLike,
    out_path: str | os.PathLike,
    release: str = "DR16",
    seed: int = 0,
    n_val: int = 512,
    test_fraction: float = 0.1,
    z_range: tuple[float, float] | None = (Z_MIN, Z_MAX),
    images: str = "frames",
    pasquet_npz: str | os.PathLike | None = None,
    orientation: str = "native",
    max_dz: float = 1e-3,
    max_sep_arcsec: float = 3.0,
    chunk: int = 1024,
    compression: str | None = None,
    scratch_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict:
    """Build the schema-v1 survey file from a catalogue and a local SAS mirror.

    Parameters
    ----------
    catalog : catalogue CSV path (validated with :func:`read_catalog_csv`) or an already-read dict.
    data_dir : the download root (``download`` subcommand's ``--out``).
    out_path : the survey HDF5 to write (atomically).
    release : SAS release directory ("DR16"/"DR17").
    seed, n_val, test_fraction : passed to :func:`datasets.schema.assign_split` (paper: 512 and 0.1).
    z_range : catalogue redshift check (None: off).
    images : "frames" (cutouts from calibrated frames) or "pasquet" (the Pasquet cube, ``pasquet_npz``).
    orientation : cutout orientation, "native" or "north" (:func:`surveys.sdss.cutouts.make_cutout`).
    max_dz : drop a galaxy if its spec file's Z differs from the catalogue z by more than this.
    max_sep_arcsec : drop if the fibre (PLUG_RA/DEC) is further than this from the catalogue ra/dec.
    chunk : rows per copy chunk in pass 2.
    compression : h5py compression for images/spectra (None, "gzip", "lzf").
    scratch_dir : where pass 1's per-row scratch file goes (default: next to ``out_path``); it is as large
        as the output for the whole catalogue and is deleted at the end.
    progress : tqdm bars.

    Returns
    -------
    dict: n_catalog, n_kept, n_dropped, drop reasons count, split counts, paths of the outputs.
    """
    out_path = Path(out_path)
    data_dir = Path(data_dir)
    cat = catalog if isinstance(catalog, dict) else read_catalog_csv(catalog, z_range=z_range)
    n_cat = len(cat["specObjID"])
    if images not in ("frames", "pasquet"):
        raise BuildError(f"build_survey: images={images!r}, expected 'frames' or 'pasquet'")
    pasquet = None
    if images == "pasquet":
        if pasquet_npz is None:
            raise BuildError("build_survey: images='pasquet' needs pasquet_npz")
        pasquet = _open_pasquet_index(pasquet_npz)
    scratch_path = Path(scratch_dir or out_path.parent) / f".{out_path.name}.scratch.h5"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # field-sorted so each field's 5 frames are decompressed once
    order = np.lexsort((cat["field"], cat["camcol"], cat["run"]))
    frames = FrameCache(data_dir, release)
    read_row = functools.partial(
        _read_galaxy,
        cat=cat,
        data_dir=data_dir,
        release=release,
        frames=frames,
        pasquet=pasquet,
        orientation=orientation,
        max_dz=max_dz,
        max_sep_arcsec=max_sep_arcsec,
    )
    try:
        reasons, used_cube_rows = _fill_scratch(scratch_path, n_cat, order, read_row, progress)
        kept = np.array(sorted(set(range(n_cat)) - set(reasons)), dtype=np.int64)
        n = len(kept)
        if n == 0:
            raise BuildError(
                f"{out_path}: build: no galaxy survived (first reason: {next(iter(reasons.values()))})"
            )
        split = assign_split(n, seed=seed, n_val=n_val, test_fraction=test_fraction)
        attrs = {
            "release": release,
            "image_source": images,
            "n_catalog": n_cat,
            "n_dropped": len(reasons),
            "seed": seed,
            "n_val": n_val,
            "test_fraction": test_fraction,
            "catalog_source": str(catalog) if not isinstance(catalog, dict) else "dict",
            "cutout_interpolation": "bilinear" if images == "frames" else "Pasquet et al. 2019 cube",
            "cutout_orientation": orientation if images == "frames" else "as in the cube",
            # the module's name before the move to surveys/ (issue 12), kept so files stay byte-identical
            "builder": "utils.sdss.build",
        }
        _copy_kept_rows(scratch_path, out_path, cat, kept, split, attrs, release, compression, chunk)
    finally:
        scratch_path.unlink(missing_ok=True)
    return _write_drop_lists(out_path, cat, reasons, n, split, pasquet, used_cube_rows)


def import_pasquet_cube(
    npz_path: str | os.PathLike,
    catalog: str | os.PathLike | dict,
    data_dir: str | os.PathLike,
    out_path: str | os.PathLike,
    **kwargs,
) -> dict:
    """Build the survey with the Pasquet et al. (2019) image cube instead of frame cutouts.

    The cube's ``(N, 64, 64, 5)`` images (ugriz in the last axis) are matched to the catalogue by
    ``labels['specObjID']`` and transposed to the schema's (N, 5, 64, 64); spectra come from the spec-lite
    files in ``data_dir``. Catalogue galaxies without a cube image are dropped with the reason
    "not in the Pasquet cube"; cube images without a kept galaxy are listed in
    ``<out stem>_pasquet_unused.csv``. Other keyword arguments go to :func:`build_survey`.
    """
    return build_survey(catalog, data_dir, out_path, images="pasquet", pasquet_npz=npz_path, **kwargs)


def _count_reasons(reasons) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in reasons:
        key = r.split(":")[0] if ":" in r else r.split("=")[0]
        out[key] = out.get(key, 0) + 1
    return out


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    write_csv(path, header, rows)
