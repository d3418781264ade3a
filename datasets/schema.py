"""The project's one HDF5 survey schema (version 1).

Both the mock-survey builder (``surveys.mock.make``) and the real-SDSS builder write it; training,
generation and evaluation read only this. Layout::

    /                      attrs: schema="galspec-survey", schema_version=1, survey, bands="ugriz",
                           pixel_scale_arcsec=0.396, image_unit="nanomaggy",
                           flux_unit="1e-17 erg/s/cm2/Angstrom", wavelength_medium="vacuum",
                           n_galaxies, creator, created_utc (+ builder-specific attrs, e.g. seed)
    /images                float32 (N, 5, 64, 64)  u,g,r,i,z cutouts in nanomaggies, chunked per galaxy
    /spectra/loglam        float64 (L,)            the SDSS global grid log10(lambda/Angstrom),
                                                   LOGLAM0 + 1e-4 * i, i = 0..L-1 (vacuum, observed frame)
    /spectra/flux          float32 (N, L)          observed-frame flux density, 1e-17 erg/s/cm2/Angstrom
    /spectra/ivar          float32 (N, L)          inverse variance of flux; 0 where not observed
    /spectra/model         float32 (N, L)          OPTIONAL noiseless model spectrum (mock: the truth;
                                                   real SDSS: the pipeline's best-fit `model` column)
    /catalog/<column>      (N,)                    one dataset per column, attrs unit + description;
                                                   required: id (int64), ra, dec (deg), z
    /split                 int8 (N,)               0 train, 1 validation, 2 test (SPLIT_CODES)

The bands, image size, pixel scale and grid shown are the survey description's
(``surveys.description.SURVEY``, SDSS); the module constants below are aliases of its fields.

Real spectra whose wavelength coverage starts or ends inside the grid get ivar = 0 (and flux 0) in the
uncovered pixels. Every writer goes through :func:`create_survey` (temporary name, renamed when complete);
every reader through :func:`open_survey`, which validates before any work starts.
"""
from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

from surveys.description import SURVEY

SCHEMA_NAME = "galspec-survey"
SCHEMA_VERSION = 1
# the survey's facts (surveys/description.py), under the names the rest of the code imports
BANDS = SURVEY.bands  # "ugriz"
N_BANDS = SURVEY.n_bands  # 5
IMAGE_SIZE = SURVEY.image_size  # 64
PIXEL_SCALE_ARCSEC = SURVEY.pixel_scale_arcsec  # 0.396
IMAGE_UNIT = SURVEY.image_unit  # "nanomaggy"
LOGLAM0 = SURVEY.loglam_start  # 3.58 = log10(3801.9 Angstrom): SDSS's global grid 3.5 + 1e-4 k at k = 800
DLOGLAM = SURVEY.loglam_step  # 1e-4: 69 km/s per pixel
N_LOGLAM = SURVEY.n_loglam  # 3838: up to log10 = 3.9637 (9195 Angstrom)
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
REQUIRED_COLUMNS = ("id", "ra", "dec", "z")
IMAGE_CHUNK = 16
SPECTRUM_CHUNK = 64


class SurveyFileError(ValueError):
    """A survey file that does not follow the schema; the message names file, field and value."""


def sdss_loglam_grid() -> np.ndarray:
    """The schema's common observed-frame grid, log10(lambda / Angstrom), vacuum."""
    return SURVEY.loglam_grid()


def assign_split(n: int, seed: int = 0, n_val: int = 512, test_fraction: float = 0.1) -> np.ndarray:
    """Fixed-seed split as in the paper: ``n_val`` validation galaxies, ``test_fraction`` test, rest train.

    Returns an int8 array of SPLIT_CODES. Deterministic for (n, seed, n_val, test_fraction).
    """
    n_test = int(round(test_fraction * n))
    if n_val + n_test >= n:
        raise ValueError(f"split: n={n} galaxies cannot hold n_val={n_val} and n_test={n_test} "
                         "with any training galaxies left")
    order = np.random.default_rng(seed).permutation(n)
    split = np.zeros(n, dtype=np.int8)
    split[order[:n_val]] = SPLIT_CODES["val"]
    split[order[n_val:n_val + n_test]] = SPLIT_CODES["test"]
    return split


