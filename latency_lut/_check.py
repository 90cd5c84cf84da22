"""``lut check``: measure networks end to end and compare with the table's predictions.

The networks are the space's presets plus random subnets (never the table's calibration networks,
so every number is held out), timed as the table was measured: on its backend, at its threads and
on inputs of its batch. Measurements are saved as they are made; a check that is stopped
resumes, and its measurements can be reused against another table of the same device and backend.
"""

from __future__ import annotations

import io
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from supernet.errors import ConfigError, EfnasError
from supernet.io import atomic_write_bytes, atomic_write_json, console, progress_bar, provenance
from supernet.space import ArchSpec, SearchSpace

from latency_lut._backends import get_backend
from latency_lut._measure import Timing, time_models
from latency_lut._stats import PredictionStats, prediction_stats
from latency_lut._table import LatencyTable

__all__ = ["CheckConfig", "CheckReport", "check_lut", "check_specs", "plot_check"]

FORMAT = "efnas-lut-check"


@dataclass(frozen=True, kw_only=True)
class CheckConfig:
    samples: int = 50  # random subnets besides the presets
    seed: int = 0
    rounds: int = 8  # visits per network, interleaved across a group of networks
    runs: int = 2  # timed runs per visit
    group_size: int = 6  # networks held in memory and interleaved together
    min_group_seconds: float = 2.0  # small networks get more rounds, up to this long per group
    max_minutes: float | None = None

    def __post_init__(self) -> None:
        for name in ("rounds", "runs", "group_size"):
            if getattr(self, name) < 1:
                raise ConfigError(name, f"must be at least 1, got {getattr(self, name)}")
        if self.samples < 0:
            raise ConfigError("samples", f"must be at least 0, got {self.samples}")


def check_specs(space: SearchSpace, lut: LatencyTable, samples: int, seed: int) -> list[tuple[str, ArchSpec]]:
    """The presets, then ``samples`` distinct random subnets that are neither presets nor
    calibration networks of ``lut``."""
    calibration = lut.calibration
    excluded = {ArchSpec.from_dict(model.arch) for model in calibration.models} if calibration else set()
    specs = [(name, spec) for name, spec in space.presets if spec not in excluded]
    taken = excluded | {spec for _, spec in specs}
    rng = random.Random(f"check-{seed}")
    attempts = 0
    found = 0
    while found < samples and attempts < 100 * (samples + 1):
        attempts += 1
        spec = space.sample(rng)
        if spec not in taken:
            taken.add(spec)
            specs.append((f"s{found:03d}", spec))
            found += 1
    return specs


@dataclass
class CheckReport:
    """Measured and predicted latency per network, and the statistics over the held-out ones."""

    lut_meta: dict[str, Any]
    rows: list[dict[str, Any]]  # name, arch, measured timing, predicted_ms, raw_ms, error_percent
    statistic: str
    complete: bool
    seconds: float
    provenance: dict[str, Any]
    measurement: dict[str, Any] = field(default_factory=dict)  # how this check timed: backend, threads, batch, clock

    def stats(self, calibrated: bool = True, names: set[str] | None = None) -> PredictionStats:
        rows = [row for row in self.rows if names is None or row["name"] in names]
        predicted = [row["predicted_ms"] if calibrated else row["raw_ms"] for row in rows]
        return prediction_stats(predicted, [row["measured"][f"{self.statistic}_ms"] for row in rows])

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "format": FORMAT,
            "complete": self.complete,
            "statistic": self.statistic,
            "lut": {
                name: self.lut_meta.get(name, 1 if name == "batch" else None)
                for name in ("device", "backend", "precision", "threads", "batch", "resolution", "space", "provenance")
            },
            "measurement": self.measurement,
            "seconds": round(self.seconds, 1),
            "provenance": self.provenance,
            "rows": self.rows,
        }
        if len(self.rows) >= 2:
            data["stats"] = self.stats().to_dict()
            data["stats_uncalibrated"] = self.stats(calibrated=False).to_dict()
        return data


def _unfinished(path: Path | None, lut: LatencyTable) -> tuple[dict[str, dict[str, Any]], float]:
    """Rows (by architecture JSON) and seconds of an earlier, unfinished check with the same
    backend, threads, batch and machine."""
    if path is None or not path.exists():
        return {}, 0.0
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}, 0.0
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("complete"):
        return {}, 0.0
    earlier = data.get("lut", {})
    here = {"backend": lut.backend, "threads": lut.threads, "batch": lut.batch, "resolution": lut.meta.get("resolution")}
    same = all(earlier.get(name, 1 if name == "batch" else None) == value for name, value in here.items())
    host = (data.get("provenance") or {}).get("machine", {}).get("hostname")
    if not same or host != provenance()["machine"]["hostname"]:
        return {}, 0.0
    rows = {row["arch_json"]: row for row in data.get("rows", []) if isinstance(row, dict) and "arch_json" in row}
    return rows, float(data.get("seconds", 0.0))


