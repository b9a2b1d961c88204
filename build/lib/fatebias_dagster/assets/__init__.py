"""Software-defined assets: sources, the chain, and the simulation study."""
