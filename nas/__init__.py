"""Hardware-aware search over EfficientFormer architectures.

The architecture spec and the search spaces live in :mod:`supernet` (the lowest layer, so that
:mod:`latency_lut` can use them too); they are re-exported here for users of the search API.
"""

from supernet import ArchSpec, EfnasError, SearchSpace, build_model, load_arch, load_space

__all__ = ["ArchSpec", "EfnasError", "SearchSpace", "build_model", "load_arch", "load_space"]
