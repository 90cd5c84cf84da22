"""The latency table file: versioned JSON, validated on load, and the prediction it makes.

A table is ``meta`` (device, backend, precision, batch, threads, resolution, the space it belongs
to, provenance, how it was made, the calibration) and ``entries`` (key -> median ms, p10/p90
spread, number of timed runs). Entries and predictions are milliseconds per call on a batch of
``meta.batch`` images (a file without ``batch``, from before it was recorded, means 1). The file is written with one entry per line, so a person can read
it, diff it and edit it.
"""

from __future__ import annotations

import hashlib
import json
import math
import shlex
from pathlib import Path
from typing import Any

from supernet.errors import EfnasError, read_user_data
from supernet.io import atomic_write_text
from supernet.space import ArchSpec, SearchSpace, builtin_space_names

from latency_lut._calibration import Calibration
from latency_lut._keys import category_of, op_units, parse_key, space_keys
from latency_lut._measure import STATISTICS, Timing

__all__ = ["LatencyTable", "load_lut", "predict_ms", "save_lut"]

FORMAT = "efnas-latency-table"
VERSION = 1
_META_REQUIRED = {
    "device": str,
    "backend": str,
    "precision": str,
    "threads": int,
    "resolution": int,
    "space": dict,
    "source": str,
}
SOURCES = ("measured", "imported")
#: More blocks than any EfficientFormer has (L7: 38): an architecture beyond it is a typo, and
#: listing it unit by unit would take memory without end.
MAX_BLOCKS = 1000
_KIND_NAMES = {str: "a string", int: "an integer", dict: "an object"}
#: Optional fields of ``meta`` and what their absence means.
_META_DEFAULTS = {"batch": 1}


