"""Reading a study back: its trials as architectures, the best feasible one, the Pareto front,
and the files a search leaves in its run folder (``best.json``, ``trials.csv``, ``pareto.png``).

Everything here reads the study's storage only (no supernet, no latency table), so the export
step, optuna-dashboard users and scripts can use it on any machine that reaches the storage.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.table import Table

from nas._storage import safe_url, storage_url
from supernet.errors import EfnasError
from supernet.io import atomic_write_bytes
from supernet.model import count_params
from supernet.space import ArchSpec

__all__ = [
    "TrialRecord",
    "best_feasible_trial",
    "best_record",
    "closest_to_budget",
    "hypervolume",
    "load_records",
    "pareto_front",
    "plot_pareto",
    "results_table",
    "storage_url",
    "trials_csv",
]

# Optuna 5 keeps each constraint under its own name; optuna-dashboard reads only the list that
# the deprecated constraints_func wrote under this key. A search writes both; Optuna then reports
# the list's entries as constraints "0", "1", ..., which TrialRecord leaves out.
CONSTRAINTS_LIST = "constraints"


@dataclass(frozen=True)
class TrialRecord:
    """One trial of a search study, as an architecture with its score and costs."""

    number: int
    state: str
    spec: ArchSpec | None
    accuracy: float | None
    latency_ms: dict[str, float]
    constraints: dict[str, float]
    evaluated: bool  # False: the score was reused from an earlier trial of the same architecture
    cached_from: int | None = None
    retry_of: int | None = None
    note: dict[str, Any] = field(default_factory=dict)
    duration_s: float | None = None

    @property
    def complete(self) -> bool:
        return self.state == TrialState.COMPLETE.name and self.accuracy is not None

    @property
    def feasible(self) -> bool:
        """Complete and within every budget."""
        return self.complete and bool(self.constraints) and all(v <= 0 for v in self.constraints.values())

    @classmethod
    def from_trial(cls, trial: FrozenTrial) -> TrialRecord:
        attrs = trial.user_attrs
        spec = ArchSpec.from_json(attrs["arch"]) if "arch" in attrs else None
        duration = trial.duration.total_seconds() if trial.duration is not None else None
        return cls(
            number=trial.number,
            state=trial.state.name,
            spec=spec,
            accuracy=attrs.get("accuracy") if trial.state == TrialState.COMPLETE else None,
            latency_ms=dict(attrs.get("latency_ms", {})),
            constraints={k: v for k, v in trial.constraints.items() if not k.isdigit()} or dict(trial.constraints),
            evaluated=bool(attrs.get("evaluated", False)),
            cached_from=attrs.get("cached_from"),
            retry_of=attrs.get("retry_of"),
            note=dict(attrs.get("note", {})),
            duration_s=duration,
        )


def _load_study(storage: str | Path, study_name: str) -> optuna.Study:
    url = storage_url(storage)
    try:
        return optuna.load_study(study_name=study_name, storage=url)
    except KeyError:
        try:
            names = optuna.get_all_study_names(url)
        except Exception:  # noqa: BLE001 - any failure to list only loses the hint
            names = []
        raise EfnasError(
            f"storage {safe_url(url)} has no study '{study_name}'; its studies are {', '.join(names) or 'none'}"
        ) from None


def load_records(storage: str | Path, study_name: str) -> list[TrialRecord]:
    """Every trial of a search study, in trial order."""
    return [TrialRecord.from_trial(t) for t in _load_study(storage, study_name).get_trials(deepcopy=False)]


def best_record(records: Iterable[TrialRecord]) -> TrialRecord | None:
    """Highest accuracy among feasible trials; ties go to the lower total latency, then the earlier trial."""
    feasible = [r for r in records if r.feasible]
    if not feasible:
        return None
    return max(feasible, key=lambda r: (r.accuracy, -sum(r.latency_ms.values()), -r.number))


def closest_to_budget(records: Iterable[TrialRecord], limits: dict[str, float]) -> str:
    """How near a search without a feasible architecture came: the complete trial whose worst
    excess over its budgets (relative to the budget) is the smallest."""

    def excess(record: TrialRecord) -> tuple[float, str]:
        return max(((record.latency_ms[n] - limit) / limit, n) for n, limit in limits.items() if n in record.latency_ms)

    complete = [r for r in records if r.complete and r.spec is not None and any(n in r.latency_ms for n in limits)]
    if not complete:
        return "no trial completed"
    closest = min(complete, key=excess)
    over, name = excess(closest)
    return (f"the closest, trial {closest.number} ({closest.spec.label()}), predicts {closest.latency_ms[name]:.4g} ms "
            f"on {name}, {100 * over:.1f}% over the budget of {limits[name]:.4g} ms")


def best_feasible_trial(storage: str | Path, study_name: str) -> tuple[ArchSpec, dict[str, Any]]:
    """The best feasible architecture of a search study and what is known about it.

    Returns ``(spec, info)`` with ``info`` holding ``trial``, ``accuracy``, ``latency_ms`` (per latency
    table), ``study``, ``storage`` and ``search`` (the study's recorded settings). Raises a one-line
    :class:`EfnasError` if the study does not exist or has no feasible trial yet.
    """
    study = _load_study(storage, study_name)
    best = best_record(TrialRecord.from_trial(t) for t in study.get_trials(deepcopy=False))
    if best is None or best.spec is None:
        raise EfnasError(f"study '{study_name}' in {safe_url(storage_url(storage))} has no feasible trial yet")
    return best.spec, {
        "trial": best.number,
        "accuracy": best.accuracy,
        "latency_ms": best.latency_ms,
        "study": study_name,
        "storage": safe_url(storage_url(storage)),  # for files and messages: the password masked
        "search": study.user_attrs.get("efnas", {}),
    }


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points (latency, accuracy) that no other point beats on both (lower latency,
    higher accuracy), sorted by latency.

    Not ``study.best_trials``: that is the front of a study's objectives, which for tpe, random
    and slimming is accuracy alone (one trial) and for NSGA-II the first table only; the plot
    draws the front against every table's latency for every strategy. No public hypervolume
    exists in Optuna 5 (only the private ``optuna._hypervolume``), hence :func:`hypervolume`."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best_accuracy = [], -math.inf
    for i in order:
        if points[i][1] > best_accuracy:
            front.append(i)
            best_accuracy = points[i][1]
    return front


def hypervolume(points: Sequence[tuple[float, float]], reference: tuple[float, float]) -> float:
    """Area dominated by points (latency, accuracy) and bounded by ``reference`` = (latency, accuracy):
    the region of lower latency than the reference's and higher accuracy than its. Points outside
    it add nothing."""
    ref_latency, ref_accuracy = reference
    inside = [p for p in points if p[0] < ref_latency and p[1] > ref_accuracy]
    area, previous = 0.0, ref_accuracy
    for i in pareto_front(inside):
        latency, accuracy = inside[i]
        area += (ref_latency - latency) * (accuracy - previous)
        previous = accuracy
    return area


# -- files ---------------------------------------------------------------------------------------


def trials_csv(records: Sequence[TrialRecord], lut_names: Sequence[str]) -> str:
    """One row per trial: number, state, accuracy, latency per table, feasibility, provenance of the score."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        ["trial", "state", "accuracy", *(f"latency_ms_{n}" for n in lut_names), "feasible", "evaluated",
         "cached_from", "retry_of", "note", "architecture", "params", "arch_json", "duration_s"]
    )
    for r in records:
        writer.writerow([
            r.number,
            r.state,
            f"{r.accuracy:.6f}" if r.accuracy is not None else "",
            *(f"{r.latency_ms[n]:.6f}" if n in r.latency_ms else "" for n in lut_names),
            int(r.feasible),
            int(r.evaluated),
            "" if r.cached_from is None else r.cached_from,
            "" if r.retry_of is None else r.retry_of,
            r.note.get("action", "") if r.note else "",
            r.spec.label() if r.spec else "",
            count_params(r.spec) if r.spec else "",
            r.spec.to_json() if r.spec else "",
            f"{r.duration_s:.3f}" if r.duration_s is not None else "",
        ])
    return buffer.getvalue()


