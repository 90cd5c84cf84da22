"""``lut recalibrate``: adapt a table measured on another machine to this one in seconds.

Measuring every unit again takes minutes (v1: 939 units); the calibration networks are a dozen
whole networks. So the table keeps its entries (they say how the blocks compare with each other,
which mostly carries over) and only its calibration is fitted again, on its own calibration
networks timed here (plus, with ``samples``, more random networks of the space). The units of the
reference network are timed here too, as evidence of how uniformly the machine differs
(``meta.recalibration.unit_ratio``, per category: time here / entry). ``meta`` keeps both
machines: where the entries were measured and the calibration they had there.
"""

from __future__ import annotations

import copy
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from supernet.errors import ConfigError, EfnasError
from supernet.io import progress_bar, provenance
from supernet.space import ArchSpec, load_space

from latency_lut._backends import Backend, get_backend
from latency_lut._build import MODEL_GROUP, calibration_from_models, calibration_specs
from latency_lut._calibration import CalibrationModel
from latency_lut._health import assess_quality, hardware_name, recorded_reference, reference_record, runs_here
from latency_lut._keys import op_units
from latency_lut._measure import SpeedGate, Timing, seeded_weights, time_models, time_units
from latency_lut._table import LatencyTable, in_installed_package, save_lut

__all__ = ["RecalibrationResult", "recalibrate_here"]

UNIT_ROUNDS = 30


@dataclass(frozen=True)
class RecalibrationResult:
    table: LatencyTable  # the new table, saved at ``out``
    networks: int  # whole networks timed here
    seconds: float


def _check_source(table: LatencyTable, out: Path) -> None:
    where = table.path or "(in memory)"
    if not runs_here(table):
        raise EfnasError(
            f"latency table {where} is {table.meta.get('source')} for backend {table.backend}, which cannot run on this "
            "machine; recalibrate measures here (for a Core ML table, time the bundle's calibration networks on the device "
            "and efnas lut import again)"
        )
    calibration = table.calibration
    if calibration is None or len(calibration.models) < 2:
        raise EfnasError(f"latency table {where} has no calibration networks to time here; build one here with efnas lut build")
    if table.path is not None and out.resolve() == Path(table.path).resolve():
        raise EfnasError(f"--out {out} is the table itself; write the recalibrated table to a new file (it keeps the original)")
    if in_installed_package(out):
        raise EfnasError(f"--out {out} lies inside the installed package; write the recalibrated table to your run folder")


def _networks(table: LatencyTable, samples: int) -> list[tuple[str, ArchSpec]]:
    """The table's calibration networks, then ``samples`` more of its space (the same sequence
    ``lut build`` draws from, so they continue it)."""
    models = table.calibration.models  # type: ignore[union-attr]
    networks = [(model.name, ArchSpec.from_dict(model.arch)) for model in models]
    if samples:
        space_meta = table.meta["space"]
        space = load_space(space_meta.get("source") or space_meta["name"]).with_num_classes(space_meta["num_classes"])
        table.check_space(space)
        seed = table.meta.get("measurement", {}).get("seed", 0)
        known = {spec for _, spec in networks}
        extra = [(name, spec) for name, spec in calibration_specs(space, len(networks) + samples + 5, seed) if spec not in known]
        networks += [(f"here{i:02d}", spec) for i, (_, spec) in enumerate(extra[:samples])]
    return networks


def _unit_ratio(table: LatencyTable, engine: Backend, spec: ArchSpec) -> dict[str, float]:
    """Per category, the reference network's units timed here over their entries."""
    units = {placed.unit.key: placed.unit for placed in op_units(spec)}
    rng = random.Random("recalibrate-units")
    runners = {}
    for key, unit in units.items():
        with seeded_weights(rng.randrange(2**31)):
            module = unit.build()
        runners[key] = engine.prepare(module, unit.input_shape(table.batch), seed=rng.randrange(2**31))
    context = table.meta.get("measurement", {}).get("context") or "cold"
    samples = time_units(runners, engine.timer(), UNIT_ROUNDS, 2, rng, (context,), gate=SpeedGate.shared(engine))[context]
    here: dict[str, float] = {}
    there: dict[str, float] = {}
    for key, unit in units.items():
        here[unit.category] = here.get(unit.category, 0.0) + Timing.from_samples(samples[key]).value(table.statistic)
        there[unit.category] = there.get(unit.category, 0.0) + table.entries[key].value(table.statistic)
    return {category: round(here[category] / there[category], 4) for category in here if there[category] > 0}


