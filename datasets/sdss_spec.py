"""Reading SDSS spec / spec-lite FITS files (DR8+ format, SDSS-I/II and BOSS).

HDU1 (COADD) holds loglam, flux [1e-17 erg/s/cm2/Angstrom], ivar, and_mask; HDU2 holds the pipeline's
redshift and classification (named SPECOBJ in SDSS-I/II files, SPALL in some BOSS files).

Pixel mask
----------
``and_mask`` holds SPPIXMASK bits (SDSS DR8+ bitmask documentation; the authoritative list is
``sdssMaskbits.par`` of the SDSS idlutils). Bits 0-15 describe the fibre, 16-31 the pixel. Most are
informational: the pipeline already folded them into ``ivar`` (a rejected pixel has ivar = 0, a pixel under
a bright sky line has a larger variance). Dropping every pixel with any bit set threw away good data --
BRIGHTSKY alone flags every pixel under a strong sky line (180 of 3832 pixels of spec-0266-51602-0573),
and NEARBADPIXEL/MANYBADCOLUMNS flag whole stretches whose data are fine. So :func:`read_spec` trusts
ivar and additionally masks only the bits that say the VALUE is bad (:data:`BAD_PIXEL_BITS`):

* fibre unusable: NOPLUG (0, fibre not in the plug map), BADTRACE (1), BADFLAT (2, low counts in the
  fibre flat), BADARC (3, bad wavelength solution);
* no or rejected data: FULLREJECT (18), NOSKY (22), NODATA (24) -- each documented "(INVVAR=0)" -- and
  COMBINEREJ (25, rejected in the combine B-spline; in the AND mask: in every exposure);
* calibration or sky subtraction dominates the value: BADFLUXFACTOR (26, low flux-calibration factor),
  BADSKYCHI (27, relative chi^2 > 3 of the sky residuals at this wavelength), REDMONSTER (28, a
  contiguous region of such sky residuals) -- the two bits idlutils' ``skymask`` masks.

Kept (ivar says how good they are): MANYBADCOLUMNS (4), MANYREJECTED (5), LARGESHIFT (6), BADSKYFIBER (7),
NEARWHOPPER (8), WHOPPER (9), SMEARIMAGE/SMEARHIGHSN/SMEARMEDSN (10-12), NEARBADPIXEL (16), LOWFLAT (17),
PARTIALREJECT (19), SCATTEREDLIGHT (20), CROSSTALK (21), BRIGHTSKY (23, sky > flux + 10 sigma: the pixel
is noisy, and its ivar says so).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
from astropy.io import fits

from datasets.schema import DLOGLAM, LOGLAM0, N_LOGLAM

#: SPPIXMASK bit numbers (SDSS ``sdssMaskbits.par``).
SPPIXMASK = {"NOPLUG": 0, "BADTRACE": 1, "BADFLAT": 2, "BADARC": 3, "MANYBADCOLUMNS": 4, "MANYREJECTED": 5,
             "LARGESHIFT": 6, "BADSKYFIBER": 7, "NEARWHOPPER": 8, "WHOPPER": 9, "SMEARIMAGE": 10,
             "SMEARHIGHSN": 11, "SMEARMEDSN": 12, "NEARBADPIXEL": 16, "LOWFLAT": 17, "FULLREJECT": 18,
             "PARTIALREJECT": 19, "SCATTEREDLIGHT": 20, "CROSSTALK": 21, "NOSKY": 22, "BRIGHTSKY": 23,
             "NODATA": 24, "COMBINEREJ": 25, "BADFLUXFACTOR": 26, "BADSKYCHI": 27, "REDMONSTER": 28}
#: The bits whose pixels :func:`read_spec` masks (see the module docstring for why these).
BAD_PIXEL_BITS = ("NOPLUG", "BADTRACE", "BADFLAT", "BADARC", "FULLREJECT", "NOSKY", "NODATA", "COMBINEREJ",
                  "BADFLUXFACTOR", "BADSKYCHI", "REDMONSTER")
#: ``sum(1 << bit)`` of :data:`BAD_PIXEL_BITS`.
BAD_PIXEL_MASK = sum(1 << SPPIXMASK[b] for b in BAD_PIXEL_BITS)
#: Every bit: what read_spec masked before the fix (kept for comparisons; drops good pixels).
ANY_BIT_MASK = (1 << 32) - 1

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


def read_spec(path: str | os.PathLike, bad_mask: int = BAD_PIXEL_MASK) -> SDSSSpectrum:
    """Read an SDSS spec or spec-lite file.

    Parameters
    ----------
    path : the FITS file.
    bad_mask : and_mask bits that make a pixel bad (ivar set to 0); default :data:`BAD_PIXEL_MASK`.
        Pixels without such a bit keep the file's ivar (ivar <= 0 or non-finite flux/ivar -> ivar 0).
        ``ANY_BIT_MASK`` reproduces the old behaviour of dropping any flagged pixel.

    Returns
    -------
    SDSSSpectrum (``and_mask`` is the file's, unchanged).
    """
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
    bad = (mask.astype(np.int64) & int(bad_mask)) != 0
    ivar = np.where(~bad & np.isfinite(flux) & np.isfinite(ivar) & (ivar > 0), ivar, 0.0)
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
