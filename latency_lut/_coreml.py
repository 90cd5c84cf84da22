"""The Core ML / iPhone path: a bundle of one ``.mlpackage`` per unit, timings measured on the
device by any means, and their import as a latency table.

1. ``coreml-bundle`` (any OS): every unit of a space, plus the calibration networks, traced with
   ``torch.jit.trace`` and converted with coremltools to an ML Program in fp16, and a
   ``manifest.json`` listing each package with its input and output shapes.
2. Timing (on Apple hardware): ``measure-coreml`` on a Mac, or an iOS benchmark app / Xcode's
   performance report, giving one latency per package in a CSV (format below).
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
import platform
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

from supernet.errors import EfnasError, read_user_file
from supernet.io import atomic_write_json, atomic_write_text, console, progress_bar, provenance
from supernet.model import build_model
from supernet.space import ArchSpec, SearchSpace

from latency_lut._build import calibration_from_models, calibration_specs
from latency_lut._calibration import CalibrationModel
from latency_lut._keys import parse_key, space_units
from latency_lut._measure import Timing, seeded_weights
from latency_lut._table import LatencyTable, save_lut

__all__ = ["COMPUTE_UNITS", "import_results", "measure_coreml", "read_manifest", "write_bundle"]

MANIFEST = "manifest.json"
BUNDLE_FORMAT = "efnas-coreml-bundle"
COMPUTE_UNITS = ("ALL", "CPU_AND_NE", "CPU_AND_GPU", "CPU_ONLY")
CSV_COLUMNS = ("name", "compute_units", "median_ms", "p10_ms", "p90_ms", "runs")


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
    return data


def measure_coreml(
    bundle: str | Path,
    out_csv: str | Path,
    compute_units: Sequence[str] = ("ALL",),
    runs: int = 50,
    warmup: int = 5,
) -> Path:
    """Time every package of the bundle with Core ML on this Mac; writes the results CSV."""
    if platform.system() != "Darwin":
        raise EfnasError(
            f"Core ML prediction needs macOS; copy {bundle} to a Mac and run efnas lut measure-coreml there "
            "(or time the packages on an iPhone and write the results CSV described in docs/latency_lut.md)"
        )
    unknown = [unit for unit in compute_units if unit not in COMPUTE_UNITS]
    if unknown:
        raise EfnasError(f"unknown compute units {', '.join(unknown)}; choose from {', '.join(COMPUTE_UNITS)}")

    manifest = read_manifest(bundle)
    packages = manifest["units"] + manifest["models"]
    rows = []
    with _quiet_coremltools() as ct, progress_bar() as progress:
        task = progress.add_task("timing Core ML packages", total=len(packages) * len(compute_units))
        for units_name in compute_units:
            for record in packages:
                model = ct.models.MLModel(str(Path(bundle) / record["package"]), compute_units=ct.ComputeUnit[units_name])
                feed = {"input": np.random.default_rng(0).standard_normal(record["input"]["shape"]).astype(np.float32)}
                for _ in range(warmup):
                    model.predict(feed)
                samples = []
                for _ in range(runs):
                    start = time.perf_counter_ns()
                    model.predict(feed)
                    samples.append(time.perf_counter_ns() - start)
                timing = Timing.from_samples(samples)
                name = record.get("key") or record["name"]
                rows.append({"name": name, "compute_units": units_name, **timing.to_dict()})
                progress.advance(task)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out_csv, buffer.getvalue())
    return Path(out_csv)


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
        except ValueError as exc:
            raise EfnasError(f"results file {path} line {line}: {exc}") from None
        if not (np.isfinite([median, p10, p90]).all() and 0 <= p10 <= median <= p90 and runs >= 1):
            raise EfnasError(f"results file {path} line {line}: needs 0 <= p10_ms <= median_ms <= p90_ms and runs >= 1")
        if name in results:
            raise EfnasError(f"results file {path} line {line}: '{name}' appears twice")
        results[name] = Timing(median, p10, p90, runs)
    return results


def import_results(
    bundle: str | Path,
    results: str | Path,
    device: str,
    out: str | Path,
    compute_units: str | None = None,
) -> LatencyTable:
    """Turn device timings of a bundle's packages into a (calibrated, where possible) table."""
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
    save_lut(table, out)
    return table
