"""Differential privacy (``dp``: DP-SGD for records and the node-level mechanism; ``accountant``:
ε with dp-accounting) and the privacy audit (``audit``).

Import the submodules directly: this package imports nothing eagerly, so a node that does not use
DP never loads dp-accounting (and SciPy) at start-up.
"""
