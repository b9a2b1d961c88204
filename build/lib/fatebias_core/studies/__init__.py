"""Studies over many simulated experiments: parameter sweeps and the calibration study."""
