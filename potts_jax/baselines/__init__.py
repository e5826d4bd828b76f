"""Baselines the solver is measured against.

``graphcut`` hard labels by alpha-expansion (PyMaxflow), ``quadratic`` the
exact minimiser of the quadratic H_Q + P_Q energy.
"""
