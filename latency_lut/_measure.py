"""Timing: interleaved runs, robust statistics, and end-to-end measurement of whole models.

Two patterns, both interleaved so that a slow moment of a shared machine is spread over everything
being measured instead of spoiling one item:

* units of a table (:func:`time_units`): every round visits every unit once in a fresh random
  order, rewrites its input (as the previous block would have) and times its first run (cold)
  and/or a second one (warm);
* whole networks (:func:`time_models`): every round visits every network once, runs it once
  untimed, then times ``runs`` back-to-back inferences, the steady state of a deployed model.
"""

from __future__ import annotations

import gc
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from supernet.errors import ConfigError
from supernet.model import build_model
from supernet.space import ArchSpec

from latency_lut._backends import Backend, Runner, get_backend

__all__ = ["CONTEXTS", "MAX_BATCH", "STATISTICS", "SpeedGate", "Timing", "check_batch", "measure_model", "seeded_weights", "time_models", "time_units"]

#: The statistics a table can predict. ``p10`` estimates the latency on an undisturbed machine
#: (contention from other processes only ever adds time); ``median`` is what most tools report.
STATISTICS = ("p10", "median")
#: The largest batch a table or a measurement takes: a v1 stem's output alone at batch 1024 is
#: 1.2 GB, and serving batches are far smaller.
MAX_BATCH = 1024
#: How a unit is timed: ``cold``, the first run after other units ran (its weights pushed out of
#: the cache, as in a network larger than the cache), or ``warm``, a second run right after the
#: first (as in a network that fits in the cache).
CONTEXTS = ("cold", "warm")


def check_batch(batch: int) -> int:
    """``batch`` if it is a batch size a table can be measured at, else a one-line :class:`ConfigError`."""
    if not isinstance(batch, int) or isinstance(batch, bool) or not 1 <= batch <= MAX_BATCH:
        raise ConfigError("batch", f"must be an integer from 1 to {MAX_BATCH}, got {batch!r}")
    return batch


@dataclass(frozen=True)
class Timing:
    """Median and 10th/90th percentiles (ms) of ``runs`` timed runs."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int

    @classmethod
    def from_samples(cls, samples_ns: Sequence[int]) -> Timing:
        ms = np.asarray(samples_ns, dtype=float) / 1e6
        p10, median, p90 = np.percentile(ms, [10, 50, 90])
        return cls(float(median), float(p10), float(p90), len(ms))

    def value(self, statistic: str) -> float:
        return self.p10_ms if statistic == "p10" else self.median_ms

    @property
    def spread(self) -> float:
        """(p90 - p10) / median: how noisy the measurement was."""
        return (self.p90_ms - self.p10_ms) / self.median_ms if self.median_ms > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "median_ms": round(self.median_ms, 6),
            "p10_ms": round(self.p10_ms, 6),
            "p90_ms": round(self.p90_ms, 6),
            "runs": self.runs,
        }


@contextmanager
def seeded_weights(seed: int) -> Iterator[None]:
    """Modules built inside are initialised from ``seed`` (the same weights as after
    ``torch.manual_seed(seed)``), and the global CPU generator is restored on exit: measuring a
    table leaves the caller's random state as it found it."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


@contextmanager
def _no_gc():
    # A collection in the middle of a timed run would be charged to whatever block was running.
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


#: Small items get more rounds: a group keeps going, up to this many times the rounds asked for,
#: until it has been timed for ``min_seconds`` (microsecond blocks get hundreds of samples for
#: a second or two, large ones just the rounds asked for).
MAX_ROUND_FACTOR = 20


#: A round is kept only if a small reference network, timed at its start, ran within this factor
#: of the fastest reference run seen (:class:`SpeedGate`). Machines of this class run stretches of
#: 0.5-4 s 1.3-2x slower in thread CPU time (so not preemption, which that clock leaves out:
#: another tenant on the same physical core), and units timed in such a stretch came out that much
#: dearer than the rest. On one such machine, two tiny tables built one after the other agreed
#: within ±5% on 0, 10 and 0% of 40 networks without the gate and on 80, 37.5 and 72.5% with it
#: (alternating runs; docs/benchmarks/lut_speed_gate.md).
SLOW_ROUND_FACTOR = 1.15
#: How much longer than it otherwise would a group keeps timing while waiting for fast rounds.
SLOW_WAIT_SECONDS = 8.0


