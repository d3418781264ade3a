"""Compatibility entry point: ``python -m utils.make_mock`` runs :mod:`surveys.mock.make`.

The mock survey lives in ``surveys/mock`` (with the real-SDSS route in ``surveys/sdss``); this module
stays so that existing command lines, scripts and reference-model manifests keep working. It is also the
name written to a mock file's ``builder`` attribute (kept unchanged so files stay byte-identical).
"""
from __future__ import annotations

import sys

from surveys.mock.make import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
