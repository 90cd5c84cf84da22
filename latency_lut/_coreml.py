"""The Core ML / iPhone path: a bundle of one ``.mlpackage`` per unit, timings measured on the
device by any means, and their import as a latency table.

1. ``coreml-bundle`` (any OS): every unit of a space, plus the calibration networks, traced with
   ``torch.jit.trace`` and converted with coremltools to an ML Program in fp16, and a
   ``manifest.json`` listing each package with its input and output shapes.
2. Timing (on Apple hardware): ``measure-coreml`` (:mod:`latency_lut._apple`, coremltools'
   ``MLModelBenchmarker``) on a Mac or a connected iPhone, or any tool of the user's, giving one
   latency per package in a CSV (format below) and, with ``--compute-plan``, where Core ML placed
   each package's operations (a JSON file beside the CSV, ``NAME.compute-plan.json``).
3. ``import``: bundle manifest + CSV -> latency table, calibrated on the networks' rows.

Results CSV: a header line, then one row per package. Columns ``name`` (a unit key such as
``meta4d:w48:r56:m4``, or ``model:NAME`` for a calibration network of the manifest) and
``median_ms`` are required; ``p10_ms``, ``p90_ms``, ``runs`` and ``compute_units`` are optional.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import shutil
import time
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from supernet.errors import EfnasError, read_user_data, read_user_file
from supernet.io import atomic_write_json, console, progress_bar, provenance
from supernet.model import build_model
from supernet.space import ArchSpec, SearchSpace

from latency_lut._build import calibration_from_models, calibration_specs
from latency_lut._calibration import CalibrationModel
from latency_lut._keys import parse_key, space_units
from latency_lut._measure import Timing, seeded_weights
from latency_lut._health import assess_quality
from latency_lut._table import LatencyTable, save_lut, table_from_dict

__all__ = ["COMPUTE_UNITS", "compute_plan_path", "import_results", "read_compute_plan", "read_manifest", "write_bundle"]

MANIFEST = "manifest.json"
BUNDLE_FORMAT = "efnas-coreml-bundle"
COMPUTE_UNITS = ("ALL", "CPU_AND_NE", "CPU_AND_GPU", "CPU_ONLY")
CSV_COLUMNS = ("name", "compute_units", "median_ms", "p10_ms", "p90_ms", "runs")
MAX_MS = 1e6  # a thousand seconds per prediction: anything above is a unit or typing mistake
PLAN_FORMAT = "efnas-coreml-compute-plan"
PLAN_DEVICES = ("neural_engine", "gpu", "cpu")


@contextmanager
def _quiet_coremltools() -> Iterator[Any]:
    """Import coremltools without its version-compatibility chatter; yields the module."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        previous = logging.root.manager.disable
        logging.disable(logging.WARNING)
        try:
            import coremltools

            yield coremltools
        finally:
            logging.disable(previous)


def _package_name(name: str) -> str:
    return name.replace(":", "_") + ".mlpackage"


def _convert(ct: Any, module: nn.Module, input_shape: tuple[int, ...], path: Path) -> None:
    example = torch.zeros(input_shape)
    with torch.no_grad():
        traced = torch.jit.trace(module.eval(), example)
    model = ct.convert(
        traced,
        inputs=[ct.TensorType(name="input", shape=input_shape)],
        outputs=[ct.TensorType(name="output")],
        convert_to="mlprogram",
        compute_precision=ct.precision.FLOAT16,
        minimum_deployment_target=ct.target.iOS16,
    )
    model.save(str(path))