class SpeedGate:
    """Leaves out the rounds timed while the machine ran slow. The reference (two 3x3
    convolutions, ~0.15 ms) runs on the same backend and clock at the start of every round, and a
    round counts as fast when it ran within :data:`SLOW_ROUND_FACTOR` of the fastest reference run
    this process has seen (:meth:`shared`: a slow stretch outlasts a short measurement, so only
    what came before can tell it is slow). Single reference runs vary by more than the factor even
    at full speed, so most rounds are left out; the groups keep timing until they have their rounds."""

    _shared: dict[tuple[str, int, str], SpeedGate] = {}

    @classmethod
    def shared(cls, engine: Backend) -> SpeedGate:
        """The process's gate for ``engine``'s backend, threads and clock (made on first use,
        inside the backend's session)."""
        key = (engine.name, engine.threads, engine.clock)
        if key not in cls._shared:
            cls._shared[key] = cls(engine)
        return cls._shared[key]

    def __init__(self, engine: Backend) -> None:
        with seeded_weights(0):
            module = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
        self._runner = engine.prepare(module, (1, 16, 32, 32))
        self._clock = engine.timer()
        for _ in range(3):
            self._runner.run()
        self.best_ns: int | None = None
        self.rounds = 0  # rounds timed, all calls together
        self.dropped = 0  # of them, rounds left out as slow
        self._times: list[int] = []

    def start(self) -> None:
        """A new call: its rounds are judged apart from the last call's."""
        self._times = []

    def time_round(self) -> bool:
        """Time the reference at the start of a round; whether the round looks fast so far."""
        start = self._clock()
        self._runner.run()
        elapsed = self._clock() - start
        self._times.append(elapsed)
        self.best_ns = elapsed if self.best_ns is None else min(self.best_ns, elapsed)
        return elapsed <= SLOW_ROUND_FACTOR * self.best_ns

    def fast_rounds(self, least: int) -> list[bool]:
        """Per round of this call, whether to keep it: those within the factor of the fastest
        reference run by now, or, when fewer than ``least`` are, the ``least`` fastest."""
        keep = [t <= SLOW_ROUND_FACTOR * (self.best_ns or 0) for t in self._times]
        if sum(keep) < least:
            fastest = set(sorted(range(len(self._times)), key=self._times.__getitem__)[:least])
            keep = [i in fastest for i in range(len(self._times))]
        self.rounds += len(keep)
        self.dropped += keep.count(False)
        return keep

    def record(self) -> dict[str, Any]:
        """What a table or report keeps of the gate: how many rounds it left out."""
        return {"rounds": self.rounds, "slow_rounds_dropped": self.dropped, "factor": SLOW_ROUND_FACTOR}


def _rounds(rounds: int, min_seconds: float, on_round: Callable[[], None] | None, gate: SpeedGate | None) -> Iterator[None]:
    """Yield once per round: at least ``rounds`` (fast ones, with a gate) times, more while under
    ``min_seconds``; with a gate, up to :data:`SLOW_WAIT_SECONDS` longer for the fast rounds."""
    started = time.monotonic()
    done = fast = 0
    while True:
        elapsed = time.monotonic() - started
        counted = fast if gate is not None else done
        if counted >= rounds and (elapsed >= min_seconds or done >= MAX_ROUND_FACTOR * rounds):
            return
        if gate is not None and done >= rounds and elapsed >= min_seconds + SLOW_WAIT_SECONDS:
            return
        is_fast = gate.time_round() if gate is not None else True
        yield
        done += 1
        fast += is_fast
        if on_round is not None and is_fast and counted < rounds:
            on_round()


def _interleaved(
    runners: dict[str, Runner],
    rounds: int,
    rng: random.Random,
    on_round: Callable[[], None] | None,
    min_seconds: float,
    gate: SpeedGate | None = None,
) -> Iterator[tuple[str, Runner]]:
    """Each round, every runner once in a fresh random order, its input rewritten first; the
    garbage collector stays off while the caller times them."""
    order = list(runners)
    with _no_gc():
        for _ in _rounds(rounds, min_seconds, on_round, gate):
            rng.shuffle(order)
            for key in order:
                runners[key].refresh()
                yield key, runners[key]


