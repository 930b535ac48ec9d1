"""pruninglib: the small helper package behind the Pruning Notebooks.

Every lesson in ``notebooks/`` imports it; the notebooks show only what teaches.
"""
from pruninglib.utils import choose_mode, describe_device, get_device, set_seed
from pruninglib.run.record import record

__version__ = "0.1.0"
__all__ = ["choose_mode", "get_device", "set_seed", "describe_device", "record", "__version__"]