def check_lut(
    lut: LatencyTable,
    space: SearchSpace,
    config: CheckConfig = CheckConfig(),
    out: str | Path | None = None,
) -> CheckReport:
    """Measure the presets and ``config.samples`` random subnets on the table's backend and compare
    with its predictions. With ``out``, results are saved after every group of networks (and an
    unfinished check at ``out`` is resumed)."""
    started = time.monotonic()
    lut.check_space(space)
    if lut.meta["source"] != "measured" or lut.backend not in ("onnxruntime", "torch", "torch-cuda"):
        raise EfnasError(
            f"latency table {lut.path} was {lut.meta['source']} for backend {lut.backend}; lut check measures "
            "on this machine, so it can only check tables measured here"
        )
    out = Path(out) if out else None
    engine = get_backend(lut.backend, lut.threads)
    statistic = lut.meta.get("statistic", "median")
    specs = check_specs(space.with_num_classes(lut.meta["space"].get("num_classes", space.num_classes)), lut, config.samples, config.seed)
    for _, spec in specs:
        lut.predict_ms(spec)  # fail before measuring anything if a key is missing
    presets = set(space.preset_names)
    earlier, spent = _unfinished(out, lut)
    rows: list[dict[str, Any]] = []
    todo: list[tuple[str, ArchSpec]] = []
    for name, spec in specs:
        row = earlier.get(spec.to_json())
        if row is not None:
            rows.append(_row(name, spec, lut, Timing(**row["measured"]), name in presets))
        else:
            todo.append((name, spec))
    if rows:
        console.print(f"resuming {out}: {len(rows)} of {len(specs)} network(s) already measured")
    deadline = started + 60 * config.max_minutes if config.max_minutes else None
    rng = random.Random(f"check-order-{config.seed}")
    complete = True
    measurement = {"backend": engine.name, "threads": engine.threads, "batch": lut.batch, "clock": engine.clock}
    report = CheckReport(lut.meta, rows, statistic, False, 0.0, provenance(), measurement)
    with engine.session(), progress_bar() as progress:
        task = progress.add_task("measuring networks", total=len(todo))
        for start in range(0, len(todo), config.group_size):
            if start and deadline and time.monotonic() > deadline:  # every run measures a group
                complete = False
                break
            group = todo[start : start + config.group_size]
            timings = time_models(
                engine, group, config.rounds, config.runs, rng, progress=(progress, task), min_seconds=config.min_group_seconds,
                batch=lut.batch,
            )
            rows.extend(_row(name, spec, lut, timings[name], name in presets) for name, spec in group)
            report.seconds = spent + time.monotonic() - started
            if out:
                atomic_write_json(out, report.to_dict())
    order = {name: i for i, (name, _) in enumerate(specs)}
    rows.sort(key=lambda row: order[row["name"]])
    report.complete = complete
    report.seconds = spent + time.monotonic() - started
    if out:
        atomic_write_json(out, report.to_dict())
    return report


def _row(name: str, spec: ArchSpec, lut: LatencyTable, timing: Timing, preset: bool) -> dict[str, Any]:
    statistic = lut.meta.get("statistic", "median")
    predicted = lut.predict_ms(spec)
    measured = getattr(timing, f"{statistic}_ms")
    return {
        "name": name,
        "preset": preset,
        "arch": spec.to_dict(),
        "arch_json": spec.to_json(),
        "measured": timing.to_dict(),
        "predicted_ms": round(predicted, 6),
        "raw_ms": round(lut.predict_ms(spec, calibrated=False), 6),
        "error_percent": round((predicted - measured) / measured * 100, 4),
    }


def plot_check(report: CheckReport, path: str | Path, title: str) -> Path:
    """Scatter of predicted vs measured with the +-5 % and +-10 % bands, presets labelled."""
    # A Figure of its own on the Agg canvas: no pyplot, so the caller's backend and figures are untouched.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    key = f"{report.statistic}_ms"
    measured = np.array([row["measured"][key] for row in report.rows])
    predicted = np.array([row["predicted_ms"] for row in report.rows])
    fig = Figure(figsize=(5.5, 5.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    top = max(measured.max(), predicted.max()) * 1.05
    line = np.array([0, top])
    ax.fill_between(line, line * 0.9, line * 1.1, color="tab:blue", alpha=0.08, label="±10 %")
    ax.fill_between(line, line * 0.95, line * 1.05, color="tab:blue", alpha=0.15, label="±5 %")
    ax.plot(line, line, color="tab:blue", lw=1)
    is_preset = np.array([row["preset"] for row in report.rows])
    ax.scatter(measured[~is_preset], predicted[~is_preset], s=14, color="tab:orange", label="random subnets")
    ax.scatter(measured[is_preset], predicted[is_preset], s=30, color="tab:red", marker="D", label="presets")
    for row, m, p in zip(report.rows, measured, predicted):
        if row["preset"]:
            ax.annotate(row["name"], (m, p), textcoords="offset points", xytext=(5, -10), fontsize=8)
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel(f"measured latency, ms ({report.statistic})")
    ax.set_ylabel("predicted latency, ms")
    if len(report.rows) >= 2:
        stats = report.stats()
        title += f"\n{stats.within_5:.0f}% within ±5%, MAPE {stats.mape:.2f}%, worst {stats.worst:.1f}%, τ {stats.kendall_tau:.3f}"
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)
