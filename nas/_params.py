"""Optuna parameters <-> ArchSpec: the one place where a trial's parameters become an architecture.

Every stage ``i`` (1-based, as in every message of the tool) has ``width_i`` and ``mlp_ratio_i``
(categorical over the space's choices). Stages before the last have ``depth_i`` (an integer
range). The last stage's depth and its number of Meta3D blocks are one categorical parameter,
``blocks_N``, whose choices are exactly the valid pairs written ``"depth:meta3d"`` (``"2:1"`` is two
blocks, the second of them Meta3D). So every point a sampler can propose is a valid architecture of
the space: no rejected or wasted trials, and the search space is the same for every trial, which
multivariate TPE and NSGA-II need.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution

from supernet.errors import EfnasError
from supernet.space import ArchSpec, SearchSpace

__all__ = ["blocks_choice", "params_from_spec", "search_distributions", "spec_from_params", "suggest_spec"]


def blocks_choice(depth: int, num_meta3d: int) -> str:
    """The value of the last stage's ``blocks_N`` parameter for ``depth`` blocks, ``num_meta3d`` of them Meta3D."""
    return f"{depth}:{num_meta3d}"


def search_distributions(space: SearchSpace) -> dict[str, BaseDistribution]:
    """The Optuna distributions of ``space``, in the order they are suggested."""
    n = space.num_stages
    distributions: dict[str, BaseDistribution] = {}
    for i, stage in enumerate(space.stages, 1):
        distributions[f"width_{i}"] = CategoricalDistribution(stage.widths)
        if i < n:
            distributions[f"depth_{i}"] = IntDistribution(stage.depth_min, stage.depth_max)
        else:
            distributions[f"blocks_{i}"] = CategoricalDistribution([blocks_choice(d, m) for d, m in space.last_stage_choices()])
        distributions[f"mlp_ratio_{i}"] = CategoricalDistribution(stage.mlp_ratios)
    return distributions


def spec_from_params(space: SearchSpace, params: Mapping[str, Any]) -> ArchSpec:
    """The architecture a trial's parameters describe (validated against ``space``)."""
    n = space.num_stages
    try:
        widths = [params[f"width_{i}"] for i in range(1, n + 1)]
        ratios = [params[f"mlp_ratio_{i}"] for i in range(1, n + 1)]
        depths = [params[f"depth_{i}"] for i in range(1, n)]
        last_depth, num_meta3d = (int(part) for part in str(params[f"blocks_{n}"]).split(":"))
    except (KeyError, ValueError) as exc:
        raise EfnasError(f"trial parameters {dict(params)} do not describe an architecture of space '{space.name}' ({exc})") from None
    return space.spec(widths, [*depths, last_depth], num_meta3d, ratios)


def params_from_spec(space: SearchSpace, spec: ArchSpec) -> dict[str, Any]:
    """The trial parameters of ``spec`` (what :func:`spec_from_params` maps back to ``spec``)."""
    space.validate(spec)
    n = space.num_stages
    params: dict[str, Any] = {}
    for i in range(1, n + 1):
        params[f"width_{i}"] = spec.widths[i - 1]
        if i < n:
            params[f"depth_{i}"] = spec.depths[i - 1]
        else:
            params[f"blocks_{i}"] = blocks_choice(spec.depths[-1], spec.num_meta3d)
        params[f"mlp_ratio_{i}"] = spec.mlp_ratios[i - 1]
    return params


def suggest_spec(trial: optuna.Trial, space: SearchSpace) -> ArchSpec:
    """Let the study's sampler choose every parameter of ``trial``; returns the architecture."""
    params: dict[str, Any] = {}
    for name, distribution in search_distributions(space).items():
        if isinstance(distribution, IntDistribution):
            params[name] = trial.suggest_int(name, distribution.low, distribution.high)
        else:
            assert isinstance(distribution, CategoricalDistribution)
            params[name] = trial.suggest_categorical(name, distribution.choices)
    return spec_from_params(space, params)
