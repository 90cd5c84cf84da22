"""Is a table right for use here? Its own quality, and whether this machine runs as its machine did.

**Quality** is judged from the table alone, without measuring: a calibration whose leave-one-out
error exceeds :data:`QUALITY_LIMIT_PERCENT` (then also any category it prices at 0 although its
blocks are a real part of a network, as a likely cause), or a calibration that predicts its own
networks (each left out in turn) worse than the plain sum of entries does. Builds on a busy
machine produce such tables (measured: tiny tables with 8-13% leave-one-out error and a stem or
head scale of 0); the build records the verdict in ``meta.quality`` and :func:`quality_warning`
says it in one line.

**Staleness**: a table records the CPU (or GPU) it was measured on and the time of one fixed small
network on it, the space's smallest, at the table's batch (``meta.reference``). Timing that network again here takes a
few hundred milliseconds; when it runs faster or slower than recorded by more than the table's
own error, the table's numbers are not this machine's (machines sold under one CPU name differ
by 1.6x). Tables made before the record existed use their fastest calibration network instead.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from supernet.io import cpu_model
from supernet.space import ArchSpec

from latency_lut._backends import Backend, get_backend
from latency_lut._keys import CATEGORIES
from latency_lut._measure import Timing, time_models
from latency_lut._table import LatencyTable, suggested_out

__all__ = [
    "QUALITY_LIMIT_PERCENT",
    "STALE_FLOOR_PERCENT",
    "Staleness",
    "assess_quality",
    "check_staleness",
    "hardware_name",
    "quality_warning",
    "reference_record",
    "staleness_warning",
]

#: Leave-one-out calibration error above which a table says it cannot reach its precision: the
#: band the fidelity benchmark counts as a hit (the shipped tables: 1.9% and 2.0%).
QUALITY_LIMIT_PERCENT = 5.0
#: A category at scale 0 is a problem only when its blocks are at least this share (mean over the
#: calibration networks) of a network's plain sum: v1's head is 0.4% of a network and may be 0.
ZERO_SCALE_SHARE_PERCENT = 2.0
#: The least change of the reference timing that counts as another machine, whatever the table's
#: own error: back-to-back timings of one network on a busy machine differ by 1-4%.
STALE_FLOOR_PERCENT = 5.0
REFERENCE_ROUNDS = 8
REFERENCE_RUNS = 2
REFERENCE_SECONDS = 0.2  # small networks get more rounds, up to this long


# -- quality -----------------------------------------------------------------------------------


def _calibration_errors(table: LatencyTable) -> tuple[float | None, dict[str, float]]:
    """The plain sum's mean absolute error (%) on the calibration networks the table can price,
    and each category's mean share (%) of those networks' plain sums."""
    calibration = table.calibration
    models = [m for m in (calibration.models if calibration else ()) if not table.missing(ArchSpec.from_dict(m.arch))]
    if not models:
        return None, {}
    errors, shares = [], {c: [] for c in CATEGORIES}
    for model in models:
        spec = ArchSpec.from_dict(model.arch)
        measured = model.value(table.statistic)
        errors.append(abs(table.predict_ms(spec, calibrated=False) - measured) / measured * 100)
        sums = table.category_sums(spec)
        total = sum(sums.values()) or 1.0
        for category in CATEGORIES:
            shares[category].append(sums.get(category, 0.0) / total * 100)
    return float(np.mean(errors)), {c: float(np.mean(v)) for c, v in shares.items()}


def zero_priced(scales: dict[str, float], shares: dict[str, float]) -> list[str]:
    """The categories priced at 0 although their blocks are at least :data:`ZERO_SCALE_SHARE_PERCENT`
    (``shares``: mean % of a network's plain sum) of a network."""
    return [c for c in CATEGORIES if scales[c] == 0 and shares.get(c, 0.0) >= ZERO_SCALE_SHARE_PERCENT]


def assess_quality(table: LatencyTable) -> dict[str, Any]:
    """The verdict on the table's own numbers (what ``meta.quality`` records): ``ok``, the
    ``problems`` in words, the calibration's leave-one-out error and the plain sum's error on the
    same networks, in percent."""
    calibration = table.calibration
    problems: list[str] = []
    plain, shares = _calibration_errors(table)
    loo = calibration.loo_mape if calibration else None
    if calibration is None:
        problems.append("it has no calibration (predictions are plain sums of blocks timed alone)")
    else:
        imprecise = loo is None or loo > QUALITY_LIMIT_PERCENT
        if loo is not None and imprecise:
            problems.append(f"leave-one-out calibration error {loo:.1f}% (above {QUALITY_LIMIT_PERCENT:.0f}%)")
        zero = zero_priced(calibration.scales, shares)
        # Named only beside a missed precision: on its own a scale of 0 is often the fit moving a
        # block every network has (the stem) into the others' scales, and then it predicts held-out
        # networks better than a fit made to price it (bench/lut_zero_scale.py: 8 of 8 such fits).
        if zero and imprecise:
            what = ", ".join(f"{c} ({shares[c]:.0f}% of a network's blocks)" for c in zero)
            problems.append(f"scale 0 for {what}")
        if loo is not None and plain is not None and loo > plain:
            problems.append(
                f"calibrated, it predicts its own networks worse ({loo:.1f}% left out in turn) than the plain sum ({plain:.1f}%)"
            )
    return {
        "ok": not problems,
        "problems": problems,
        "loo_mape_percent": None if loo is None else round(loo, 4),
        "plain_sum_mape_percent": None if plain is None else round(plain, 4),
        "limit_percent": QUALITY_LIMIT_PERCENT,
    }


def quality_warning(table: LatencyTable) -> str | None:
    """One line saying why the table cannot be trusted to its usual precision and how to get a
    better one, or None when it can. Judged afresh from the table (cheap: no measuring)."""
    problems = assess_quality(table)["problems"]
    if not problems:
        return None
    where = table.path if table.path else "(in memory)"
    space = table.meta["space"]
    if table.meta.get("source") == "imported":
        fix = (f"time more calibration networks on the device (efnas lut coreml-bundle --space {space.get('source') or space['name']} "
               "--calibration-samples 24) and import again")
    else:
        fix = (f"rebuild it on a quiet machine with more calibration networks: efnas lut build --space "
               f"{space.get('source') or space['name']} {' '.join(table.measure_args())} "
               f"--calibration-samples 24 --out {suggested_out(table.path, '-rebuilt')}")
    return f"latency table {where} may mispredict: {'; '.join(problems)}; {fix}"


# -- the reference network and staleness --------------------------------------------------------


def hardware_name(backend: str) -> str:
    """What the tables of ``backend`` are measured on here: the GPU model for ``torch-cuda``, else the CPU model."""
    return torch.cuda.get_device_name() if backend == "torch-cuda" else cpu_model()


def _time_reference(engine: Backend, spec: ArchSpec, batch: int) -> Timing:
    with engine.session():
        timings = time_models(
            engine, [("reference", spec)], REFERENCE_ROUNDS, REFERENCE_RUNS, random.Random(0), min_seconds=REFERENCE_SECONDS,
            batch=batch,
        )
    return timings["reference"]


def reference_record(
    engine: Backend, spec: ArchSpec, timing: Timing | None = None, *, batch: int, name: str = "smallest network"
) -> dict[str, Any]:
    """``meta.reference`` for a table measured with ``engine`` at ``batch``: ``spec`` (the space's
    smallest network) timed here, or ``timing`` when it was just measured anyway (at that batch)."""
    timing = timing or _time_reference(engine, spec, batch)
    return {"name": name, "arch": spec.to_dict(), "hardware": hardware_name(engine.name), "batch": batch, **timing.to_dict()}


def runs_here(table: LatencyTable) -> bool:
    if table.meta.get("source") != "measured":
        return False
    return table.backend in ("onnxruntime", "torch") or (table.backend == "torch-cuda" and torch.cuda.is_available())


def recorded_reference(table: LatencyTable) -> tuple[str, str | None, ArchSpec | None, float | None]:
    """(hardware, what the reference is, its architecture, its recorded time) of ``table``."""
    meta = table.meta
    reference = meta.get("reference")
    if reference:
        timing = Timing(reference["median_ms"], reference["p10_ms"], reference["p90_ms"], int(reference.get("runs", 1)))
        return reference["hardware"], reference.get("name", "reference network"), ArchSpec.from_dict(reference["arch"]), timing.value(table.statistic)
    machine = (meta.get("provenance") or {}).get("machine", {})
    hardware = (meta.get("backend_details") or {}).get("gpu") if table.backend == "torch-cuda" else machine.get("cpu")
    hardware = hardware or meta["device"]
    calibration = table.calibration
    if calibration is None or not calibration.models:
        return hardware, None, None, None
    fastest = min(calibration.models, key=lambda model: model.value(table.statistic))
    return hardware, f"calibration network {fastest.name}", ArchSpec.from_dict(fastest.arch), fastest.value(table.statistic)


@dataclass(frozen=True)
class Staleness:
    """The table's machine against this one: hardware names, and the reference network's time
    recorded there and measured here (None when the table holds no reference to time)."""

    table_hardware: str
    here_hardware: str
    reference: str | None
    recorded_ms: float | None
    measured_ms: float | None
    limit_percent: float  # the table's own error, at least STALE_FLOOR_PERCENT

    @property
    def change_percent(self) -> float | None:
        if self.recorded_ms is None or self.measured_ms is None:
            return None
        return (self.measured_ms / self.recorded_ms - 1) * 100

    @property
    def stale(self) -> bool:
        change = self.change_percent
        if change is None:
            return self.table_hardware != self.here_hardware
        return abs(change) > self.limit_percent


def check_staleness(table: LatencyTable) -> Staleness | None:
    """Compare the table's machine with this one, timing its reference network here (a few hundred
    ms); None when the table's backend cannot run here (an imported Core ML table, CUDA without a
    GPU). A timing outside the band is taken again, and the closer one kept: a passing load spike
    should not make a table look stale."""
    if not runs_here(table):
        return None
    hardware, reference, spec, recorded = recorded_reference(table)
    calibration = table.calibration
    limit = max(calibration.selection_mape if calibration else 0.0, STALE_FLOOR_PERCENT)
    here = hardware_name(table.backend)
    if spec is None or recorded is None:
        return Staleness(hardware, here, None, None, None, limit)
    engine = get_backend(table.backend, table.threads)
    timing = _time_reference(engine, spec, table.batch)
    measured = timing.value(table.statistic)
    if abs(measured / recorded - 1) * 100 > limit:
        again = _time_reference(engine, spec, table.batch)
        timing, measured = min((timing, measured), (again, again.value(table.statistic)), key=lambda t: abs(t[1] / recorded - 1))
    # A timing as noisy as the difference cannot tell machines apart (a busy machine, or a network
    # at the noise floor): only a difference beyond the measurement's own noise counts. The noise
    # is the gap from its p10 to its median, not to its p90, which one preemption blows up.
    limit = max(limit, 100 * (timing.median_ms / timing.p10_ms - 1) if timing.p10_ms > 0 else 0.0)
    return Staleness(hardware, here, reference, recorded, measured, limit)


def staleness_warning(table: LatencyTable, *, copy_to: str | None = None) -> str | None:
    """One line when ``table`` does not describe this machine (see :func:`check_staleness`), naming
    the command that adapts it (written to ``copy_to``, e.g. in the caller's run folder; default:
    next to the table, or in the current folder for a shipped table); None when it does or when
    this machine cannot tell."""
    result = check_staleness(table)
    if result is None or not result.stale:
        return None
    where = table.path if table.path else "(in memory)"
    out = copy_to or suggested_out(table.path, "-here")
    if result.change_percent is None:
        space = table.meta["space"]
        return (
            f"latency table {where} was measured on {result.table_hardware}, this machine is {result.here_hardware}, and "
            f"the table holds no reference timing to compare; build one here: efnas lut build --space "
            f"{space.get('source') or space['name']} {' '.join(table.measure_args())} --out {out}"
        )
    return (
        f"latency table {where} does not describe this machine: its {result.reference} took {result.recorded_ms:.4g} ms "
        f"on the table's {result.table_hardware} and {result.measured_ms:.4g} ms here on {result.here_hardware} "
        f"({result.change_percent:+.1f}%, beyond the table's own error of {result.limit_percent:.1f}%); adapt it in "
        f"seconds with: efnas lut recalibrate {where} --out {out}"
    )