def write_bundle(
    space: SearchSpace,
    out: str | Path,
    *,
    keys: Sequence[str] | None = None,
    calibration_samples: int = 12,
    seed: int = 0,
    space_arg: str | None = None,
) -> dict[str, Any]:
    """Write the bundle for ``space`` (or only ``keys`` of it) into ``out``; returns the manifest.

    A bundle that exists is completed: packages already written are kept.
    """

    out = Path(out)
    units = space_units(space)
    if keys:
        unknown = [key for key in keys if key not in units]
        if unknown:
            raise EfnasError(f"key(s) {', '.join(unknown)} are not units of space '{space.name}'")
        units = {key: units[key] for key in keys}
    networks = calibration_specs(space, calibration_samples, seed)
    manifest: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "version": 1,
        "space": {
            "name": space.name,
            "source": space_arg or space.name,
            "fingerprint": space.fingerprint(),
            "num_classes": space.num_classes,
            "resolution": space.resolution,
        },
        "precision": "fp16",
        "batch": 1,
        "units": [],
        "models": [],
        "provenance": provenance(("coremltools",)),
    }
    jobs: list[tuple[str, tuple[int, ...], tuple[int, ...], dict[str, Any]]] = []
    for key, unit in units.items():
        jobs.append((key, unit.input_shape(), unit.output_shape(), {"key": key}))
    for name, spec in networks:
        shape = (1, 3, spec.resolution, spec.resolution)
        jobs.append((f"model:{name}", shape, (1, spec.num_classes), {"name": f"model:{name}", "arch": spec.to_dict()}))
    (out / "units").mkdir(parents=True, exist_ok=True)
    (out / "models").mkdir(parents=True, exist_ok=True)
    # A unit's package name says what it is; a calibration network's (cal00, ...) does not, so a
    # package left by an earlier bundle with another --seed or space is only kept if it is the same network.
    earlier: dict[str, Any] = {}
    if (out / MANIFEST).exists():
        try:
            earlier = {m["name"]: m.get("arch") for m in json.loads((out / MANIFEST).read_text()).get("models", [])}
        except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
            earlier = {}
    started = time.monotonic()
    with _quiet_coremltools() as ct, progress_bar() as progress:
        task = progress.add_task("converting to Core ML", total=len(jobs))
        for name, input_shape, output_shape, record in jobs:
            folder = "models" if name.startswith("model:") else "units"
            relative = f"{folder}/{_package_name(name)}"
            path = out / relative
            if folder == "models" and earlier.get(name) != record["arch"]:
                shutil.rmtree(path, ignore_errors=True)
            if not (path / "Manifest.json").exists():
                with seeded_weights(seed):
                    module = build_model(ArchSpec.from_dict(record["arch"])) if name.startswith("model:") else parse_key(name).build()
                _convert(ct, module, input_shape, path)
            record.update({"package": relative, "input": {"name": "input", "shape": list(input_shape)},
                           "output": {"name": "output", "shape": list(output_shape)}})
            manifest["models" if folder == "models" else "units"].append(record)
            progress.advance(task)
    manifest["seconds"] = round(time.monotonic() - started, 1)
    atomic_write_json(out / MANIFEST, manifest)
    return manifest


def read_manifest(bundle: str | Path) -> dict[str, Any]:
    path = Path(bundle) / MANIFEST
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise EfnasError(f"{bundle} is not a Core ML bundle: {MANIFEST} is missing (make one with efnas lut coreml-bundle)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise EfnasError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != BUNDLE_FORMAT:
        raise EfnasError(f"{path} is not a bundle manifest (expected \"format\": \"{BUNDLE_FORMAT}\")")
    for name in ("space", "units", "models"):
        if name not in data:
            raise EfnasError(f"{path} is missing '{name}'")
    _check_manifest(data, path)
    return data


_SPACE_FIELDS = {"name": str, "source": str, "fingerprint": str, "num_classes": int, "resolution": int}


def _check_manifest(data: dict[str, Any], path: Path) -> None:
    """Every field import and measure-coreml read, with its type: a hand-edited manifest is one
    line of error, never a KeyError, nor a table the loader then rejects."""
    space = data["space"]
    if not isinstance(space, dict):
        raise EfnasError(f"{path}: 'space' must be an object")
    for name, kind in _SPACE_FIELDS.items():
        value = space.get(name)
        if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 1) or (kind is str and not value):
            raise EfnasError(f"{path}: space '{name}' must be {'a positive integer' if kind is int else 'a non-empty string'}, got {value!r}")
    if not isinstance(data.get("precision", "fp16"), str) or not isinstance(data.get("batch", 1), int) or data.get("batch", 1) < 1:
        raise EfnasError(f"{path}: 'precision' must be a string and 'batch' a positive integer")
    for section, name_field in (("units", "key"), ("models", "name")):
        records = data[section]
        if not isinstance(records, list):
            raise EfnasError(f"{path}: '{section}' must be a list")
        for i, record in enumerate(records):
            where = f"{path}: {section}[{i}]"
            if not isinstance(record, dict) or not isinstance(record.get(name_field), str):
                raise EfnasError(f"{where} must be an object with a '{name_field}' string")
            if section == "units":
                try:
                    parse_key(record["key"])
                except EfnasError as exc:
                    raise EfnasError(f"{where}: {exc}") from None
            else:
                _check_model_record(record, where)
            _check_package(record.get("package"), where)
            shape = (record.get("input") or {}).get("shape") if isinstance(record.get("input"), dict) else None
            if not isinstance(shape, list) or not shape or not all(isinstance(n, int) and not isinstance(n, bool) and 0 < n < 2**16 for n in shape):
                raise EfnasError(f"{where}: 'input' must be an object with a 'shape' list of positive integers")