def _without_slow_rounds(samples: dict[str, list[int]], keep: list[bool], per_round: int) -> dict[str, list[int]]:
    """``samples`` (``per_round`` per key and round, in round order) of the rounds to ``keep``."""
    return {key: [v for i, v in enumerate(values) if keep[i // per_round]] for key, values in samples.items()}


def time_units(
    runners: dict[str, Runner],
    clock: Callable[[], int],
    rounds: int,
    warmup: int,
    rng: random.Random,
    contexts: Sequence[str] = CONTEXTS,
    on_round: Callable[[], None] | None = None,
    min_seconds: float = 0.0,
    gate: SpeedGate | None = None,
) -> dict[str, dict[str, list[int]]]:
    """Per context (``cold``, ``warm``), at least ``rounds`` timings (ns) per runner: each round
    visits every runner once, in a fresh random order, and times its first run (cold: right
    after other units) and/or its second (warm: its own weights just used). With a ``gate``, the
    rounds timed while the machine ran slow are left out."""
    for runner in runners.values():
        for _ in range(warmup):
            runner.run()
    samples: dict[str, dict[str, list[int]]] = {context: {key: [] for key in runners} for context in contexts}
    cold = samples.get("cold")
    warm = samples.get("warm")
    if gate is not None:
        gate.start()
    for key, runner in _interleaved(runners, rounds, rng, on_round, min_seconds, gate):
        start = clock()
        runner.run()
        end = clock()
        if cold is not None:
            cold[key].append(end - start)
        if warm is not None:
            start = clock()
            runner.run()
            warm[key].append(clock() - start)
    if gate is None:
        return samples
    keep = gate.fast_rounds(least=rounds)
    return {context: _without_slow_rounds(per_key, keep, 1) for context, per_key in samples.items()}


def _visit_models(
    runners: dict[str, Runner],
    clock: Callable[[], int],
    rounds: int,
    runs: int,
    rng: random.Random,
    on_round: Callable[[], None] | None = None,
    min_seconds: float = 0.0,
    gate: SpeedGate | None = None,
) -> dict[str, list[int]]:
    samples: dict[str, list[int]] = {key: [] for key in runners}
    if gate is not None:
        gate.start()
    for key, runner in _interleaved(runners, rounds, rng, on_round, min_seconds, gate):
        runner.run()
        for _ in range(runs):
            start = clock()
            runner.run()
            samples[key].append(clock() - start)
    return samples if gate is None else _without_slow_rounds(samples, gate.fast_rounds(least=rounds), runs)


def time_models(
    engine: Backend,
    specs: Sequence[tuple[str, ArchSpec]],
    rounds: int,
    runs: int,
    rng: random.Random,
    seed: int = 0,
    progress: tuple[Any, Any] | None = None,
    min_seconds: float = 0.0,
    *,
    batch: int = 1,
    gate: SpeedGate | None = None,
) -> dict[str, Timing]:
    """End-to-end timings of ``build_model(spec)`` for a group of networks on inputs of ``batch``
    images, interleaved: at least ``rounds`` rounds, more for small networks while under
    ``min_seconds``. A timing is of one call: the whole batch, not one image of it. Rounds timed
    while the machine ran slow are left out (``gate``: by default the process's for ``engine``)."""
    check_batch(batch)
    runners = {}
    for name, spec in specs:
        with seeded_weights(seed):
            model = build_model(spec)
        runners[name] = engine.prepare(model, (batch, 3, spec.resolution, spec.resolution), seed=seed)
    step = None
    if progress is not None:
        bar, task = progress
        step = lambda: bar.advance(task, len(specs) / rounds)  # noqa: E731
    gate = gate or SpeedGate.shared(engine)
    samples = _visit_models(runners, engine.timer(), rounds, runs, rng, on_round=step, min_seconds=min_seconds, gate=gate)
    return {name: Timing.from_samples(values) for name, values in samples.items()}


def measure_model(
    model_or_spec: nn.Module | ArchSpec,
    backend: str | Backend = "onnxruntime",
    threads: int = 1,
    *,
    rounds: int = 10,
    runs: int = 3,
    min_seconds: float = 0.0,
    input_shape: tuple[int, ...] | None = None,
    batch: int = 1,
    seed: int = 0,
) -> Timing:
    """End-to-end latency of a model (or of ``build_model(spec)``) on ``batch`` images per call
    (ignored with ``input_shape``, whose first dimension is the batch) on ``backend``,
    measured as ``lut check`` measures networks: ``rounds`` visits (more for a small model, until
    ``min_seconds``) of one untimed and ``runs`` timed inferences, on the backend's clock (thread
    CPU time at one thread, else wall time).
    Compare ``predict_ms`` with ``timing.value(lut.meta["statistic"])``."""
    if isinstance(model_or_spec, ArchSpec):
        spec: ArchSpec | None = model_or_spec
        with seeded_weights(seed):
            model: nn.Module = build_model(model_or_spec)
    else:
        model = model_or_spec
        spec = getattr(model, "spec", None)
    check_batch(batch)
    if input_shape is None:
        if not isinstance(spec, ArchSpec):
            raise ValueError("measure_model needs input_shape for a model without a .spec")
        input_shape = (batch, 3, spec.resolution, spec.resolution)
    engine = backend if isinstance(backend, Backend) else get_backend(backend, threads)
    with engine.session():
        runner = engine.prepare(model, input_shape, seed=seed)
        samples = _visit_models({"model": runner}, engine.timer(), rounds, runs, random.Random(seed), min_seconds=min_seconds,
                                gate=SpeedGate.shared(engine))
    return Timing.from_samples(samples["model"])
