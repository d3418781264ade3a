"""The project's one FITS writer (and reader) for predicted spectra.

File layout (``write_spectra_fits``)::

    HDU0 PRIMARY     provenance scalars as ``HIERARCH GALSPEC <KEY>`` cards (for a quick look with fitsheader)
    HDU1 SPECTRA     BinTable, one row per galaxy: the per-galaxy columns (id, ra, dec, z, ...) and one
                     vector column of length L per spectrum (flux_pred, flux_pred_std, flux_obs, ivar_obs,
                     ...); TUNITn set
    HDU2 WAVELENGTH  float64 (L,) image, BUNIT = 'Angstrom' (the common grid of every vector column)

The full provenance dict is also stored as JSON in the primary header keyword ``PROVJSON`` (a FITS long
string, CONTINUE cards), so it round-trips exactly and SPECTRA stays the only table in the file.

``astropy.table.Table.read(path)`` reads HDU1 (the first table) with units; :func:`read_spectra_fits` is the
inverse of the writer; :func:`to_specutils` returns a specutils ``Spectrum`` if specutils is installed.
Writes are atomic (``<name>.partial`` then ``os.replace``).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.table import Column, Table

from utils.files import atomic_path, jsonable

FLUX_UNIT = "1e-17 erg / (s cm2 Angstrom)"
IVAR_UNIT = "1e+34 Angstrom2 cm4 s2 / erg2"  # (1e-17 erg/s/cm2/Angstrom)**-2
DEFAULT_UNITS = {"ra": "deg", "dec": "deg", "wave": "Angstrom"}


class ResultsFileError(ValueError):
    """Bad input to / content of a results FITS file; the message names the file and the field."""



def write_spectra_fits(
    path: str | os.PathLike,
    table: dict,
    spectra: dict,
    wave,
    header: dict | None = None,
    units: dict | None = None,
    cubes: dict | None = None,
) -> Path:
    """Write predicted/observed spectra with per-galaxy columns to one FITS file (atomically).

    Parameters
    ----------
    path : output file (``.fits``).
    table : per-galaxy columns, name -> (N,) or (N, K) array (e.g. id, ra, dec, z, per-candidate
        scores); strings allowed.
    spectra : name -> (N, L) array on the grid ``wave`` (e.g. flux_pred, flux_obs, ivar_obs).
    wave : (L,) wavelength in Angstrom (vacuum, observed frame unless the header says otherwise).
    header : provenance (checkpoints, config, sampler, steps, seed, ...); any JSON-able values.
    units : column name -> unit string (astropy-parsable, e.g. ``FLUX_UNIT``, ``IVAR_UNIT``, "deg", "");
        ra/dec default to deg.
    cubes : extra image HDUs, EXTNAME -> ((N, K, L_c) array, (L_c,) linear wavelength grid in Angstrom),
        e.g. every generated candidate; the grid goes into the HDU's WCS (CRVAL1/CDELT1, CUNIT1).

    Returns
    -------
    Path of the written file.
    """
    path = Path(path)
    wave = np.asarray(wave, dtype=np.float64)
    if wave.ndim != 1:
        raise ResultsFileError(f"{path}: wave: shape {wave.shape}, expected (L,)")
    units = {**DEFAULT_UNITS, **(units or {})}
    n = None
    t = Table()
    for name, vals in table.items():
        vals = np.asarray(vals)
        if vals.ndim not in (1, 2):
            raise ResultsFileError(f"{path}: table/{name}: shape {vals.shape}, expected (N,) or (N, K)")
        if n is None:
            n = len(vals)
        if len(vals) != n:
            raise ResultsFileError(f"{path}: table/{name}: {len(vals)} rows, expected {n}")
        if vals.dtype.kind == "S":
            vals = vals.astype("U")
        t[name] = Column(vals, unit=units.get(name) or None)
    for name, arr in spectra.items():
        arr = np.asarray(arr)
        if name in t.colnames:
            raise ResultsFileError(f"{path}: spectra/{name}: name also used by a table column")
        if arr.ndim != 2 or arr.shape[1] != len(wave):
            raise ResultsFileError(f"{path}: spectra/{name}: shape {arr.shape}, expected (N, {len(wave)})")
        if n is None:
            n = arr.shape[0]
        if arr.shape[0] != n:
            raise ResultsFileError(f"{path}: spectra/{name}: {arr.shape[0]} rows, expected {n}")
        t[name] = Column(
            arr.astype(np.float32) if arr.dtype.kind == "f" else arr, unit=units.get(name) or None
        )
    if n is None:
        raise ResultsFileError(f"{path}: table: no columns and no spectra")
    prov = {k: jsonable(v) for k, v in (header or {}).items()}
    primary = fits.PrimaryHDU()
    primary.header["ORIGIN"] = "galspec"
    primary.header["NGALAXY"] = (n, "rows in SPECTRA")
    primary.header["NWAVE"] = (len(wave), "length of every spectrum vector column")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fits.verify.VerifyWarning)
        for k, v in prov.items():
            if isinstance(v, (bool, int, float)) or (isinstance(v, str) and len(k) + len(v) < 50):
                try:
                    primary.header[f"HIERARCH GALSPEC {k.upper()}"] = v
                except ValueError:
                    pass  # too long for one card: PROVJSON has it
    spec_hdu = fits.table_to_hdu(t)
    spec_hdu.name = "SPECTRA"
    spec_hdu.header["WAVEHDU"] = ("WAVELENGTH", "HDU with the wavelength grid")
    wave_hdu = fits.ImageHDU(wave, name="WAVELENGTH")
    wave_hdu.header["BUNIT"] = "Angstrom"
    primary.header["PROVJSON"] = json.dumps(prov, ensure_ascii=True, sort_keys=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fits.HDUList([primary, spec_hdu, wave_hdu] + _cube_hdus(path, cubes or {}, n)).writeto(fh)
    return path


def _cube_hdus(path, cubes: dict, n: int) -> list:
    hdus = []
    for name, (arr, grid) in cubes.items():
        arr = np.asarray(arr, dtype=np.float32)
        grid = np.asarray(grid, dtype=np.float64)
        if arr.ndim != 3 or arr.shape[0] != n or arr.shape[2] != grid.size:
            raise ResultsFileError(f"{path}: cubes/{name}: shape {arr.shape}, expected ({n}, K, {grid.size})")
        step = np.diff(grid)
        if grid.size > 1 and not np.allclose(step, step[0]):
            raise ResultsFileError(f"{path}: cubes/{name}: wavelength grid is not linear")
        hdu = fits.ImageHDU(arr, name=name)
        hdu.header["CTYPE1"] = "WAVE"
        hdu.header["CUNIT1"] = "Angstrom"
        hdu.header["CRPIX1"] = 1.0
        hdu.header["CRVAL1"] = float(grid[0])
        hdu.header["CDELT1"] = float(step[0]) if grid.size > 1 else 1.0
        hdu.header["COMMENT"] = "axis 3: galaxy (row of SPECTRA), axis 2: candidate, axis 1: wavelength"
        hdus.append(hdu)
    return hdus


def read_spectra_fits(path: str | os.PathLike) -> dict:
    """Inverse of :func:`write_spectra_fits`.

    Returns
    -------
    dict with ``table`` (name -> (N,) array), ``spectra`` (name -> (N, L) array), ``wave`` (L,) Angstrom,
    ``header`` (provenance dict), ``units`` (column -> unit string) and ``cubes`` (EXTNAME ->
    ((N, K, L_c) array, (L_c,) grid)).
    """
    path = Path(path)
    try:
        hdul = fits.open(path, memmap=False)
    except (OSError, ValueError) as e:
        raise ResultsFileError(f"{path}: file: not a readable FITS file: {e}") from None
    with hdul:
        for need in ("SPECTRA", "WAVELENGTH"):
            if need not in hdul:
                raise ResultsFileError(f"{path}: HDU {need}: missing")
        wave = np.asarray(hdul["WAVELENGTH"].data, dtype=np.float64)
        header = json.loads(hdul[0].header.get("PROVJSON", "{}"))
        cubes = {}
        for hdu in hdul[3:]:
            if isinstance(hdu, fits.ImageHDU) and hdu.data is not None and hdu.data.ndim == 3:
                h = hdu.header
                grid = h["CRVAL1"] + h["CDELT1"] * (np.arange(hdu.data.shape[2]) + 1 - h["CRPIX1"])
                cubes[hdu.name] = (np.asarray(hdu.data), grid)
    t = Table.read(path, hdu="SPECTRA")
    table, spectra, units = {}, {}, {}
    for name in t.colnames:
        col = t[name]
        units[name] = "" if col.unit is None else col.unit.to_string()
        arr = np.asarray(col)
        if arr.dtype.kind == "S":
            arr = arr.astype("U")
        if arr.ndim == 2 and arr.shape[1] == len(wave):
            spectra[name] = arr
        else:
            table[name] = arr
    return {"table": table, "spectra": spectra, "wave": wave, "header": header, "units": units,
            "cubes": cubes}


def to_specutils(path: str | os.PathLike, column: str = "flux_pred", ivar_column: str | None = None,
                 std_column: str | None = None):
    """The ``column`` spectra of a results file as one specutils ``Spectrum`` (N spectra, shared axis).

    Requires specutils (optional dependency; ImportError otherwise). ``ivar_column`` (e.g. "ivar_obs") becomes
    the InverseVariance uncertainty, or ``std_column`` (e.g. "flux_pred_std") a StdDevUncertainty.
    ``Spectrum.read(path, format="galspec-results")`` (utils/results_specutils.py) picks them itself.
    """
    try:
        import specutils
        from astropy.nddata import InverseVariance, StdDevUncertainty
    except ImportError as e:
        raise ImportError("to_specutils needs specutils (pip install specutils)") from e
    cls = getattr(specutils, "Spectrum", None) or specutils.Spectrum1D
    r = read_spectra_fits(path)
    if column not in r["spectra"]:
        raise ResultsFileError(f"{path}: SPECTRA/{column}: missing (have {sorted(r['spectra'])})")
    unit = u.Unit(r["units"].get(column) or "")
    unc = None
    if ivar_column:
        unc = InverseVariance(r["spectra"][ivar_column] * unit**-2)
    elif std_column:
        unc = StdDevUncertainty(r["spectra"][std_column] * unit)
    return cls(flux=r["spectra"][column] * unit, spectral_axis=r["wave"] * u.AA, uncertainty=unc)


def observed_on_grid(
    loglam: np.ndarray,
    flux: np.ndarray,
    ivar: np.ndarray,
    wave: np.ndarray,
    norm_window: tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Observed spectra (N, L_obs) on the log-lambda grid -> (N, L) on ``wave`` by linear interpolation.

    ivar is interpolated too and set to 0 wherever either neighbouring input pixel has ivar 0 or lies
    outside the coverage. With ``norm_window`` (Angstrom), each spectrum is divided by its mean flux in the
    window (as the paper's preprocessing does) and ivar multiplied by the square of that mean.
    """
    lam = 10.0**loglam
    flux = np.atleast_2d(flux)
    ivar = np.atleast_2d(ivar)
    pos = np.interp(wave, lam, np.arange(len(lam)), left=-1, right=-1)
    lo = np.clip(np.floor(pos).astype(int), 0, len(lam) - 1)
    hi = np.clip(lo + 1, 0, len(lam) - 1)
    frac = (pos - lo)[None, :]
    f = flux[:, lo] * (1 - frac) + flux[:, hi] * frac
    iv = ivar[:, lo] * (1 - frac) + ivar[:, hi] * frac
    bad = (ivar[:, lo] <= 0) | (ivar[:, hi] <= 0) | (pos < 0)[None, :]
    iv = np.where(bad, 0.0, iv)
    if norm_window is not None:
        w = (wave >= norm_window[0]) & (wave <= norm_window[1])
        norm = np.where(w[None, :] & ~bad, f, np.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            m = np.nanmean(norm, axis=1, keepdims=True)
        m = np.where(np.isfinite(m) & (m != 0), m, np.nan)
        f = f / m
        iv = iv * m**2
        f = np.where(np.isfinite(f), f, 0.0)
        iv = np.where(np.isfinite(iv), iv, 0.0)
    return f.astype(np.float32), iv.astype(np.float32)


def results_to_fits(
    predictions_h5: str | os.PathLike,
    survey_h5: str | os.PathLike,
    out_fits: str | os.PathLike,
    header: dict | None = None,
) -> Path:
    """Predicted + observed spectra with the survey's catalogue columns -> one results FITS file.

    The predictions HDF5 (as generate.py writes it) holds ``wave`` (L,) Angstrom, ``flux_pred`` (N, L), and
    ``id`` (N,) matching the survey's /catalog/id (or ``index`` (N,): survey rows); any other top-level (N, L)
    dataset becomes another vector column and any (N,) dataset a table column. Root attributes go to the
    provenance; ``flux_unit`` (default: dimensionless, i.e. normalised), ``log_flux`` (true: predictions are
    ln flux and get exponentiated) and ``norm_window`` ([lo, hi] Angstrom: observed spectra are normalised
    by their mean in it, like the predictions) are honoured. If ``wave`` is the paper's 4500-point (or
    563-point low-res) grid, the observed spectra go through ``datasets.preprocess.preprocess_spectra``
    (spline, 2 Angstrom smoothing, normalisation; every 8th point for low-res) -- the processing the
    networks were trained on; otherwise they are linearly interpolated (:func:`observed_on_grid`).
    """
    import h5py

    from datasets.preprocess import FULLRES_WAVE, LOWRES_WAVE, NORM_WINDOW, lowres, preprocess_spectra
    from datasets.schema import open_survey

    predictions_h5 = Path(predictions_h5)
    if not predictions_h5.is_file():
        raise ResultsFileError(f"{predictions_h5}: file: does not exist")
    with h5py.File(predictions_h5, "r") as p:
        for need in ("wave", "flux_pred"):
            if need not in p:
                raise ResultsFileError(f"{predictions_h5}: {need}: missing")
        wave = p["wave"][:]
        n = p["flux_pred"].shape[0]
        attrs = {k: jsonable(v) for k, v in p.attrs.items()}
        spectra = {}
        extra_table = {}
        for k in p:
            if k == "wave" or not isinstance(p[k], h5py.Dataset):
                continue
            if p[k].shape == (n, len(wave)):
                spectra[k] = p[k][:]
            elif p[k].shape == (n,) and k not in ("id", "index"):
                extra_table[k] = p[k][:]
        ids = p["id"][:] if "id" in p else None
        rows = p["index"][:] if "index" in p else None
    if attrs.get("log_flux"):
        spectra["flux_pred"] = np.exp(spectra["flux_pred"])
    with open_survey(survey_h5) as s:
        cat_ids = s["catalog/id"][:]
        if rows is None:
            if ids is None:
                raise ResultsFileError(f"{predictions_h5}: id: missing (need id or index)")
            where = {int(v): i for i, v in enumerate(cat_ids)}
            missing = [int(v) for v in ids if int(v) not in where]
            if missing:
                raise ResultsFileError(
                    f"{predictions_h5}: id: value {missing[0]} not in {survey_h5} "
                    f"catalog/id ({len(missing)} unmatched)"
                )
            rows = np.array([where[int(v)] for v in ids], dtype=np.int64)
        uniq, inv = np.unique(rows, return_inverse=True)  # h5py needs increasing, unique indices
        if len(uniq) and (uniq[0] < 0 or uniq[-1] >= len(cat_ids)):
            raise ResultsFileError(f"{predictions_h5}: index: values outside 0..{len(cat_ids) - 1}")
        table = {}
        units = {}
        for c in s["catalog"]:
            table[c] = s["catalog"][c][uniq][inv]
            units[c] = str(s["catalog"][c].attrs.get("unit", ""))
        loglam = s["spectra/loglam"][:]
        obs_f = np.empty((len(uniq), len(wave)), np.float32)
        obs_iv = np.empty((len(uniq), len(wave)), np.float32)
        win = attrs.get("norm_window")
        paper_grid = any(len(wave) == len(g) and np.allclose(wave, g) for g in (FULLRES_WAVE, LOWRES_WAVE))
        if paper_grid:
            win = list(NORM_WINDOW)
        for a in range(0, len(uniq), 1024):
            rr = uniq[a : a + 1024]
            if paper_grid:  # the paper's preprocessing (datasets.preprocess), exactly as for training
                pp = preprocess_spectra(loglam, s["spectra/flux"][rr], s["spectra/ivar"][rr])
                f, iv = pp["flux"], pp["ivar"]
                if len(wave) == len(LOWRES_WAVE):
                    mode = attrs.get("lowres", "subsample")  # data.lowres of the models
                    f, iv = lowres(f, mode), lowres(iv, mode)
            else:
                f, iv = observed_on_grid(
                    loglam,
                    s["spectra/flux"][rr],
                    s["spectra/ivar"][rr],
                    wave,
                    tuple(win) if win is not None else None,
                )
            obs_f[a : a + len(rr)] = f
            obs_iv[a : a + len(rr)] = iv
        spectra["flux_obs"] = obs_f[inv]
        spectra["ivar_obs"] = obs_iv[inv]
        survey_name = str(s.attrs.get("survey", ""))
    table.update(extra_table)
    funit = attrs.get("flux_unit", "")
    units.update(
        {
            "flux_pred": funit,
            "flux_obs": FLUX_UNIT if win is None else "",
            "ivar_obs": IVAR_UNIT if win is None else "",
        }
    )
    for k in spectra:
        units.setdefault(k, funit)
    prov = {
        "observed_processing": "datasets.preprocess.preprocess_spectra" if paper_grid else "observed_on_grid",
        **attrs,
        "predictions": str(predictions_h5),
        "survey_file": str(survey_h5),
        "survey": survey_name,
        **(header or {}),
    }
    return write_spectra_fits(out_fits, table, spectra, wave, header=prov, units=units)


# Registers the specutils reader, format "galspec-results" (Spectrum.read / SpectrumList.read of these files);
# it defers to the first `import specutils` rather than importing it here, and is a no-op without specutils.
from utils import results_specutils as _results_specutils  # noqa: E402,F401
