"""``lut build``: measure every unit of a space, then calibrate on whole networks.

Units are timed in two contexts at once (see :data:`latency_lut._measure.CONTEXTS`): cold, right
after other units, and warm, right after their own first run. Which of the two describes how
blocks run inside the networks of this space depends on whether those networks fit in the
machine's caches, so the build does not guess: it fits the calibration with either set of
entries and keeps the one that explains the measured networks better (the evidence is recorded in
``meta.measurement``). Keys added to the table later are measured in the chosen context only.

The build is resumable at every step: entries are saved (atomically) after each group of units and
each group of calibration networks, and a build started on an existing table measures only what
it lacks. Keys added to a finished table (a head for another class count) never re-price its
existing entries or its per-call overhead; the calibration is fitted again at the end, and the
table's quality (``meta.quality``) judged again.

Threads and batch are dimensions of a table (``meta.threads``, ``meta.batch``): every unit, every
calibration network and the reference network are timed at the config's thread count on inputs of
its batch, and a build never mixes settings within one table.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from rich.progress import Progress

from supernet.errors import ConfigError, EfnasError
from supernet.io import console, cpu_model, live_progress, progress_bar, provenance
from supernet.space import ArchSpec, SearchSpace

from latency_lut._backends import Backend, get_backend
from latency_lut._calibration import CalibrationModel, fit_calibration
from latency_lut._health import assess_quality, reference_record, staleness_warning
from latency_lut._keys import OpUnit, parse_key, space_units
from latency_lut._measure import CONTEXTS, STATISTICS, SpeedGate, Timing, check_batch, seeded_weights, time_models, time_units
from latency_lut._table import LatencyTable, load_lut, save_lut

__all__ = ["BuildConfig", "BuildResult", "build_lut", "calibration_specs", "recalibrate"]

MODEL_GROUP = 6  # whole networks held in memory and interleaved together
NULL_KEY = "null"


@dataclass(frozen=True, kw_only=True)
class BuildConfig:
    """How a table is measured. The defaults are what the shipped tables used."""

    backend: str = "onnxruntime"
    threads: int = 1  # intra-op threads of the backend, for units and networks alike
    batch: int = 1  # images per call: every unit and network is timed on inputs of this batch
    statistic: str = "p10"  # what entries and predictions stand for: "p10" or "median" of the runs
    rounds: int = 30  # timed runs per unit, one per round, interleaved across the units of a group
    warmup: int = 2  # untimed runs per unit before the timed rounds
    group_size: int = 64  # units prepared and interleaved together (bounds memory)
    max_spread: float = 0.25  # (p90 - p10) / median above which a unit is measured again
    retries: int = 2  # how many times a noisy unit is measured again
    calibration_samples: int = 12  # random networks measured end to end for the calibration
    calibration_rounds: int = 8  # visits per calibration network (interleaved across them)
    calibration_runs: int = 2  # timed runs per visit
    calibration_passes: int = 2  # passes over all calibration networks; each keeps its fastest pass's timing
    min_group_seconds: float = 2.0  # small units and networks get more rounds, up to this long per group
    seed: int = 0
    device: str | None = None  # name recorded in the table; default: the CPU or GPU model
    num_classes: int | None = None  # head keys for this class count instead of the space's
    max_minutes: float | None = None  # stop (resumably) after about this long

    def __post_init__(self) -> None:
        if self.statistic not in STATISTICS:
            raise ConfigError("statistic", f"must be one of {', '.join(STATISTICS)}, got {self.statistic!r}")
        for name in ("threads", "rounds", "group_size", "calibration_rounds", "calibration_runs", "calibration_passes"):
            if getattr(self, name) < 1:
                raise ConfigError(name, f"must be at least 1, got {getattr(self, name)}")
        for name in ("warmup", "retries", "calibration_samples"):
            if getattr(self, name) < 0:
                raise ConfigError(name, f"must be at least 0, got {getattr(self, name)}")
        check_batch(self.batch)
        if self.min_group_seconds < 0:
            raise ConfigError("min_group_seconds", f"must be at least 0, got {self.min_group_seconds}")
        if self.max_spread <= 0:
            raise ConfigError("max_spread", f"must be positive, got {self.max_spread}")


@dataclass(frozen=True)
class BuildResult:
    table: LatencyTable
    measured: int  # units measured by this run
    remeasured: int  # noisy units measured again by this run
    complete: bool  # False when stopped by max_minutes; run again to continue
    seconds: float


def calibration_specs(space: SearchSpace, count: int, seed: int) -> list[tuple[str, ArchSpec]]:
    """The networks a table calibrates on: the space's smallest network (it pins down the fixed
    overhead, which matters most for small networks) and ``count`` distinct random subnets. Never
    the presets, so that ``lut check`` can test on them as held-out networks."""
    if count == 0:
        return []
    rng = random.Random(f"calibration-{seed}")
    presets = {spec for _, spec in space.presets}
    specs: list[ArchSpec] = [space.smallest()] if space.smallest() not in presets else []
    attempts = 0
    while len(specs) < count + 1 and attempts < 100 * (count + 1):
        attempts += 1
        spec = space.sample(rng)
        if spec not in presets and spec not in specs:
            specs.append(spec)
    return [(f"cal{i:02d}", spec) for i, spec in enumerate(specs)]


def _new_meta(space: SearchSpace, space_arg: str, config: BuildConfig, engine: Backend) -> dict[str, Any]:
    if config.device:
        device = config.device
    elif engine.name == "torch-cuda":
        device = torch.cuda.get_device_name()
    else:
        device = cpu_model()
    return {
        "device": device,
        "backend": engine.name,
        "backend_details": engine.details(),
        "precision": engine.precision,
        "batch": config.batch,
        "threads": config.threads,
        "resolution": space.resolution,
        "space": {
            "name": space.name,
            "source": space_arg,
            "fingerprint": space.fingerprint(),
            "num_classes": space.num_classes,
        },
        "source": "measured",
        "statistic": config.statistic,
        "measurement": {
            "clock": engine.clock,
            "units": "per round, every unit of a group once in a fresh random order: cold run, then warm run",
            "networks": "per round one untimed and calibration_runs timed runs per network, interleaved",
            "rounds": config.rounds,
            "warmup": config.warmup,
            "group_size": config.group_size,
            "max_spread": config.max_spread,
            "retries": config.retries,
            "calibration_samples": config.calibration_samples,
            "calibration_rounds": config.calibration_rounds,
            "calibration_runs": config.calibration_runs,
            "calibration_passes": config.calibration_passes,
            "min_group_seconds": config.min_group_seconds,
            "seed": config.seed,
            "context": None,
            "call_overhead_per_group_ms": {context: [] for context in CONTEXTS},
        },
        "provenance": provenance(),
        "build_seconds": 0.0,
        "call_overhead_ms": 0.0,
        "calibration": None,
    }


def _check_resumable(table: LatencyTable, space: SearchSpace, engine: Backend, batch: int, out: Path) -> None:
    meta = table.meta
    table.check_space(space)
    if meta["source"] != "measured":
        raise EfnasError(f"{out} is an imported table; build into another file with --out")
    if meta["backend"] != engine.name or meta["threads"] != engine.threads or table.batch != batch:
        raise EfnasError(
            f"{out} was measured with {meta['backend']} at {meta['threads']} thread(s) and batch {table.batch}, not "
            f"{engine.name} at {engine.threads} and batch {batch}; choose another --out or the same settings"
        )


class _Build:
    """One run of ``lut build`` on one table file."""

    def __init__(
        self, table: LatencyTable, engine: Backend, config: BuildConfig, out: Path, deadline: float | None, bar: bool
    ) -> None:
        self.table = table
        self.engine = engine
        self.config = config
        self.out = out
        self.deadline = deadline
        self.bar = bar  # a live progress bar; without one (piped, --no-progress) one log line per group
        self.started = time.monotonic()
        self.measurement = table.meta["measurement"]
        self.rng = random.Random(f"build-{config.seed}-{len(table.entries)}")
        self._gate: SpeedGate | None = None
        self._gate_counts = (0, 0)  # the gate's counts before this run, less this table's earlier runs'

    @property
    def gate(self) -> SpeedGate:
        """The process's gate (made inside the backend's session); its counts for this table are
        recorded in ``meta.measurement.speed_gate``."""
        if self._gate is None:
            self._gate = SpeedGate.shared(self.engine)
            earlier = self.measurement.get("speed_gate", {})  # a resumed build adds to its counts
            self._gate_counts = (self._gate.rounds - earlier.get("rounds", 0), self._gate.dropped - earlier.get("slow_rounds_dropped", 0))
        return self._gate

    @property
    def context(self) -> str | None:
        """The chosen context, or None while the calibration has not chosen one yet."""
        return self.measurement.get("context")

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    def spend(self, seconds: float) -> None:
        self.table.meta["build_seconds"] = round(self.table.meta.get("build_seconds", 0.0) + seconds, 1)

    def save(self) -> None:
        if self._gate is not None:
            rounds, dropped = self._gate_counts
            self.measurement["speed_gate"] = {**self._gate.record(), "rounds": self._gate.rounds - rounds,
                                              "slow_rounds_dropped": self._gate.dropped - dropped}
        save_lut(self.table, self.out)

    def log(self, text: str) -> None:
        if not self.bar:
            console.print(f"[{time.monotonic() - self.started:6.1f} s] {text}", soft_wrap=True)

    def measure(self, units: Sequence[OpUnit], progress: Progress, task: Any) -> dict[str, dict[str, Timing]]:
        """Timings of ``units`` per context (both while undecided, else the chosen one)."""
        runners = {}
        for unit in units:
            with seeded_weights(self.rng.randrange(2**31)):
                module = unit.build()
            runners[unit.key] = self.engine.prepare(module, unit.input_shape(self.table.batch), seed=self.rng.randrange(2**31))
            progress.advance(task, 0.5)
        # A unit that does (almost) nothing, timed with the others: the fixed cost of one call.
        runners[NULL_KEY] = self.engine.prepare(nn.ReLU(), (self.table.batch, 1))
        contexts = CONTEXTS if self.context is None else (self.context,)
        per_round = 0.5 * len(units) / self.config.rounds
        samples = time_units(
            runners,
            self.engine.timer(),
            self.config.rounds,
            self.config.warmup,
            self.rng,
            contexts,
            on_round=lambda: progress.advance(task, per_round),
            min_seconds=self.config.min_group_seconds,
            gate=self.gate,
        )
        timings = {
            context: {key: Timing.from_samples(values) for key, values in per_key.items()}
            for context, per_key in samples.items()
        }
        overheads = self.measurement.setdefault("call_overhead_per_group_ms", {context: [] for context in CONTEXTS})
        for context, per_key in timings.items():
            overheads[context].append(round(per_key.pop(NULL_KEY).value(self.table.statistic), 6))
        self.set_call_overhead()
        return timings

    def set_call_overhead(self) -> None:
        """The table's call overhead: the median of the null unit's per-group timings in the
        table's context. Frozen once the table is calibrated: every entry and the calibration
        were priced with it, so keys added later must not shift all predictions."""
        if self.table.meta.get("calibration") is not None:
            return
        values = self.measurement["call_overhead_per_group_ms"][self.context or "cold"]
        self.table.meta["call_overhead_ms"] = round(float(np.median(values)), 6) if values else 0.0

    def store(self, timings: dict[str, dict[str, Timing]], only_if_quieter: bool = False) -> None:
        """Entries get the chosen context (cold while undecided); the warm timings of an
        undecided build wait in ``meta.pending_warm``."""
        primary = timings[self.context or "cold"]
        pending = self.table.meta.setdefault("pending_warm", {}) if self.context is None else None
        for key, timing in primary.items():
            if only_if_quieter and timing.spread >= self.table.entries[key].spread:
                continue
            # As the file holds it (6 decimals): a later refit on the loaded table then finds the same fit.
            self.table.entries[key] = Timing(**timing.to_dict())
            if pending is not None:
                pending[key] = timings["warm"][key].to_dict()


def build_lut(
    space: SearchSpace,
    out: str | Path,
    config: BuildConfig = BuildConfig(),
    *,
    space_arg: str | None = None,
    show_progress: bool = True,
) -> BuildResult:
    """Measure (or complete) the table at ``out`` for ``space`` and fit its calibration.

    ``space_arg`` is how the user named the space (a built-in name or a file), recorded so that
    error messages can print the exact command that fills a missing key. Without
    ``show_progress``, or when the console is not a terminal, one log line per group replaces
    the progress bar.
    """
    started = time.monotonic()
    out = Path(out)
    if config.num_classes is not None:
        space = space.with_num_classes(config.num_classes)
    engine = get_backend(config.backend, config.threads)
    if out.exists():
        table = load_lut(out)
        _check_resumable(table, space, engine, config.batch, out)
    else:
        table = LatencyTable(_new_meta(space, space_arg or space.name, config, engine), path=out)
    bar = show_progress and live_progress()
    run = _Build(table, engine, config, out, started + 60 * config.max_minutes if config.max_minutes else None, bar)
    units = space_units(space)
    todo = [unit for key, unit in units.items() if key not in table.entries]
    if todo and table.calibration is not None:
        # Keys measured here join entries measured there: say so if the machines differ.
        warning = staleness_warning(table)
        if warning:
            console.print(f"[yellow]{warning}[/]", soft_wrap=True)
    # Mixed groups: each unit is timed between units of other kinds and sizes, as in a network.
    run.rng.shuffle(todo)
    measured = remeasured = 0
    complete = True
    with engine.session(), progress_bar(show=bar) as progress:
        if table.entries and todo:
            console.print(f"resuming {out}: {len(table.entries)} unit(s) measured, {len(todo)} to go")
        task = progress.add_task("measuring units", total=len(todo))
        for start in range(0, len(todo), config.group_size):
            if measured and run.out_of_time():  # every run measures at least one group
                complete = False
                break
            group_started = time.monotonic()
            group = todo[start : start + config.group_size]
            run.store(run.measure(group, progress, task))
            measured += len(group)
            run.spend(time.monotonic() - group_started)
            run.save()
            run.log(f"measured {measured} of {len(todo)} unit(s)")
        if complete:
            # A finished table's entries stay as they are; an unfinished one's are all this build's.
            own = [unit.key for unit in todo] if table.calibration is not None else [k for k in units if k in table.entries]
            remeasured = _remeasure_noisy(run, own, progress)
            complete = _calibrate(run, space, progress, refit=bool(todo))
    return BuildResult(table, measured, remeasured, complete, time.monotonic() - started)


def _remeasure_noisy(run: _Build, keys: Sequence[str], progress: Progress) -> int:
    """Measure again, up to ``retries`` times, the units among ``keys`` (those this build measured:
    an existing entry is never re-priced) whose spread is above ``max_spread``; a new timing
    replaces the entry only if it is quieter."""
    table, config = run.table, run.config
    units = {unit.key: unit for unit in (parse_key(key) for key in keys)}
    remeasured = 0
    for attempt in range(config.retries):
        noisy = [unit for key, unit in units.items() if table.entries[key].spread > config.max_spread]
        if not noisy or run.out_of_time():
            break
        retry_started = time.monotonic()
        task = progress.add_task(f"re-measuring noisy units ({attempt + 1})", total=len(noisy))
        for start in range(0, len(noisy), config.group_size):
            run.store(run.measure(noisy[start : start + config.group_size], progress, task), only_if_quieter=True)
        remeasured += len(noisy)
        run.spend(time.monotonic() - retry_started)
        run.save()
        run.log(f"re-measured {len(noisy)} noisy unit(s) (attempt {attempt + 1})")
    return remeasured


def _calibrate(run: _Build, space: SearchSpace, progress: Progress, refit: bool) -> bool:
    """Measure the calibration networks not yet measured, choose the context, fit. False if
    stopped early. A calibrated table to which this run added keys (``refit``) is fitted again
    on the networks it already measured; nothing of them is measured again."""
    table, config = run.table, run.config
    if table.calibration is not None:
        if refit:
            table.meta["calibration"] = calibration_from_models(table, table.calibration.models)
            _judge(run, space)
        return True
    wanted = calibration_specs(
        space.with_num_classes(table.meta["space"]["num_classes"]),
        run.measurement.get("calibration_samples", config.calibration_samples),
        run.measurement.get("seed", config.seed),
    )
    done = {model["name"]: model for model in table.meta.get("pending_calibration", [])}
    passes = run.measurement.get("calibration_passes", 1)  # tables begun before passes existed: 1
    timed_groups = 0
    for index in range(passes):
        passes_done = {name: model.get("passes", 1) for name, model in done.items()}
        todo = [(name, spec) for name, spec in wanted if passes_done.get(name, 0) <= index]
        task = progress.add_task(f"measuring calibration networks (pass {index + 1} of {passes})", total=len(todo), visible=bool(todo))
        rng = random.Random(f"calibration-order-{config.seed}-{index}-{len(wanted) - len(todo)}")
        for start in range(0, len(todo), MODEL_GROUP):
            if timed_groups and run.out_of_time():  # every run times at least one group
                return False
            _time_calibration_group(run, todo[start : start + MODEL_GROUP], done, index, rng, (progress, task))
            timed_groups += 1
            run.log(f"measured {min(start + MODEL_GROUP, len(todo))} of {len(todo)} calibration network(s), pass {index + 1} of {passes}")
    models = [CalibrationModel.from_dict(done[name]) for name, _ in wanted]
    if run.context is None:
        _choose_context(run, models)
    table.meta["calibration"] = calibration_from_models(table, models)
    table.meta.pop("pending_calibration", None)
    _judge(run, space)
    return True


def _time_calibration_group(
    run: _Build, group: list[tuple[str, ArchSpec]], done: dict[str, dict[str, Any]], index: int, rng: random.Random,
    progress: tuple[Progress, Any],
) -> None:
    """Time ``group`` in pass ``index``; each network keeps its faster pass in ``done``, saved."""
    started = time.monotonic()
    config = run.config
    timings = time_models(
        run.engine, group, config.calibration_rounds, config.calibration_runs, rng, config.seed, progress,
        min_seconds=config.min_group_seconds, batch=run.table.batch, gate=run.gate,
    )
    for name, spec in group:
        timing = CalibrationModel(name=name, arch=spec.to_dict(), **asdict(timings[name]))
        done[name] = _faster_pass(done.get(name), timing, run.table.statistic, index)
    run.table.meta["pending_calibration"] = list(done.values())
    run.spend(time.monotonic() - started)
    run.save()


def _faster_pass(earlier: dict[str, Any] | None, timing: CalibrationModel, statistic: str, index: int) -> dict[str, Any]:
    """A calibration network's record after pass ``index``: the faster of its passes so far. The
    units keep only rounds timed while the machine ran at full speed; a network timed in a slow
    stretch as long as a whole pass (measured: v1's networks 2-13% slow for 30 s) would teach the fit
    that slowness as a scale above 1."""
    kept = timing
    if earlier is not None:
        previous = CalibrationModel.from_dict(earlier)
        kept = previous if previous.value(statistic) <= timing.value(statistic) else timing
    return {**kept.to_dict(), "passes": index + 1}


def _judge(run: _Build, space: SearchSpace) -> None:
    """Record the table's quality and, once, its reference timing (the space's smallest network on
    this machine, what a later staleness check times again); then save."""
    table = run.table
    if table.meta.get("reference") is None:
        smallest = space.with_num_classes(table.meta["space"]["num_classes"]).smallest()
        table.meta["reference"] = reference_record(run.engine, smallest, batch=table.batch)
    table.meta["quality"] = assess_quality(table)
    run.save()


def calibration_from_models(table: LatencyTable, models: Sequence[CalibrationModel]) -> dict[str, Any] | None:
    """The calibration (as stored in meta) fitted on those of ``models`` the table can price."""
    usable = [model for model in models if not table.missing(ArchSpec.from_dict(model.arch))]
    if len(usable) < 2:
        return None
    sums = [table.category_sums(ArchSpec.from_dict(model.arch)) for model in usable]
    return fit_calibration(sums, [model.value(table.statistic) for model in usable], usable).to_dict()


def recalibrate(table: LatencyTable) -> LatencyTable:
    """Fit the calibration again from the networks the table already measured (after an edit of
    its entries, or with a newer version of the fit); measures nothing."""
    calibration = table.calibration
    if calibration is None or len(calibration.models) < 2:
        raise EfnasError(f"latency table {table.path} has no calibration networks to fit on")
    table.meta["calibration"] = calibration_from_models(table, calibration.models)
    if table.meta["calibration"] is None:
        raise EfnasError(f"latency table {table.path} lacks entries for its own calibration networks")
    table.meta["quality"] = assess_quality(table)
    return table


def _choose_context(run: _Build, models: list[CalibrationModel]) -> None:
    """Keep the context whose calibrated entries predict the measured networks better (the
    calibration's leave-one-out error, or its fit error when there are too few networks)."""
    table = run.table
    pending = {key: Timing(**value) for key, value in table.meta.pop("pending_warm", {}).items()}
    candidates = {"cold": dict(table.entries), "warm": {**table.entries, **pending}}
    errors: dict[str, float] = {}
    if len(models) >= 2 and set(pending) == set(table.entries):
        for context, entries in candidates.items():
            run.measurement["context"] = context
            run.set_call_overhead()
            trial = LatencyTable(table.meta, entries)
            sums = [trial.category_sums(ArchSpec.from_dict(model.arch)) for model in models]
            errors[context] = fit_calibration(sums, [model.value(table.statistic) for model in models]).selection_mape
    chosen = min(errors, key=errors.get) if errors else "cold"
    run.measurement["context"] = chosen
    run.measurement["context_error_percent"] = {context: round(error, 4) for context, error in errors.items()}
    run.set_call_overhead()
    table.entries = candidates[chosen]
