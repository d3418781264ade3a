"""Survey builders: each sub-package writes the project's HDF5 survey schema (``datasets.schema``).

- :mod:`surveys.mock` -- the embedded mock SDSS survey (``python -m surveys.mock.make``; docs/MOCK.md)
- :mod:`surveys.sdss` -- the real-SDSS route (``python -m surveys.sdss <subcommand>``; docs/REAL_DATA.md)

This ``__init__`` imports nothing, so importing one survey never loads another.
"""
