"""Is a trained supernet healthy? Inherited accuracy of its subnets, and its gap to stand-alone training.

A search trusts the supernet in two ways: that its order of subnets is the order stand-alone
training would give (Kendall tau), and that a subnet's inherited accuracy is close to what the
architecture can reach (the gap). This module scores the largest, the smallest, the presets and a
few seeded random subnets with inherited weights (BN recalibrated, the whole validation split) and,
given stand-alone results for some architectures, reports both.
"""

from __future__ import annotations

import dataclasses
import json
import random
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from supernet.checkpoint import load_supernet
from supernet.errors import EfnasError
from supernet.evaluate import evaluate_spec
from supernet.model import count_params
from supernet.space import ArchSpec, SearchSpace

__all__ = ["GAP_WARNING_PTS", "TAU_WARNING", "SubnetScore", "SupernetReport", "load_standalone", "supernet_report"]

GAP_WARNING_PTS = 5.0  # a median gap above this: inherited accuracy understates what the architectures reach
TAU_WARNING = 0.7  # a Kendall tau below this: the supernet does not order subnets as stand-alone training does


@dataclass(frozen=True)
class SubnetScore:
    name: str
    spec: ArchSpec
    params: int
    inherited_top1: float  # percent
    standalone_top1: float | None = None  # percent, when given

    @property
    def gap(self) -> float | None:
        return None if self.standalone_top1 is None else self.standalone_top1 - self.inherited_top1

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "arch": self.spec.to_dict(), "label": self.spec.label(), "params": self.params,
                "inherited_top1": round(self.inherited_top1, 2),
                "standalone_top1": None if self.standalone_top1 is None else round(self.standalone_top1, 2),
                "gap": None if self.gap is None else round(self.gap, 2)}


@dataclass(frozen=True)
class SupernetReport:
    checkpoint: str
    step: int
    total_steps: int
    scores: tuple[SubnetScore, ...]
    warnings: tuple[str, ...] = field(default=())

    @property
    def compared(self) -> list[SubnetScore]:
        return [s for s in self.scores if s.standalone_top1 is not None]

    @property
    def median_gap(self) -> float | None:
        gaps = [s.gap for s in self.compared if s.gap is not None]
        return statistics.median(gaps) if gaps else None

    @property
    def kendall_tau(self) -> float | None:
        compared = self.compared
        if len(compared) < 3:
            return None
        from scipy import stats

        tau = stats.kendalltau([s.inherited_top1 for s in compared], [s.standalone_top1 for s in compared]).statistic
        return float(tau)

    def to_dict(self) -> dict[str, Any]:
        tau, gap = self.kendall_tau, self.median_gap
        return {"checkpoint": self.checkpoint, "step": self.step, "total_steps": self.total_steps,
                "median_gap": None if gap is None else round(gap, 2), "kendall_tau": None if tau is None else round(tau, 3),
                "warnings": list(self.warnings), "subnets": [s.to_dict() for s in self.scores]}


def load_standalone(path: str | Path) -> dict[ArchSpec, float]:
    """Stand-alone top-1 (percent) per architecture, from a JSON file.

    Two layouts are read: ``bench/task_separability.py``'s output (``subnets[].arch`` with
    ``runs[].top1``, averaged over seeds), or a plain list of ``{"arch": {...}, "top1": 71.2}``.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise EfnasError(f"cannot read stand-alone results {path}: {exc}") from None
    entries = data.get("subnets") if isinstance(data, dict) else data
    if not isinstance(entries, list) or not entries:
        raise EfnasError(f"{path}: expected a list of {{\"arch\": ..., \"top1\": ...}} or a task_separability.json file")
    results = {}
    for i, entry in enumerate(entries):
        try:
            spec = ArchSpec.from_dict(entry["arch"])
            top1 = entry["top1"] if "top1" in entry else statistics.fmean(run["top1"] for run in entry["runs"])
            results[spec] = float(top1)
        except (KeyError, TypeError, ValueError, statistics.StatisticsError) as exc:
            raise EfnasError(f"{path}: entry {i} has no usable arch and top1 ({exc})") from None
    return results


def _subnets(space: SearchSpace, num_random: int, seed: int) -> list[tuple[str, ArchSpec]]:
    """Largest, smallest, presets and seeded random subnets; one row per architecture ("largest = L7")."""
    rng = random.Random(f"supernet-report:{seed}")
    named = [("largest", space.largest()), ("smallest", space.smallest()), *space.presets]
    named += [(f"random {i + 1}", space.sample(rng)) for i in range(num_random)]
    names: dict[ArchSpec, list[str]] = {}
    for name, spec in named:
        names.setdefault(space.validate(spec), []).append(name)
    return [(" = ".join(n), spec) for spec, n in names.items()]


def supernet_report(
    checkpoint: str | Path,
    *,
    num_random: int = 5,
    standalone: dict[ArchSpec, float] | None = None,
    seed: int = 0,
    calib_batches: int = 8,
    device: str | torch.device = "cpu",
) -> SupernetReport:
    """Score the largest, smallest, presets and ``num_random`` seeded random subnets of ``checkpoint``.

    Architectures of ``standalone`` are scored too and compared with their stand-alone top-1.
    """
    from supernet.data import load_data

    if num_random < 0 or calib_batches < 1:
        raise EfnasError(f"num_random must be >= 0 and calib_batches >= 1, got {num_random} and {calib_batches}")
    supernet, info = load_supernet(checkpoint, device)
    space = info.space
    data = load_data(info.data.get("name") or info.config["data"], space.resolution, seed=int(info.config.get("seed", 0)))
    named = _subnets(space, num_random, seed)
    standalone = {space.validate(spec): top1 for spec, top1 in (standalone or {}).items()}
    known = {spec for _, spec in named}
    named += [(f"stand-alone {i + 1}", spec) for i, spec in enumerate(standalone) if spec not in known]
    scores = []
    for name, spec in named:
        top1 = 100 * evaluate_spec(supernet, spec, data, calib_batches=calib_batches, seed=seed, device=device)
        scores.append(SubnetScore(name, spec, count_params(spec), top1, standalone.get(spec)))
    report = SupernetReport(str(info.path), info.step, info.total_steps, tuple(scores))
    return dataclasses.replace(report, warnings=tuple(_warnings(report, info.finished)))


def _warnings(report: SupernetReport, finished: bool) -> list[str]:
    warnings = []
    if not finished:
        warnings.append(f"the checkpoint is unfinished ({report.step} of {report.total_steps} steps): resume the training first")
    largest, smallest = report.scores[0], report.scores[1]  # _subnets puts them first
    if largest.inherited_top1 <= smallest.inherited_top1:
        warnings.append("the largest subnet is no better than the smallest: the supernet has not learned to share weights")
    gap, tau = report.median_gap, report.kendall_tau
    if gap is not None and gap > GAP_WARNING_PTS:
        warnings.append(f"inherited accuracy is a median {gap:.1f} pts below stand-alone: accuracies a search reports understate the models")
    if tau is not None and tau < TAU_WARNING:
        warnings.append(f"Kendall tau {tau:.2f} < {TAU_WARNING}: the supernet does not order subnets as stand-alone training does")
    return warnings
