"""The real-SDSS data route: catalogue SQL, downloads, frame cutouts and the HDF5 build.

Steps (each a ``python -m surveys.sdss <subcommand>``; see docs/REAL_DATA.md):

1. ``sql`` / ``catalog``   -- the DR16/DR17 SkyServer query of the paper's sample (:mod:`.catalog`)
2. ``download``            -- spec-lite + calibrated frame files from the SAS, resumable (:mod:`.download`)
3. ``build``               -- catalogue + files -> the project's HDF5 survey schema (:mod:`.build`)
4. ``import-pasquet``      -- the same, with images from the Pasquet et al. (2019) cube
5. ``results-to-fits``     -- predicted + observed spectra with catalogue columns (:mod:`utils.results_fits`)
"""
