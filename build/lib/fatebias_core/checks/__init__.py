"""Checks of a fit: held-out fit, permutation control, sanity checks, NTC calibration, and their verdicts."""
