"""The paper's science read-out from generated spectra, scored against the truth (see docs/EVALUATION.md)."""