def plot_pareto(
    records: Sequence[TrialRecord],
    path: str | Path,
    *,
    limits: dict[str, float],
    presets: dict[str, dict[str, Any]] | None = None,
    title: str = "",
) -> Path:
    """Accuracy vs predicted latency, one panel per latency table: feasible and infeasible trials,
    the feasible Pareto front, the budget, the best feasible trial and the presets."""
    # A Figure of its own with an Agg canvas: pyplot's global backend and figure list stay as they are.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(limits)
    complete = [r for r in records if r.complete and r.evaluated]
    best = best_record(records)
    figure = Figure(figsize=(6.4 * len(names), 4.8))
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(names), squeeze=False)
    for ax, name in zip(axes[0], names):
        feasible = [r for r in complete if r.feasible]
        infeasible = [r for r in complete if not r.feasible]
        ax.scatter([r.latency_ms[name] for r in infeasible], [100 * r.accuracy for r in infeasible],
                   marker="x", color="0.6", label=f"infeasible ({len(infeasible)})")
        ax.scatter([r.latency_ms[name] for r in feasible], [100 * r.accuracy for r in feasible],
                   s=18, color="tab:blue", label=f"feasible ({len(feasible)})")
        points = [(r.latency_ms[name], 100 * r.accuracy) for r in feasible]
        front = [points[i] for i in pareto_front(points)]
        if front:
            ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="tab:blue", alpha=0.6, label="Pareto front")
        ax.axvline(limits[name], color="tab:red", linestyle="--", linewidth=1, label=f"budget {limits[name]:.4g} ms")
        if best is not None:
            ax.scatter([best.latency_ms[name]], [100 * best.accuracy], marker="*", s=220, color="gold",
                       edgecolor="black", zorder=5, label=f"best (trial {best.number})")
        for preset, info in (presets or {}).items():
            if name in info["latency_ms"] and info.get("accuracy") is not None:
                x, y = info["latency_ms"][name], 100 * info["accuracy"]
                ax.scatter([x], [y], marker="D", s=60, color="tab:red", zorder=4)
                ax.annotate(preset, (x, y), textcoords="offset points", xytext=(6, -12), color="tab:red")
        ax.set_xlabel(f"predicted latency on {name} (ms)")
        ax.set_ylabel("validation top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def results_table(
    records: Sequence[TrialRecord],
    lut_names: Sequence[str],
    *,
    top: int = 10,
    presets: dict[str, dict[str, Any]] | None = None,
    title: str = "",
) -> Table:
    """A rich table of the ``top`` feasible architectures (distinct, best first), then the presets."""
    table = Table(title=title or None)
    table.add_column("rank", justify="right")
    table.add_column("trial", justify="right")
    table.add_column("architecture")
    table.add_column("params", justify="right")
    table.add_column("top-1", justify="right")
    for name in lut_names:
        table.add_column(f"{name} ms", justify="right")
    table.add_column("feasible", justify="center")
    seen: set[ArchSpec] = set()
    ranked = sorted((r for r in records if r.feasible), key=lambda r: (-r.accuracy, sum(r.latency_ms.values()), r.number))
    rank = 0
    for r in ranked:
        if r.spec in seen or rank >= top:
            continue
        seen.add(r.spec)
        rank += 1
        table.add_row(str(rank), str(r.number), r.spec.label(), f"{count_params(r.spec):,}", f"{100 * r.accuracy:.2f}%",
                      *(f"{r.latency_ms[n]:.4g}" for n in lut_names), "yes", style="bold" if rank == 1 else None)
    if presets:
        table.add_section()
        for name, info in presets.items():
            spec = ArchSpec.from_dict(info["arch"])
            accuracy = info.get("accuracy")
            table.add_row(name, "preset", spec.label(), f"{count_params(spec):,}",
                          f"{100 * accuracy:.2f}%" if accuracy is not None else "-",
                          *(f"{info['latency_ms'][n]:.4g}" for n in lut_names),
                          "yes" if info.get("feasible") else "no", style="dim")
    return table
