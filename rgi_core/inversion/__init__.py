"""Inversion: per-method configs, the loss terms, degradation operators, the solver and its results.

Start at :func:`rgi_core.inversion.solver.invert`; a method is a config (:mod:`.config`) whose objective
(:mod:`.objectives`) names its loss terms (:mod:`.losses`) and the parameter groups it optimises.
"""