class LatencyTable:
    """Per-unit latencies of one device and backend for one search space.

    ``meta`` is a plain dict (see the module docstring and ``docs/latency_lut.md``); ``entries``
    maps keys (see :mod:`latency_lut._keys`) to :class:`Timing`. ``path`` is where the table was
    read from or last saved, used in messages.
    """

    def __init__(self, meta: dict[str, Any], entries: dict[str, Timing] | None = None, path: Path | None = None) -> None:
        self.meta = meta
        self.entries: dict[str, Timing] = dict(entries or {})
        self.path = path

    # -- identity -------------------------------------------------------------------------------

    @property
    def backend(self) -> str:
        return self.meta["backend"]

    @property
    def threads(self) -> int:
        """Intra-op threads the table was measured with (0: the runtime chose, as Core ML does)."""
        return int(self.meta["threads"])

    @property
    def batch(self) -> int:
        """Images per call the table was measured on: its entries and predictions are ms per batch."""
        return int(self.meta.get("batch", 1))

    @property
    def statistic(self) -> str:
        """Which statistic of the runs entries and predictions stand for: ``p10`` or ``median``."""
        return self.meta.get("statistic", "median")

    @property
    def calibration(self) -> Calibration | None:
        data = self.meta.get("calibration")
        return Calibration.from_dict(data) if data else None

    def digest(self) -> str:
        """A short hash of what the table predicts with (entries, calibration, statistic), not of
        where the file lives: workers on different machines can tell they use the same table."""
        content = {
            "entries": {k: v.to_dict() for k, v in sorted(self.entries.items())},
            "calibration": self.meta.get("calibration"),
            "statistic": self.statistic,
        }
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:12]

    def describe(self) -> str:
        """One line: device, backend, threads, batch, space."""
        space = self.meta["space"]
        threads = "threads chosen by the runtime" if self.threads == 0 else f"{self.threads} thread(s)"
        return (
            f"{self.meta['device']}, {self.backend} {self.meta['precision']}, {threads}, "
            f"batch {self.batch}, space '{space['name']}' ({space['fingerprint']}) at "
            f"{self.meta['resolution']}x{self.meta['resolution']}"
        )

    def measure_args(self) -> list[str]:
        """The ``lut build`` flags that measure as this table was: backend, threads, and the batch
        when it is not 1."""
        args = ["--backend", self.backend, "--threads", str(self.threads)]
        return args + (["--batch", str(self.batch)] if self.batch != 1 else [])

    def default_name(self, space_name: str) -> str:
        """A file name for a table of ``space_name`` measured as this one was."""
        batch = f"-batch{self.batch}" if self.batch != 1 else ""
        return f"{space_name}_{self.backend}-{self.threads}thread{batch}.json"

    def check_space(self, space: SearchSpace, *, space_arg: str | None = None, copy_to: str | Path | None = None) -> None:
        """Raise a one-line :class:`EfnasError` if this table was made for another space.

        The error's command builds a table for ``space`` into a new file (``copy_to``, e.g. in the
        caller's run folder; default: a file named after the space in the current folder), never
        into this table; ``space_arg`` is how the user named ``space`` (a built-in name or a file).
        """
        mine = self.meta["space"]
        if mine["fingerprint"] != space.fingerprint():
            if space_arg is None:
                space_arg = space.name if space.name in builtin_space_names() else "SPACE_FILE"
            out = copy_to or self.default_name(space.name)
            args = ["efnas", "lut", "build", "--space", space_arg, *self.measure_args(), "--out", str(out)]
            raise EfnasError(
                f"latency table {self._where()} was made for space '{mine['name']}' (fingerprint "
                f"{mine['fingerprint']}), not for space '{space.name}' (fingerprint {space.fingerprint()}); "
                f"build one with: {shlex.join(args)}"
            )

    def check_covers(self, space: SearchSpace) -> None:
        """Raise a one-line :class:`EfnasError` unless this table was made for ``space`` and
        prices every unit of it."""
        self.check_space(space)
        missing = sorted(space_keys(space) - set(self.entries))
        if missing:
            raise EfnasError(
                f"latency table {self._where()} has no entry for {len(missing)} unit(s) of space '{space.name}' "
                f"({_first(missing, 4)}); measure them with: {self.fill_command(space.largest())}"
            )

    def _where(self) -> str:
        return str(self.path) if self.path else "(in memory)"

    # -- prediction -----------------------------------------------------------------------------

    def missing(self, spec: ArchSpec) -> list[str]:
        """Keys of ``spec`` this table has no entry for, in forward order."""
        seen: dict[str, None] = {}
        for placed in op_units(spec):
            if placed.unit.key not in self.entries:
                seen[placed.unit.key] = None
        return list(seen)

    def fill_command(self, spec: ArchSpec | None = None, space_arg: str | None = None, *, copy_to: str | Path | None = None) -> str:
        """The command that measures this table's missing keys: ``efnas lut build`` (it resumes),
        or for a table imported from Core ML timings, a bundle of the missing keys to time again.

        A table inside the installed package is never the target: the command copies it first
        (to ``copy_to``, e.g. in the caller's run folder; default: its name in the current folder).
        """
        space = self.meta["space"]
        if self.meta.get("source") == "imported":
            args = ["efnas", "lut", "coreml-bundle", "--space", space_arg or space.get("source") or space["name"]]
            if spec is not None and spec.num_classes != space.get("num_classes"):
                args += ["--num-classes", str(spec.num_classes)]
            return shlex.join([*args, "--out", "BUNDLE"]) + ", time it on the device, then efnas lut import it again"
        args = ["efnas", "lut", "build", "--space", space_arg or space.get("source") or space["name"]]
        if spec is not None and spec.num_classes != space.get("num_classes"):
            args += ["--num-classes", str(spec.num_classes)]
        args += self.measure_args()
        if self.path is None:
            return shlex.join([*args, "--out", str(copy_to or "TABLE.json")])
        if not in_installed_package(self.path):
            return shlex.join([*args, "--out", str(self.path)])
        copy = str(copy_to or self.path.name)
        return f"{shlex.join(['cp', str(self.path), copy])} && {shlex.join([*args, '--out', copy])}"

    @property
    def call_overhead_ms(self) -> float:
        """The fixed cost of one backend call, included in every entry (0 if not measured)."""
        return float(self.meta.get("call_overhead_ms") or 0.0)

    def _require(self, spec: ArchSpec) -> None:
        missing = self.missing(spec)
        if missing:
            raise EfnasError(
                f"latency table {self._where()} has no entry for {len(missing)} unit(s) of {spec.label()}: "
                f"{_first(missing, 8)}; measure them with: {self.fill_command(spec)}"
            )

    def category_sums(self, spec: ArchSpec) -> dict[str, float]:
        """Per calibration category, the sum of ``spec``'s entries less the per-call overhead
        that each standalone measurement paid and a network pays only once (ms)."""
        self._require(spec)
        overhead = self.call_overhead_ms
        sums: dict[str, float] = {}
        for placed in op_units(spec):
            category = placed.unit.category
            value = max(self.entries[placed.unit.key].value(self.statistic) - overhead, 0.0)
            sums[category] = sums.get(category, 0.0) + value
        return sums

    def unit_ms(self, key: str, calibrated: bool = True) -> float:
        """What one occurrence of unit ``key`` adds to :meth:`predict_ms`: its entry, or with a
        calibration its category's scale times (entry - per-call overhead). Never negative, so
        ``predict_ms(spec) == fixed_ms() + sum(unit_ms(k) for each unit k of spec)``."""
        value = self.entries[key].value(self.statistic)
        calibration = self.meta.get("calibration") if calibrated else None
        if not calibration:
            return value
        scale = calibration["scales"][category_of(key.partition(":")[0])]
        return scale * max(value - self.call_overhead_ms, 0.0)

    def fixed_ms(self, calibrated: bool = True) -> float:
        """The part of :meth:`predict_ms` no unit accounts for: the calibration's overhead."""
        calibration = self.meta.get("calibration") if calibrated else None
        return float(calibration["overhead_ms"]) if calibration else 0.0

    def predict_ms(self, spec: ArchSpec, calibrated: bool = True) -> float:
        """Predicted latency of ``spec`` in ms: the calibrated model, or with ``calibrated=False``
        the plain sum of its units' entries (also what a table without calibration predicts)."""
        self._require(spec)
        return self.fixed_ms(calibrated) + sum(self.unit_ms(placed.unit.key, calibrated) for placed in op_units(spec))

    # -- file format ----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "meta": self.meta,
            "entries": {key: entry.to_dict() for key, entry in self.entries.items()},
        }

    def to_json(self) -> str:
        """Readable JSON: meta indented, one entry per line."""
        head = json.dumps({"format": FORMAT, "version": VERSION, "meta": self.meta}, indent=2)
        lines = [f"    {json.dumps(key)}: {json.dumps(entry.to_dict())}" for key, entry in self.entries.items()]
        body = ",\n".join(lines)
        entries = "{\n" + body + "\n  }" if lines else "{}"
        return head[: head.rindex("}")].rstrip() + f',\n  "entries": {entries}\n}}\n'