def _check_model_record(record: dict[str, Any], where: str) -> None:
    if not record["name"].startswith("model:"):
        raise EfnasError(f"{where}: name must start with 'model:', got {record['name']!r}")
    if not isinstance(record.get("arch"), dict):
        raise EfnasError(f"{where}: 'arch' must be an architecture object")
    try:
        ArchSpec.from_dict(record["arch"])
    except (EfnasError, TypeError, ValueError, KeyError) as exc:
        raise EfnasError(f"{where}: 'arch' is not an architecture ({exc})") from None


def _check_package(package: Any, where: str) -> None:
    """A package path inside the bundle: relative, without '..', so a manifest cannot make the
    tool read (or time) files elsewhere."""
    if not isinstance(package, str) or not package:
        raise EfnasError(f"{where}: 'package' must be a path inside the bundle")
    parts = Path(package).parts
    if Path(package).is_absolute() or ".." in parts or "\\" in package:
        raise EfnasError(f"{where}: package {package!r} must be a relative path inside the bundle, without '..'")


def _read_results(path: Path, compute_units: str | None) -> dict[str, Timing]:
    text = read_user_file(path, "results file")
    lines = list(csv.reader(io.StringIO(text.lstrip("\ufeff"))))  # spreadsheets often add a byte-order mark
    columns = [name.strip() for name in lines[0]] if lines else []
    missing = [name for name in ("name", "median_ms") if name not in columns]
    if missing:
        raise EfnasError(f"results file {path} needs the column(s) {', '.join(missing)} (see docs/latency_lut.md)")
    unknown = [name for name in columns if name not in CSV_COLUMNS]
    if unknown:
        raise EfnasError(f"results file {path} has unknown column(s) {', '.join(unknown)}; known: {', '.join(CSV_COLUMNS)}")
    rows = [{name: value.strip() for name, value in zip(columns, values)} for values in lines[1:]]
    present = sorted({row.get("compute_units") or "" for row in rows} - {""})
    if len(present) > 1 and compute_units is None:
        raise EfnasError(f"results file {path} has rows for compute units {', '.join(present)}; choose one with --compute-units")
    results: dict[str, Timing] = {}
    for line, row in enumerate(rows, start=2):
        if not any(row.values()):
            continue  # blank line
        if compute_units is not None and (row.get("compute_units") or compute_units) != compute_units:
            continue
        name = row.get("name", "")
        try:
            median = float(row.get("median_ms", ""))
            p10 = float(row["p10_ms"]) if row.get("p10_ms") else median
            p90 = float(row["p90_ms"]) if row.get("p90_ms") else median
            runs = int(row["runs"]) if row.get("runs") else 1
        except (ValueError, OverflowError) as exc:
            raise EfnasError(f"results file {path} line {line}: {exc}") from None
        if not (np.isfinite([median, p10, p90]).all() and 0 <= p10 <= median <= p90 and runs >= 1):
            raise EfnasError(f"results file {path} line {line}: needs 0 <= p10_ms <= median_ms <= p90_ms and runs >= 1")
        if not (p10 > 0 and p90 <= MAX_MS):
            raise EfnasError(
                f"results file {path} line {line}: '{name}' times must be above 0 and at most {MAX_MS:g} ms "
                f"(got p10 {p10:g}, median {median:g}, p90 {p90:g}); a prediction cannot take no time or hours"
            )
        if name in results:
            raise EfnasError(f"results file {path} line {line}: '{name}' appears twice")
        results[name] = Timing(median, p10, p90, runs)
    return results


def compute_plan_path(results: str | Path) -> Path:
    """Where ``measure-coreml --compute-plan`` writes the plan for a results CSV, and where
    ``import`` looks for it: beside the CSV, ``NAME.compute-plan.json``."""
    results = Path(results)
    return results.with_name(results.stem + ".compute-plan.json")