def _machine(meta: dict[str, Any]) -> dict[str, Any]:
    """What a table records about the machine it describes."""
    return {name: meta.get(name) for name in ("device", "reference", "provenance", "calibration", "call_overhead_ms")}


def recalibrate_here(
    table: LatencyTable,
    out: str | Path,
    *,
    samples: int = 0,
    rounds: int = 8,
    runs: int = 2,
    min_group_seconds: float = 1.0,
    show_progress: bool = True,
) -> RecalibrationResult:
    """A copy of ``table`` calibrated for this machine, saved at ``out`` (never over ``table``).

    Times here the table's calibration networks and ``samples`` more random networks of its space
    (``rounds`` visits of one untimed and ``runs`` timed inferences each, more for small networks
    while a group of them has taken under ``min_group_seconds``), its reference network and that
    network's units, and fits the calibration on them. The entries are kept.
    """
    out = Path(out)
    for name, value, least in (("samples", samples, 0), ("rounds", rounds, 1), ("runs", runs, 1)):
        if value < least:
            raise ConfigError(name, f"must be at least {least}, got {value}")
    if min_group_seconds < 0:
        raise ConfigError("min_group_seconds", f"must be at least 0, got {min_group_seconds}")
    _check_source(table, out)
    started = time.monotonic()
    networks = _networks(table, samples)
    _, reference_name, reference_spec, _ = recorded_reference(table)
    assert reference_spec is not None and reference_name is not None  # a calibrated table always has one
    engine = get_backend(table.backend, table.threads)
    timings: dict[str, Timing] = {}
    rng = random.Random("recalibrate")
    with engine.session(), progress_bar(show=show_progress) as progress:
        task = progress.add_task("timing calibration networks here", total=len(networks))
        for start in range(0, len(networks), MODEL_GROUP):
            group = networks[start : start + MODEL_GROUP]
            timings.update(
                time_models(engine, group, rounds, runs, rng, 0, (progress, task), min_seconds=min_group_seconds, batch=table.batch)
            )
        ratio = _unit_ratio(table, engine, reference_spec)
        # The reference is usually a calibration network too (the space's smallest): timed already.
        timed = next((timings[name] for name, spec in networks if spec == reference_spec), None)
        reference = reference_record(engine, reference_spec, timed, batch=table.batch, name=reference_name)
    return _finish(table, out, networks, timings, reference, ratio, samples, time.monotonic() - started)


def _finish(
    table: LatencyTable,
    out: Path,
    networks: list[tuple[str, ArchSpec]],
    timings: dict[str, Timing],
    reference: dict[str, Any],
    ratio: dict[str, float],
    samples: int,
    seconds: float,
) -> RecalibrationResult:
    meta = copy.deepcopy(table.meta)
    earlier = meta.get("recalibration") or {}
    previous = _machine(table.meta)
    meta["recalibration"] = {
        # Entries stay those of the machine that measured them, however often they are recalibrated.
        "entries_measured_on": earlier.get("entries_measured_on") or {k: v for k, v in previous.items() if k != "calibration"},
        "previous": previous,
        "networks": len(networks),
        "extra_samples": samples,
        "unit_ratio": ratio,
        "seconds": round(seconds, 1),
        "provenance": provenance(),
    }
    meta["device"] = hardware_name(table.backend)
    meta["reference"] = reference
    result = LatencyTable(meta, table.entries, path=out)
    models = [CalibrationModel(name=name, arch=spec.to_dict(), **asdict(timings[name])) for name, spec in networks]
    meta["calibration"] = calibration_from_models(result, models)
    if meta["calibration"] is None:
        raise EfnasError(f"latency table {table.path} lacks entries for its own calibration networks")
    meta["quality"] = assess_quality(result)
    save_lut(result, out)
    return RecalibrationResult(result, len(networks), seconds)