def in_installed_package(path: str | Path) -> bool:
    """Whether ``path`` lies inside this package (its shipped tables) or a site-packages folder:
    places a command should never write to."""
    import sysconfig

    resolved = Path(path).resolve()
    roots = [Path(__file__).resolve().parent]
    roots += [Path(p).resolve() for p in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}]
    return any(resolved.is_relative_to(root) for root in roots)


def suggested_out(path: Path | None, suffix: str) -> str:
    """Where a command should write a new version of the table at ``path``: next to it with
    ``suffix`` added to its name, or in the current folder when it lies in the installed package."""
    if path is None:
        return f"TABLE{suffix}.json"
    name = f"{path.stem}{suffix}{path.suffix or '.json'}"
    return name if in_installed_package(path) else str(path.with_name(name))


def _first(keys: list[str], count: int) -> str:
    """The first ``count`` keys, and how many more there are."""
    return ", ".join(keys[:count]) + (f" and {len(keys) - count} more" if len(keys) > count else "")


def predict_ms(spec: ArchSpec, lut: LatencyTable) -> float:
    """Calibrated predicted latency of ``spec`` (ms); a one-line error lists missing keys and the
    command that measures them."""
    return lut.predict_ms(spec)


def save_lut(lut: LatencyTable, path: str | Path) -> Path:
    """Write ``lut`` atomically; returns the path."""
    path = Path(path)
    atomic_write_text(path, lut.to_json())
    lut.path = path
    return path


# -- loading and validation ------------------------------------------------------------------


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_entry(key: str, raw: Any, where: str) -> Timing:
    try:
        parse_key(key)
    except EfnasError as exc:
        raise EfnasError(f"{where}: entry {exc}") from None
    if not isinstance(raw, dict):
        raise EfnasError(f"{where}: entry '{key}' must be an object with median_ms, p10_ms, p90_ms and runs")
    fields = ("median_ms", "p10_ms", "p90_ms", "runs")
    missing = [name for name in fields if name not in raw]
    if missing:
        raise EfnasError(f"{where}: entry '{key}' is missing {', '.join(missing)}")
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise EfnasError(f"{where}: entry '{key}' has unknown field(s) {', '.join(unknown)}")
    for name in fields[:3]:
        if not _number(raw[name]) or raw[name] < 0:
            raise EfnasError(f"{where}: entry '{key}' {name} must be a non-negative number, got {raw[name]!r}")
    if not isinstance(raw["runs"], int) or isinstance(raw["runs"], bool) or raw["runs"] < 1:
        raise EfnasError(f"{where}: entry '{key}' runs must be a positive integer, got {raw['runs']!r}")
    if not raw["p10_ms"] <= raw["median_ms"] <= raw["p90_ms"]:
        raise EfnasError(
            f"{where}: entry '{key}' needs p10_ms <= median_ms <= p90_ms, got "
            f"{raw['p10_ms']}, {raw['median_ms']}, {raw['p90_ms']}"
        )
    return Timing(float(raw["median_ms"]), float(raw["p10_ms"]), float(raw["p90_ms"]), raw["runs"])


