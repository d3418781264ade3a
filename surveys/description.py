"""What the code needs to know about a survey: bands, pixels, the wavelength grids and the stage lengths.

A :class:`SurveyDescription` holds the facts that the schema (``datasets/schema.py``), the preprocessing
(``datasets/preprocess.py``), the photometry (``datasets/photometry.py``), the datasets and the networks
(``models/``) used to spell as literals. :data:`SDSS` is the project's one instance, and :data:`SURVEY`
names the survey this build of the project is for: the module-level constants of those files
(``BANDS``, ``N_BANDS``, ``IMAGE_SIZE``, ``PIXEL_SCALE_ARCSEC``, ``LOGLAM0``, ``DLOGLAM``, ``N_LOGLAM``,
``FULLRES_WAVE``, ``N_FULLRES``, ``N_LOWRES``, ...) are aliases derived from it.

A new survey (e.g. DESI with grz imaging) is a new builder folder beside ``surveys/mock`` and
``surveys/sdss`` that writes the schema, plus one ``SurveyDescription(...)`` here. This module imports
nothing from the project, so every package may read it (``datasets`` and ``models`` do; the builders in
``surveys/mock`` and ``surveys/sdss`` sit above ``datasets``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: the two generation stages: low resolution ("lr") and super-resolution / full resolution ("sr")
STAGES = ("lr", "sr")


@dataclass(frozen=True)
class SurveyDescription:
    """One survey's imaging and spectroscopy, as the data layer and the networks see it.

    Parameters
    ----------
    name : survey name (``"SDSS"``).
    bands : imaging bands, blue to red, one character each (``"ugriz"``); the order of the image planes.
    pixel_scale_arcsec : image pixel scale (arcsec / pixel).
    image_size : cutout side in pixels (square cutouts, galaxy centred).
    image_unit : unit of the image pixels (``"nanomaggy"``).
    asinh_softening_nmgy : asinh-magnitude softening per band, nanomaggies (``datasets.photometry``).
    reference_band : the band whose light moments give size, ellipticity and centroid offset.
    fibre_radius_arcsec : radius of the spectroscopic fibre (the photometry's colour-gradient aperture).
    rgb_bands : the bands shown as red, green, blue in colour images (``"irg"``).
    loglam_start, loglam_step, n_loglam : the survey file's spectrum grid, log10(lambda / Angstrom) =
        ``loglam_start + loglam_step * i``, i = 0..n_loglam-1 (vacuum, observed frame).
    wave_start, wave_step, n_wave : the networks' full-resolution grid, lambda = ``wave_start + wave_step
        * i`` Angstrom, i = 0..n_wave-1 (vacuum, observed frame); preprocessing resamples onto it.
    lowres_stride : the low-resolution stage keeps every ``lowres_stride``-th point of that grid.
    """

    name: str
    bands: str
    pixel_scale_arcsec: float
    image_size: int
    image_unit: str
    asinh_softening_nmgy: tuple[float, ...]
    reference_band: str
    fibre_radius_arcsec: float
    rgb_bands: str
    loglam_start: float
    loglam_step: float
    n_loglam: int
    wave_start: float
    wave_step: float
    n_wave: int
    lowres_stride: int

    def __post_init__(self):
        if not self.bands or len(set(self.bands)) != len(self.bands):
            raise ValueError(f"survey {self.name}: bands: must be distinct single characters, "
                             f"got {self.bands!r}")
        if len(self.asinh_softening_nmgy) != len(self.bands):
            raise ValueError(f"survey {self.name}: asinh_softening_nmgy: {len(self.asinh_softening_nmgy)} "
                             f"values for {len(self.bands)} bands {self.bands!r}")
        if len(self.rgb_bands) != 3 or not set(self.rgb_bands) <= set(self.bands):
            raise ValueError(f"survey {self.name}: rgb_bands: 3 of {self.bands!r}, got {self.rgb_bands!r}")
        if self.reference_band not in self.bands:
            raise ValueError(f"survey {self.name}: reference_band: {self.reference_band!r} "
                             f"not in {self.bands!r}")
        for field in ("pixel_scale_arcsec", "image_size", "fibre_radius_arcsec", "loglam_step", "n_loglam",
                      "wave_step", "n_wave", "lowres_stride"):
            if not getattr(self, field) > 0:
                raise ValueError(f"survey {self.name}: {field}: must be > 0, got {getattr(self, field)}")

    @property
    def n_bands(self) -> int:
        """Number of imaging bands (image planes)."""
        return len(self.bands)

    @property
    def rgb_index(self) -> tuple[int, int, int]:
        """Image-plane indices of the red, green and blue channels of a colour image."""
        return tuple(self.bands.index(b) for b in self.rgb_bands)

    @property
    def wave_end(self) -> float:
        """Upper edge of the full-resolution grid, Angstrom (one step past its last point)."""
        return self.wave_start + self.wave_step * self.n_wave

    @property
    def n_lowres(self) -> int:
        """Points of the low-resolution grid (every ``lowres_stride``-th full-resolution point)."""
        return math.ceil(self.n_wave / self.lowres_stride)

    @property
    def stage_lengths(self) -> dict[str, int]:
        """Spectrum length per stage, ``{"lr": n_lowres, "sr": n_wave}`` (SDSS: 563 and 4500)."""
        return {"lr": self.n_lowres, "sr": self.n_wave}

    def spectrum_length(self, stage: str) -> int:
        """Spectrum length of ``stage`` ("lr" or "sr")."""
        if stage not in STAGES:
            raise ValueError(f"stage: must be one of {', '.join(STAGES)}, got {stage!r}")
        return self.stage_lengths[stage]

    def loglam_grid(self) -> np.ndarray:
        """The survey file's spectrum grid, log10(lambda / Angstrom), float64 (n_loglam,)."""
        return self.loglam_start + self.loglam_step * np.arange(self.n_loglam, dtype=np.float64)

    def wave_grid(self) -> np.ndarray:
        """The networks' full-resolution wavelength grid in Angstrom, float64 (n_wave,)."""
        return self.wave_start + self.wave_step * np.arange(self.n_wave, dtype=np.float64)


#: SDSS legacy imaging and spectroscopy, as the paper (Doorenbos et al. 2024) uses them
SDSS = SurveyDescription(
    name="SDSS",
    bands="ugriz",
    pixel_scale_arcsec=0.396,
    image_size=64,
    image_unit="nanomaggy",
    # Lupton et al. 1999; SDSS DR7 b = 1.4, 0.9, 1.2, 1.8, 7.4 x 1e-10 maggies, here in nanomaggies
    asinh_softening_nmgy=(0.14, 0.09, 0.12, 0.18, 0.74),
    reference_band="r",
    fibre_radius_arcsec=1.5,  # 3" fibres
    rgb_bands="irg",
    # SDSS's global grid is 3.5 + 1e-4 k (69 km/s per pixel); the file keeps k = 800 .. 4637, i.e.
    # 3801.9 .. 9195 Angstrom
    loglam_start=3.5800,
    loglam_step=1e-4,
    n_loglam=3838,
    # the paper's 1 Angstrom grid 4000..8499 Angstrom; low resolution every 8th point (563 points)
    wave_start=4000.0,
    wave_step=1.0,
    n_wave=4500,
    lowres_stride=8,
)

#: the survey the schema, the preprocessing and the networks of this build are for
SURVEY = SDSS
