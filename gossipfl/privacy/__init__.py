"""Differential privacy for node updates (``dp``: clipping and Gaussian noise; ``accountant``: ε
with dp-accounting) and the privacy audit (``audit``).

Import the submodules directly: this package imports nothing eagerly, so a node that does not use
DP never loads dp-accounting (and SciPy) at start-up.
"""
