"""The architecture spec, search spaces, the static EfficientFormer, the elastic supernet and its training.

>>> from supernet import TrainConfig, train
>>> result = train(TrainConfig(space="tiny", out="runs/tiny", epochs=1))  # doctest: +SKIP

Importing :func:`train` here makes ``supernet.train`` the function; the module stays importable as
``from supernet.train import ...``.
"""

from supernet.errors import EfnasError
from supernet.model import EfficientFormer, build_model, count_macs, count_params
from supernet.space import ArchSpec, SearchSpace, StageChoices, builtin_space_names, load_arch, load_space
from supernet.train import TrainConfig, TrainResult, train

__all__ = [
    "ArchSpec",
    "EfficientFormer",
    "EfnasError",
    "SearchSpace",
    "StageChoices",
    "TrainConfig",
    "TrainResult",
    "build_model",
    "builtin_space_names",
    "count_macs",
    "count_params",
    "load_arch",
    "load_space",
    "train",
]