@contextmanager
def create_survey(path: str | os.PathLike, n: int, survey: str, attrs: Mapping | None = None,
                  compression: str | None = None) -> Iterator[h5py.File]:
    """Create an empty schema-v1 file for ``n`` galaxies; yields the open h5py.File to fill.

    The file is written under ``<path>.partial`` and renamed to ``path`` only when the ``with`` block
    ends without an exception, so a killed or failed build never leaves a half-written file under the
    final name. The writer must fill /images, /spectra/flux, /spectra/ivar, /split and the catalogue
    (use :func:`write_column`); :func:`validate_survey` runs before the rename.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    if tmp.exists():
        tmp.unlink()
    f = h5py.File(tmp, "w")
    try:
        f.attrs.update({
            "schema": SCHEMA_NAME, "schema_version": SCHEMA_VERSION, "survey": survey, "bands": BANDS,
            "pixel_scale_arcsec": PIXEL_SCALE_ARCSEC, "image_unit": IMAGE_UNIT,
            "flux_unit": "1e-17 erg/s/cm2/Angstrom", "wavelength_medium": "vacuum",
            "n_galaxies": n, "creator": "galspec", "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                            time.gmtime()),
        })
        for k, v in (attrs or {}).items():
            f.attrs[k] = v
        f.create_dataset("images", (n, N_BANDS, IMAGE_SIZE, IMAGE_SIZE), dtype="f4",
                         chunks=(min(IMAGE_CHUNK, max(n, 1)), N_BANDS, IMAGE_SIZE, IMAGE_SIZE),
                         compression=compression)
        g = f.create_group("spectra")
        g.create_dataset("loglam", data=sdss_loglam_grid())
        for name in ("flux", "ivar"):
            g.create_dataset(name, (n, N_LOGLAM), dtype="f4",
                             chunks=(min(SPECTRUM_CHUNK, max(n, 1)), N_LOGLAM), compression=compression)
        f.create_group("catalog")
        f.create_dataset("split", (n,), dtype="i1")
        f["split"].attrs["codes"] = "0=train,1=val,2=test"
        yield f
        f.flush()
        f.close()
        validate_survey(tmp, display_name=str(path))
        os.replace(tmp, path)
    except BaseException:
        if f.id.valid:
            f.close()
        if tmp.exists():
            tmp.unlink()
        raise


def write_column(f: h5py.File, name: str, values, unit: str = "", description: str = "") -> None:
    """Write one catalogue column /catalog/<name> with its unit and description attributes."""
    values = np.asarray(values)
    if values.dtype.kind == "U":
        values = values.astype("S")
    if len(values) != f.attrs["n_galaxies"]:
        raise SurveyFileError(f"{f.filename}: catalog/{name} has {len(values)} rows, "
                              f"expected n_galaxies={f.attrs['n_galaxies']}")
    if name in f["catalog"]:
        del f["catalog"][name]
    d = f["catalog"].create_dataset(name, data=values)
    d.attrs["unit"] = unit
    d.attrs["description"] = description


def _fail(path, field, msg) -> None:
    raise SurveyFileError(f"{path}: {field}: {msg}")


def validate_survey(path: str | os.PathLike, check_values: bool = True, display_name: str | None = None,
                    chunk: int = 1024) -> dict:
    """Check that ``path`` is a complete schema-v1 survey file; raise SurveyFileError naming the field.

    With ``check_values`` the images and spectra are streamed in chunks (bounded memory) to reject
    NaN/inf pixels and spectra with no positive flux. Returns a small summary dict.
    """
    name = display_name or str(path)
    p = Path(path)
    if not p.exists():
        raise SurveyFileError(f"{name}: file: does not exist")
    try:
        f = h5py.File(p, "r")
    except OSError as e:
        raise SurveyFileError(f"{name}: file: not a readable HDF5 file (truncated or corrupt?): {e}"
                              ) from None
    reading = {"field": "file"}  # what is being read, for the message of a damaged file
    with f:
        try:
            return _validate_open(f, name, check_values, chunk, reading)
        except SurveyFileError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, OSError, RuntimeError) as e:
            # damaged metadata (an attribute of the wrong type, a group where a dataset belongs, an
            # unreadable chunk): name the file and what was being read instead of a traceback
            raise SurveyFileError(f"{name}: {reading['field']}: unreadable or malformed "
                                  f"({type(e).__name__}: {' '.join(str(e).split())[:160]})") from None


def _validate_open(f: h5py.File, name: str, check_values: bool, chunk: int, reading: dict) -> dict:
    def at(field):
        reading["field"] = field
    at("attrs/schema")
    if f.attrs.get("schema") != SCHEMA_NAME:
        _fail(name, "attrs/schema", f"is {f.attrs.get('schema')!r}, expected {SCHEMA_NAME!r}")
    at("attrs/schema_version")
    version = int(f.attrs.get("schema_version", -1))
    if version != SCHEMA_VERSION:
        _fail(name, "attrs/schema_version", f"is {version}, this code reads {SCHEMA_VERSION}")
    for key in ("images", "spectra/flux", "spectra/ivar", "spectra/loglam", "split", "catalog"):
        at(key)
        if key not in f:
            _fail(name, key, "missing")
        want = h5py.Group if key == "catalog" else h5py.Dataset
        if not isinstance(f[key], want):
            _fail(name, key, f"is a {type(f[key]).__name__}, expected an HDF5 {want.__name__}")
    at("attrs/n_galaxies")
    if "n_galaxies" not in f.attrs:
        _fail(name, "attrs/n_galaxies", "missing")
    n = int(f.attrs["n_galaxies"])
    if n <= 0:
        _fail(name, "attrs/n_galaxies", f"is {n}, expected > 0")
    at("images")
    shape = f["images"].shape
    if shape != (n, N_BANDS, IMAGE_SIZE, IMAGE_SIZE):
        _fail(name, "images", f"shape {shape}, expected ({n}, {N_BANDS}, {IMAGE_SIZE}, {IMAGE_SIZE}) "
                              f"(N, bands {BANDS}, y, x)")
    for key in ("spectra/flux", "spectra/ivar"):
        at(key)
        if f[key].shape != (n, N_LOGLAM):
            _fail(name, key, f"shape {f[key].shape}, expected ({n}, {N_LOGLAM})")
    at("spectra/loglam")
    loglam = f["spectra/loglam"][:]
    if loglam.shape != (N_LOGLAM,) or not np.allclose(loglam, sdss_loglam_grid(), atol=1e-7):
        _fail(name, "spectra/loglam", f"shape {loglam.shape}, starting at {loglam.ravel()[:1]}; expected the "
                                      f"schema grid {LOGLAM0} + {DLOGLAM} i, i < {N_LOGLAM}")
    for col in REQUIRED_COLUMNS:
        if col not in f["catalog"]:
            _fail(name, f"catalog/{col}", "missing (required column)")
    for col in f["catalog"]:
        at(f"catalog/{col}")
        if not isinstance(f["catalog"][col], h5py.Dataset) or f["catalog"][col].shape[:1] != (n,):
            _fail(name, f"catalog/{col}", f"has shape {getattr(f['catalog'][col], 'shape', None)}, "
                                          f"expected {n} rows")
    for col in ("ra", "dec", "z"):
        at(f"catalog/{col}")
        v = f["catalog"][col][:]
        if v.dtype.kind not in "fiu" or not np.isfinite(v).all():
            _fail(name, f"catalog/{col}", f"dtype {v.dtype}: expected finite numbers")
    at("split")
    split = f["split"][:]
    if split.shape != (n,):
        _fail(name, "split", f"shape {split.shape}, expected ({n},)")
    bad = ~np.isin(split, list(SPLIT_CODES.values()))
    if bad.any():
        _fail(name, "split", f"value {split[bad][0]} at row {int(np.flatnonzero(bad)[0])} is not 0/1/2")
    counts = {k: int((split == v).sum()) for k, v in SPLIT_CODES.items()}
    if counts["train"] == 0:
        _fail(name, "split", "the train split is empty")
    if check_values:
        _check_values(f, name, n, chunk, at)
    return {"n_galaxies": n, "survey": str(f.attrs.get("survey")), "split_counts": counts,
            "columns": sorted(f["catalog"].keys()), "survey_version": survey_version(f.attrs)}


def _check_values(f: h5py.File, name: str, n: int, chunk: int, at) -> None:
    for s in range(0, n, chunk):
        at("images")
        img = f["images"][s:s + chunk]
        finite = np.isfinite(img).all(axis=(1, 2, 3))
        if not finite.all():
            i = s + int(np.flatnonzero(~finite)[0])
            _fail(name, "images", f"galaxy row {i} has NaN/inf pixels")
        at("spectra/flux")
        flux = f["spectra/flux"][s:s + chunk]
        at("spectra/ivar")
        ivar = f["spectra/ivar"][s:s + chunk]
        for key, arr in (("spectra/flux", flux), ("spectra/ivar", ivar)):
            fin = np.isfinite(arr).all(axis=1)
            if not fin.all():
                i = s + int(np.flatnonzero(~fin)[0])
                _fail(name, key, f"galaxy row {i} has NaN/inf values")
        if (ivar < 0).any():
            i = s + int(np.flatnonzero((ivar < 0).any(axis=1))[0])
            _fail(name, "spectra/ivar", f"galaxy row {i} has negative inverse variance")
        pos = (flux > 0).any(axis=1)
        if not pos.all():
            i = s + int(np.flatnonzero(~pos)[0])
            _fail(name, "spectra/flux", f"galaxy row {i} has no positive flux")


def catalog_fingerprint(ids, ra, dec) -> str:
    """sha256 of the (id, ra, dec) of a selection of galaxies: results carry it so a survey with the same
    row count and ids (the mock's ids are row numbers) but other galaxies is recognised as different."""
    h = hashlib.sha256()
    for arr, dt in ((ids, "<i8"), (ra, "<f8"), (dec, "<f8")):
        h.update(np.ascontiguousarray(np.asarray(arr).astype(dt)).tobytes())
    return h.hexdigest()


def survey_version(attrs) -> str:
    """Which generation of data a survey file holds: ``"<survey>"``, or ``"mock-sdss/v<N>"`` for the mock.

    The file format (schema_version) can stay the same while the mock's physics changes; caches and
    checkpoints record this string so that those made on an older mock are told apart. Mock files written
    before the attribute existed are mock v1.
    """
    survey = str(attrs.get("survey", ""))
    if survey.startswith("mock"):
        return f"{survey}/v{int(attrs.get('mock_version', 1))}"
    return survey


def open_survey(path: str | os.PathLike, check_values: bool = False) -> h5py.File:
    """Validate and open a survey file read-only (lazily: nothing is loaded until indexed)."""
    validate_survey(path, check_values=check_values)
    return h5py.File(path, "r")


def read_catalog(path: str | os.PathLike, columns=None) -> dict[str, np.ndarray]:
    """Read catalogue columns (all by default) into memory as a dict of arrays."""
    with open_survey(path) as f:
        cols = columns or list(f["catalog"].keys())
        out = {}
        for c in cols:
            if c not in f["catalog"]:
                raise SurveyFileError(f"{path}: catalog/{c}: missing (have {sorted(f['catalog'].keys())})")
            out[c] = f["catalog"][c][:]
        return out
