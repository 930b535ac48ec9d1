"""Core machinery, model-agnostic and free of any paper's idea.

- :mod:`~pruninglib.core.graph`: which layers of a model are prunable and who consumes their outputs;
- :mod:`~pruninglib.core.gates`: multiplicative gates on units, to switch them off without removing them;
- :mod:`~pruninglib.core.surgery`: remove units for real (a smaller dense network);
- :mod:`~pruninglib.core.metrics`: parameters, MACs, size on disk, and all latency timing.
"""
