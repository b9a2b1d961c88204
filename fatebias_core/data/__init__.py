"""Loading an experiment: AnnData + guide map -> filtered cells and the guide embedding."""
