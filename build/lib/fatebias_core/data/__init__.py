"""Experiments: AnnData + guide map -> filtered cells and the guide embedding; simulated experiments with known truth."""
