"""The spectroscopic toolbox: redshift, Lick indices / D4000, pPXF fits, BPT classification.

Every function takes observed-frame VACUUM wavelengths in Angstrom; see docs/ANALYSIS.md.
"""
from analysis._common import observed_fwhm, sdss_fwhm
from analysis.bpt import BPT_NAMES, bpt_xy, classify, classify_fit, kauffmann03, kewley01
from analysis.fitting import LINE_NAMES, FitResult, fit_spectrum
from analysis.indices import BREAK_BANDS, LICK_BANDS, band_mean, d4000, dn4000, lick_indices
from analysis.redshift import RedshiftResult, fit_redshift, fit_redshifts

__all__ = ["BPT_NAMES", "BREAK_BANDS", "FitResult", "LICK_BANDS", "LINE_NAMES", "RedshiftResult", "band_mean",
           "bpt_xy", "classify", "classify_fit", "d4000", "dn4000", "fit_redshift", "fit_redshifts",
           "fit_spectrum", "kauffmann03", "kewley01", "lick_indices", "observed_fwhm", "sdss_fwhm"]
