"""Reading SDSS spec / spec-lite FITS files (DR8+ format, SDSS-I/II and BOSS).

HDU1 (COADD) holds loglam, flux [1e-17 erg/s/cm2/Angstrom], ivar, and_mask; HDU2 holds the pipeline's
redshift and classification (named SPECOBJ in SDSS-I/II files, SPALL in some BOSS files).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
from astropy.io import fits

from datasets.schema import DLOGLAM, LOGLAM0, N_LOGLAM

META_COLUMNS = ("Z", "Z_ERR", "ZWARNING", "CLASS", "SUBCLASS", "VDISP", "VDISP_ERR", "PLATE", "MJD",
                "FIBERID", "PLUG_RA", "PLUG_DEC", "SPECOBJID", "RUN2D")


class SpecFileError(ValueError):
    """A spectrum file that cannot be read; the message names the file and the field."""


@dataclass
class SDSSSpectrum:
    """One SDSS spectrum on its own log-lambda grid (vacuum, observed frame)."""
    path: str
    loglam: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray
    and_mask: np.ndarray
    meta: dict = field(default_factory=dict)

    @property
    def wave(self) -> np.ndarray:
        """Vacuum wavelength in Angstrom."""
        return 10.0 ** self.loglam

    @property
    def z(self) -> float:
        return float(self.meta.get("Z", np.nan))


def read_spec(path: str | os.PathLike) -> SDSSSpectrum:
    """Read an SDSS spec or spec-lite file; masked pixels (and_mask != 0) get ivar = 0."""
    path = str(path)
    try:
        hdul = fits.open(path, memmap=False)
    except (OSError, ValueError) as e:
        raise SpecFileError(f"{path}: file: not a readable FITS file: {e}") from None
    with hdul:
        if len(hdul) < 2 or hdul[1].data is None:
            raise SpecFileError(f"{path}: HDU1 (COADD): missing")
        data = hdul[1].data
        names = {n.lower() for n in data.columns.names}
        for col in ("loglam", "flux", "ivar"):
            if col not in names:
                raise SpecFileError(f"{path}: COADD/{col}: missing column (have {sorted(names)})")
        loglam = np.asarray(data["loglam"], dtype=np.float64)
        flux = np.asarray(data["flux"], dtype=np.float64)
        ivar = np.asarray(data["ivar"], dtype=np.float64)
        mask = np.asarray(data["and_mask"]) if "and_mask" in names else np.zeros(len(flux), dtype=np.int32)
        meta: dict = {}
        if len(hdul) > 2 and hdul[2].data is not None and hdul[2].name in ("SPECOBJ", "SPALL"):
            row = hdul[2].data[0]
            for col in META_COLUMNS:
                if col in hdul[2].columns.names:
                    v = row[col]
                    meta[col] = v.strip() if isinstance(v, str) else v.item() if hasattr(v, "item") else v
            meta["HDU2"] = hdul[2].name
    ivar = np.where((mask == 0) & np.isfinite(flux) & np.isfinite(ivar) & (ivar > 0), ivar, 0.0)
    flux = np.where(np.isfinite(flux), flux, 0.0)
    return SDSSSpectrum(path=path, loglam=loglam, flux=flux, ivar=ivar, and_mask=mask, meta=meta)


def to_schema_grid(spec: SDSSSpectrum) -> tuple[np.ndarray, np.ndarray]:
    """Place a spectrum on the schema's common grid (LOGLAM0 + 1e-4 i) by index offset.

    SDSS spectra are sampled on the global grid 3.5 + 1e-4 k, so this is an exact shift, not a
    resampling. Pixels outside the spectrum's coverage get flux 0 and ivar 0.
    """
    idx = np.rint((spec.loglam - LOGLAM0) / DLOGLAM).astype(np.int64)
    if np.abs(spec.loglam - (LOGLAM0 + DLOGLAM * idx)).max() > 0.1 * DLOGLAM:
        raise SpecFileError(f"{spec.path}: COADD/loglam: not on the SDSS 1e-4 dex global grid "
                            f"(first value {spec.loglam[0]:.6f})")
    ok = (idx >= 0) & (idx < N_LOGLAM)
    flux = np.zeros(N_LOGLAM, dtype=np.float32)
    ivar = np.zeros(N_LOGLAM, dtype=np.float32)
    flux[idx[ok]] = spec.flux[ok]
    ivar[idx[ok]] = spec.ivar[ok]
    return flux, ivar