def _check_share(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise EfnasError(f"{where} must be a share between 0 and 1, got {value!r}")
    return float(value)


def read_compute_plan(path: str | Path, names: set[str]) -> dict[str, Any]:
    """A compute-plan file, checked field by field against the bundle's package ``names``."""
    path = Path(path)
    data = read_user_data(path, "compute-plan file", format="json")
    if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT or not isinstance(data.get("packages"), dict):
        raise EfnasError(f"{path} is not a compute-plan file (expected \"format\": \"{PLAN_FORMAT}\" and \"packages\")")
    for units, plans in data["packages"].items():
        if units not in COMPUTE_UNITS or not isinstance(plans, dict):
            raise EfnasError(f"{path}: packages must map compute units ({', '.join(COMPUTE_UNITS)}) to plans, got {units!r}")
        for name, plan in plans.items():
            where = f"{path}: {units} '{name}'"
            if name not in names:
                raise EfnasError(f"{where} is not a package of the bundle")
            operations = plan.get("operations") if isinstance(plan, dict) else None
            if isinstance(operations, bool) or not isinstance(operations, int) or operations < 0:
                raise EfnasError(f"{where} needs 'operations', a count of at least 0")
            for device in PLAN_DEVICES:
                _check_share(plan.get(device), f"{where} '{device}'")
            cost = plan.get("cost")
            if cost is not None:
                if not isinstance(cost, dict):
                    raise EfnasError(f"{where} 'cost' must be null or an object of shares")
                for device in PLAN_DEVICES:
                    _check_share(cost.get(device), f"{where} cost '{device}'")
    return data


def _table_compute_plan(path: Path, names: set[str], entries: dict[str, Timing], compute_units: str | None) -> dict[str, Any]:
    """``meta.compute_plan`` of an imported table: per timed unit, the plan of the compute units used."""
    packages = read_compute_plan(path, names)["packages"]
    if compute_units is None:
        if len(packages) > 1:
            raise EfnasError(f"{path} has plans for compute units {', '.join(sorted(packages))}; choose one with --compute-units")
        compute_units = next(iter(packages), None)
    plans = packages.get(compute_units, {})
    return {key: {**plans[key], "ms": entries[key].median_ms} for key in entries if key in plans}


def import_results(
    bundle: str | Path,
    results: str | Path,
    device: str,
    out: str | Path,
    compute_units: str | None = None,
    *,
    compute_plan: str | Path | None = None,
) -> LatencyTable:
    """Turn device timings of a bundle's packages into a (calibrated, where possible) table; with
    ``compute_plan`` (a file ``measure-coreml --compute-plan`` wrote), ``meta.compute_plan`` says
    where Core ML placed each unit's operations."""
    manifest = read_manifest(bundle)
    timings = _read_results(Path(results), compute_units)
    known_units = [record["key"] for record in manifest["units"]]
    known_models = {record["name"]: record for record in manifest["models"]}
    unknown = sorted(set(timings) - set(known_units) - set(known_models))
    if unknown:
        shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise EfnasError(f"results file {results} names {len(unknown)} package(s) that are not in the bundle: {shown}")
    entries = {key: timings[key] for key in known_units if key in timings}
    for key in entries:
        parse_key(key)  # a hand-edited manifest could hold anything
    if not entries:
        raise EfnasError(f"results file {results} has no timing for any unit of the bundle")
    meta: dict[str, Any] = {
        "device": device,
        "backend": "coreml",
        "backend_details": {"compute_units": compute_units or "as measured", "bundle": str(bundle), "format": "mlprogram"},
        "precision": manifest.get("precision", "fp16"),
        "batch": manifest.get("batch", 1),
        "threads": 0,
        "resolution": manifest["space"]["resolution"],
        "space": {key: manifest["space"][key] for key in ("name", "source", "fingerprint", "num_classes")},
        "source": "imported",
        "statistic": "median",
        "measurement": {"results": str(results), "bundle_provenance": manifest.get("provenance")},
        "provenance": provenance(("coremltools",)),
        "calibration": None,
    }
    if compute_plan is not None:
        meta["compute_plan"] = _table_compute_plan(Path(compute_plan), set(known_units) | set(known_models), entries, compute_units)
        meta["measurement"]["compute_plan"] = str(compute_plan)
    table = LatencyTable(meta, entries, path=Path(out))
    models = []
    for name, record in known_models.items():
        if name in timings:
            models.append(CalibrationModel(name=name.removeprefix("model:"), arch=record["arch"], **asdict(timings[name])))
    meta["calibration"] = calibration_from_models(table, models)
    if meta["calibration"] is None:
        console.print(
            "[yellow]no calibration: the results time fewer than 2 calibration networks whose units are all "
            "timed too; predictions are the plain sum of the units[/]"
        )
    meta["quality"] = assess_quality(table)
    # Whatever the manifest and CSV held, never write a table the loader would refuse.
    table_from_dict(json.loads(table.to_json()), f"table imported from {results}")
    save_lut(table, out)
    return table
