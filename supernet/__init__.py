"""The architecture spec, search spaces, the static EfficientFormer and the elastic supernet."""

from supernet.errors import EfnasError
from supernet.model import EfficientFormer, build_model, count_macs, count_params
from supernet.space import ArchSpec, SearchSpace, StageChoices, builtin_space_names, load_arch, load_space

__all__ = [
    "ArchSpec",
    "EfficientFormer",
    "EfnasError",
    "SearchSpace",
    "StageChoices",
    "build_model",
    "builtin_space_names",
    "count_macs",
    "count_params",
    "load_arch",
    "load_space",
]
