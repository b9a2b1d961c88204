"""The probabilistic model and its inference.

* :mod:`~fatebias_core.model.fate_model`: the MOI-aware fate model (Pyro)
* :mod:`~fatebias_core.model.guides`: variational families
* :mod:`~fatebias_core.model.inference`: SVI, checkpoints, convergence
* :mod:`~fatebias_core.model.laplace`: the Laplace refinement and its robust covariance
* :mod:`~fatebias_core.model.posterior`: gene/day and guide/day posterior summaries and exports
"""
