"""specutils reader for the results FITS files (``utils/results_fits.py``): format ``"galspec-results"``.

After ``import utils.results_fits`` (which imports this module)::

    from specutils import Spectrum, SpectrumList
    sp = Spectrum.read("outputs/generated.fits", format="galspec-results")          # all galaxies
    obs = Spectrum.read("outputs/generated.fits", format="galspec-results", column="flux_obs")
    per_galaxy = SpectrumList.read("outputs/generated.fits", format="galspec-results")

``Spectrum.read`` returns ONE ``Spectrum`` holding every galaxy: flux (N, L) on the shared wavelength grid
(specutils' idiom for many spectra on one axis), ``meta["galaxies"]`` the per-galaxy columns as an astropy
Table (row i <-> flux[i]). ``SpectrumList.read`` returns N one-dimensional spectra, one per galaxy, each with
``meta["galaxy"]`` (that row's columns as a dict). Both take:

``column``
    a vector column of SPECTRA (default ``flux_pred``; also ``flux_obs``, ...) or a candidate cube HDU
    (``FULLRES_CANDIDATES``, ``LOWRES_CANDIDATES``: flux (N, K, L_c) on the cube's own grid, K candidates per
    galaxy, in the unit of ``flux_pred``).
``ivar_column``
    the inverse-variance column that becomes an ``InverseVariance`` uncertainty; default: ``ivar_<X>`` for
    ``flux_<X>`` when the file has it (so ``flux_obs`` comes with ``ivar_obs``); ``""`` for none.
``std_column``
    the standard-deviation column that becomes a ``StdDevUncertainty`` when there is no inverse variance;
    default: ``<column>_std`` when the file has it (so ``flux_pred`` comes with ``flux_pred_std``, the
    per-pixel spread of the M full-res candidates, generation/run.py); ``""`` for none. An all-NaN
    column (M = 1: no spread to measure) gives no uncertainty.

Every ``Spectrum`` also carries ``meta["header"]`` (the file's provenance dict), ``meta["column"]`` and the
uncertainty's source (``meta["ivar_column"]`` or ``meta["std_column"]``, else None). The
file is recognised without ``format=`` too (primary ORIGIN = 'galspec' with SPECTRA and WAVELENGTH HDUs).

Why registration waits for specutils: importing specutils takes ~3 s (gwcs, asdf, ndcube), which the
generation and evaluation workers should not pay. So if specutils is already imported the reader is
registered at once; otherwise a one-shot import hook registers it right after the first ``import specutils``.
Without specutils installed nothing happens and nothing fails.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys

import numpy as np
from astropy import units as u
from astropy.io import fits

FORMAT = "galspec-results"


def _identify(origin, *args, **kwargs) -> bool:
    """True for a results file: primary ORIGIN 'galspec' plus SPECTRA and WAVELENGTH HDUs."""
    target = args[0] if args else None
    if isinstance(target, fits.HDUList):
        hdul, close = target, False
    elif isinstance(target, (str, os.PathLike)):
        hdul, close = fits.open(target, memmap=False), True
    else:  # astropy's registry passes (path, fileobj, ...): a path comes first, so this is a bare fileobj
        return False
    try:
        return hdul[0].header.get("ORIGIN") == "galspec" and "SPECTRA" in hdul and "WAVELENGTH" in hdul
    finally:
        if close:
            hdul.close()


def _uncertainty(r: dict, file_obj, column: str, ivar_column: str | None, std_column: str | None):
    """The uncertainty of a SPECTRA column: (InverseVariance / StdDevUncertainty / None, ivar column name or
    None, std column name or None)."""
    from astropy.nddata import InverseVariance, StdDevUncertainty

    from utils.results_fits import ResultsFileError

    spectra, unit = r["spectra"], u.Unit(r["units"].get(column) or "")
    if ivar_column is None:
        guess = "ivar_" + column[len("flux_"):] if column.startswith("flux_") else None
        ivar_column = guess if guess in spectra and not std_column else ""
    if std_column is None:
        std_column = f"{column}_std" if f"{column}_std" in spectra and not ivar_column else ""
    for name in (ivar_column, std_column):
        if name and name not in spectra:
            raise ResultsFileError(f"{file_obj}: {'ivar' if name == ivar_column else 'std'}_column: {name!r} "
                                   f"is not a spectrum column on the grid of {column!r}")
    if ivar_column and std_column:
        raise ResultsFileError(f"{file_obj}: ivar_column {ivar_column!r} and std_column {std_column!r}: "
                               "give one uncertainty, not two")
    if ivar_column:
        return InverseVariance(spectra[ivar_column] * unit**-2), ivar_column, None
    if std_column and np.isfinite(spectra[std_column]).any():
        return StdDevUncertainty(spectra[std_column] * unit), None, std_column
    return None, None, None


def _load(file_obj, column: str, ivar_column: str | None, std_column: str | None = None):
    """(flux Quantity, spectral axis Quantity, uncertainty or None, meta, per-galaxy Table)."""
    from astropy.table import Table

    from utils.results_fits import ResultsFileError, read_spectra_fits

    if not isinstance(file_obj, (str, os.PathLike)):
        # format-less reads get the file astropy's registry opened for identification: read it by name
        name = getattr(file_obj, "name", None)
        if not isinstance(name, (str, os.PathLike)) or not os.path.isfile(name):
            raise ResultsFileError(f"{file_obj!r}: format {FORMAT} reads a file on disk, "
                                   f"not a {type(file_obj).__name__}")
        file_obj = name
    r = read_spectra_fits(file_obj)
    units = r["units"]
    unc, ivar_used, std_used = None, None, None
    if column in r["spectra"]:
        flux = r["spectra"][column] * u.Unit(units.get(column) or "")
        wave = r["wave"]
        unc, ivar_used, std_used = _uncertainty(r, file_obj, column, ivar_column, std_column)
    elif column in r["cubes"]:
        cube, wave = r["cubes"][column]
        flux = cube * u.Unit(units.get("flux_pred") or "")
        if ivar_column or std_column:
            raise ResultsFileError(f"{file_obj}: {'ivar' if ivar_column else 'std'}_column: "
                                   f"{ivar_column or std_column!r} is not a spectrum column on the grid of "
                                   f"{column!r}")
    else:
        have = sorted(r["spectra"]) + sorted(r["cubes"])
        raise ResultsFileError(f"{file_obj}: column: {column!r} is not a spectrum column or cube "
                               f"(have {have})")
    galaxies = Table({k: v for k, v in r["table"].items()})
    for k in galaxies.colnames:
        if units.get(k):
            galaxies[k].unit = units[k]
    meta = {"header": r["header"], "column": column, "ivar_column": ivar_used, "std_column": std_used}
    return flux, np.asarray(wave, dtype=np.float64) * u.AA, unc, meta, galaxies


def read_results(file_obj, column: str = "flux_pred", ivar_column: str | None = None,
                 std_column: str | None = None, **kwargs):
    """All galaxies of a results file as one specutils ``Spectrum`` (flux (N, L) or (N, K, L_c))."""
    from specutils import Spectrum

    flux, wave, unc, meta, galaxies = _load(file_obj, column, ivar_column, std_column)
    return Spectrum(flux=flux, spectral_axis=wave, uncertainty=unc, meta={**meta, "galaxies": galaxies})


def read_results_list(file_obj, column: str = "flux_pred", ivar_column: str | None = None,
                      std_column: str | None = None, **kwargs):
    """One specutils ``Spectrum`` per galaxy (row of SPECTRA), in file order, as a ``SpectrumList``."""
    from specutils import Spectrum, SpectrumList

    flux, wave, unc, meta, galaxies = _load(file_obj, column, ivar_column, std_column)
    out = SpectrumList()
    for i in range(flux.shape[0]):
        row = {k: galaxies[k][i] for k in galaxies.colnames}
        out.append(Spectrum(flux=flux[i], spectral_axis=wave, uncertainty=None if unc is None else unc[i],
                            meta={**meta, "galaxy": row, "row": i}))
    return out


def register() -> bool:
    """Register the reader with specutils' io registry (idempotent). False if specutils is missing."""
    try:
        from specutils import Spectrum, SpectrumList
        from specutils.io.registers import data_loader
    except ImportError:
        return False
    # priority above specutils' generic FITS loaders, so that format-less reads pick this one
    data_loader(FORMAT, identifier=_identify, dtype=Spectrum, extensions=["fits"], priority=20,
                force=True, autogenerate_spectrumlist=False)(read_results)
    data_loader(FORMAT, identifier=_identify, dtype=SpectrumList, extensions=["fits"], priority=20,
                force=True)(read_results_list)
    return True


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: on the first ``import specutils`` it lets the normal finders locate the
    package, and wraps its loader so that :func:`register` runs once specutils is fully imported."""

    def find_spec(self, name, path=None, target=None):
        if name != "specutils":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)  # one shot; also keeps find_spec below from finding us again
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_register(module):
            exec_module(module)
            register()

        spec.loader.exec_module = exec_and_register
        return spec


def register_when_available() -> None:
    """Register now if specutils is imported, else right after it is (never imports it)."""
    if sys.modules.get("specutils") is not None:
        register()
    elif not any(isinstance(f, _RegisterAfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())


register_when_available()