def _check_meta(meta: Any, where: str) -> dict[str, Any]:
    if not isinstance(meta, dict):
        raise EfnasError(f"{where}: 'meta' must be an object")
    for name, default in _META_DEFAULTS.items():
        meta.setdefault(name, default)
    for name, kind in {**_META_REQUIRED, "batch": int}.items():
        if name not in meta:
            raise EfnasError(f"{where}: meta is missing '{name}'")
        value = meta[name]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise EfnasError(f"{where}: meta '{name}' must be {_KIND_NAMES[kind]}, got {value!r}")
        lowest = 0 if name == "threads" else 1  # 0: the runtime chooses (Core ML)
        if kind is int and value < lowest:
            raise EfnasError(f"{where}: meta '{name}' must be at least {lowest}, got {value}")
    space = meta["space"]
    for name in ("name", "fingerprint"):
        if not isinstance(space.get(name), str) or not space.get(name):
            raise EfnasError(f"{where}: meta space needs a '{name}' string")
    overhead = meta.get("call_overhead_ms", 0.0)
    if not _number(overhead) or overhead < 0:
        raise EfnasError(f"{where}: meta 'call_overhead_ms' must be a non-negative number, got {overhead!r}")
    if meta.get("statistic", "median") not in STATISTICS:
        raise EfnasError(f"{where}: meta 'statistic' must be one of {', '.join(STATISTICS)}, got {meta['statistic']!r}")
    if meta["source"] not in SOURCES:
        raise EfnasError(f"{where}: meta 'source' must be one of {', '.join(SOURCES)}, got {meta['source']!r}")
    if meta.get("calibration") is not None:
        try:
            Calibration.from_dict(meta["calibration"])
        except EfnasError as exc:
            raise EfnasError(f"{where}: {exc}") from None
    if meta.get("reference") is not None:
        _check_reference(meta["reference"], where)
    return meta


def _check_reference(reference: Any, where: str) -> None:
    """``meta.reference``: the network timed at build time to tell later whether this machine
    still runs as the table's did (see :mod:`latency_lut._health`)."""
    if not isinstance(reference, dict) or not isinstance(reference.get("arch"), dict):
        raise EfnasError(f"{where}: meta 'reference' must be an object with an 'arch' object")
    if not isinstance(reference.get("hardware"), str):
        raise EfnasError(f"{where}: meta reference needs a 'hardware' string")
    for name in ("median_ms", "p10_ms", "p90_ms"):
        if not _number(reference.get(name)) or reference[name] <= 0:
            raise EfnasError(f"{where}: meta reference {name} must be a positive number, got {reference.get(name)!r}")


def table_from_dict(data: Any, where: str = "latency table") -> LatencyTable:
    """Validate a decoded table file; every problem is a one-line :class:`EfnasError`."""
    if not isinstance(data, dict):
        raise EfnasError(f"{where}: a latency table must be a JSON object")
    if data.get("format") != FORMAT:
        raise EfnasError(f"{where}: not a latency table (expected \"format\": \"{FORMAT}\")")
    version = data.get("version")
    if version != VERSION:
        raise EfnasError(f"{where}: table format version {version!r} is not supported (this tool reads version {VERSION})")
    unknown = sorted(set(data) - {"format", "version", "meta", "entries"})
    if unknown:
        raise EfnasError(f"{where}: unknown top-level field(s) {', '.join(unknown)}")
    if "meta" not in data:
        raise EfnasError(f"{where}: missing 'meta'")
    meta = _check_meta(data["meta"], where)
    entries = data.get("entries")
    if not isinstance(entries, dict):
        raise EfnasError(f"{where}: 'entries' must be an object mapping keys to measurements")
    return LatencyTable(meta, {key: _check_entry(key, raw, where) for key, raw in entries.items()})


def load_lut(path: str | Path) -> LatencyTable:
    """Read and validate a latency table file."""
    path = Path(path)
    data = read_user_data(path, "latency table", format="json")
    table = table_from_dict(data, f"latency table {path}")
    table.path = path
    return table
