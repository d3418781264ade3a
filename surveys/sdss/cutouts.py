"""5-band 64x64 cutouts (0.396"/px, nanomaggies) from SDSS calibrated frames.

Each band is resampled through its OWN frame WCS (the u,g,r,i,z frames of one field are offset from each
other by up to ~tens of arcsec on the sky, so one set of pixel offsets would misalign the bands) onto one
common target grid: a TAN projection centred on the galaxy's ra/dec, 64x64 pixels of exactly 0.396".
The galaxy position is the geometric centre of the cutout (0-based pixel 31.5, 31.5).

Orientation: ``"native"`` (default) takes the reference band's (r) pixel axes, so for r the resampling is a
pure sub-pixel shift and for the other bands a sub-pixel shift plus a tiny (< 0.1 deg) rotation;
``"north"`` makes north up, east left (a rotation for every band).

Interpolation: bilinear (``scipy.ndimage.map_coordinates(order=1)``); frames are surface-brightness images
at the target's pixel scale, so bilinear conserves nanomaggies per pixel. It slightly smooths the noise
(sub-pixel shift), which is the price of band-to-band alignment.

Edges: a galaxy whose 64x64 footprint needs any pixel outside a band's frame is NOT padded -- the cutout is
rejected with a reason naming band and frame (photoObj's field is the primary detection, so this happens
mostly near camcol borders; the adjacent field is not stitched in this version).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
from astropy.wcs import WCS
from scipy.ndimage import map_coordinates

from surveys.description import SDSS
from surveys.sdss.download import InvalidFileError, frame_relpath, open_frame

BANDS = SDSS.bands  # "ugriz"
SIZE = SDSS.image_size  # 64
PIXEL_SCALE_ARCSEC = SDSS.pixel_scale_arcsec  # 0.396


class CutoutError(ValueError):
    """A galaxy whose cutout cannot be made (edge, missing or broken frame); message names band and file."""


def target_wcs(
    ra: float,
    dec: float,
    size: int = SIZE,
    scale_arcsec: float = PIXEL_SCALE_ARCSEC,
    cd_like: np.ndarray | None = None,
) -> WCS:
    """TAN WCS of the output grid centred on (ra, dec) at pixel (size+1)/2 (1-based).

    ``cd_like``: a 2x2 CD matrix whose orientation (and parity) to copy; rescaled to ``scale_arcsec``.
    None: north up, east left.
    """
    s = scale_arcsec / 3600.0
    if cd_like is None:
        cd = np.array([[-s, 0.0], [0.0, s]])
    else:
        cd = np.asarray(cd_like, dtype=float)
        cd = cd * (s / np.sqrt(abs(np.linalg.det(cd))))
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [float(ra), float(dec)]
    w.wcs.crpix = [(size + 1) / 2.0, (size + 1) / 2.0]
    w.wcs.cd = cd
    return w


def resample_band(image: np.ndarray, wcs: WCS, target: WCS, size: int = SIZE) -> np.ndarray:
    """Bilinear resampling of one frame onto ``target``; CutoutError if the footprint leaves the frame."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    ra, dec = target.all_pix2world(xx.ravel(), yy.ravel(), 0)
    x, y = wcs.all_world2pix(ra, dec, 0)
    ny, nx = image.shape
    if not (
        np.isfinite(x).all() and x.min() >= 0 and x.max() <= nx - 1 and y.min() >= 0 and y.max() <= ny - 1
    ):
        raise CutoutError(
            f"footprint x {x.min():.1f}..{x.max():.1f}, y {y.min():.1f}..{y.max():.1f} "
            f"leaves the {nx}x{ny} frame"
        )
    out = map_coordinates(image, [y, x], order=1, mode="nearest")
    return out.reshape(size, size).astype(np.float32)


def make_cutout(
    frames: dict[str, tuple[np.ndarray, WCS]],
    ra: float,
    dec: float,
    size: int = SIZE,
    orientation: str = "native",
    ref_band: str = "r",
) -> np.ndarray:
    """A (5, size, size) float32 ugriz cutout centred on (ra, dec) from one field's frames.

    Parameters
    ----------
    frames : band -> (image in nanomaggies, its WCS), all five bands.
    ra, dec : galaxy position (deg).
    orientation : "native" (reference band's pixel axes) or "north".
    ref_band : the band whose axes "native" follows.

    Raises
    ------
    CutoutError : footprint outside a frame, or non-finite pixels inside it.
    """
    if orientation not in ("native", "north"):
        raise ValueError(f"make_cutout: orientation={orientation!r}, expected 'native' or 'north'")
    cd = None
    if orientation == "native":
        cd = frames[ref_band][1].pixel_scale_matrix
    target = target_wcs(ra, dec, size, PIXEL_SCALE_ARCSEC, cd)
    cube = np.empty((len(BANDS), size, size), dtype=np.float32)
    for k, b in enumerate(BANDS):
        img, w = frames[b]
        try:
            cube[k] = resample_band(img, w, target, size)
        except CutoutError as e:
            raise CutoutError(f"band {b}: {e}") from None
        if not np.isfinite(cube[k]).all():
            raise CutoutError(f"band {b}: non-finite pixels in the cutout")
    return cube


class FrameCache:
    """Small LRU cache of decompressed frames (5 bands x ~12 MB per field); process galaxies field-sorted."""

    def __init__(self, root: str | os.PathLike, release: str = "DR16", max_fields: int = 4):
        self.root = Path(root)
        self.release = release
        self.max_fields = max_fields
        self._cache: OrderedDict = OrderedDict()

    def field(self, run: int, camcol: int, field: int, rerun: int = 301) -> dict[str, tuple[np.ndarray, WCS]]:
        """All five bands of one field; raises CutoutError naming the missing/broken file."""
        key = (int(run), int(camcol), int(field), int(rerun))
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        out = {}
        for b in BANDS:
            p = self.root / frame_relpath(run, camcol, field, b, rerun, self.release)
            plain = p.with_suffix("")  # frame-*.fits from a parallel `bunzip2 -k`: skips the decompression
            if plain.exists():
                p = plain
            if not p.exists():
                raise CutoutError(f"band {b}: frame {p}: not downloaded")
            try:
                img, hdr = open_frame(p)
            except InvalidFileError as e:
                raise CutoutError(f"band {b}: {e}") from None
            out[b] = (img, WCS(hdr))
        self._cache[key] = out
        while len(self._cache) > self.max_fields:
            self._cache.popitem(last=False)
        return out
