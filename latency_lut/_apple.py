"""``efnas lut measure-coreml``: time a Core ML bundle on this Mac or a connected iPhone with
coremltools' own benchmarker, and optionally record where Core ML placed each unit's operations.

Everything Apple-only goes through coremltools 9's experimental API, called as its source does
(``coremltools/models/ml_program/experimental/``):

- ``perf_utils.MLModelBenchmarker(model=MLModel, device=Device | None)``; the async
  ``benchmark_predict(inputs, iterations, warmup)`` returns a ``Measurement`` whose ``samples`` are
  milliseconds, ``benchmark_operation_execution(inputs, iterations)`` one ``OperationExecutionInfo``
  per operation (``spec.type``, ``compute_device_usage.preferred_compute_device``, and a
  ``measurement`` that is the estimated cost weight times the whole prediction).
- ``remote_device.Device.get_devices()`` (through ``xcrun devicectl``) and the async
  ``Device.prepare_for_model_debugging(credentials, working_directory)``, which builds
  coremltools' ``modelrunner`` Xcode project, installs it on the device and returns the device
  with a session; ``device.session.stop()`` ends it.

None of this can run off Apple hardware: the tests drive :func:`measure_bundle` with stand-ins for
``MLModelBenchmarker`` and ``Device`` (``benchmarker=``, ``devices=``), and everything around the
Apple calls (which packages, which calls, the CSV and plan files) is real.
"""

from __future__ import annotations

import asyncio
import csv
import io
import platform
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from supernet.errors import EfnasError, read_user_file
from supernet.io import atomic_write_json, atomic_write_text, progress_bar

from latency_lut._coreml import (
    COMPUTE_UNITS, CSV_COLUMNS, PLAN_DEVICES, PLAN_FORMAT, _quiet_coremltools, compute_plan_path, read_compute_plan,
    read_manifest,
)
from latency_lut._measure import Timing

__all__ = ["MeasureResult", "measure_bundle"]

MIN_MACOS = (14, 4)  # coremltools' own MLModelBenchmarker and MLComputePlan tests need macOS 14.4
# What a macOS user lacking coremltools' model-runner app must do. The macOS wheels ship it
# (coremltools/modelrunner/, 35 files in coremltools-9.0-cp311-none-macosx_11_0_arm64.whl); the
# Linux wheel does not, and setup.py adds it only when built on macOS ("if platform == 'darwin'").
MODELRUNNER_FIX = (
    "install coremltools on the Mac itself (pip install --force-reinstall coremltools==9.0: the macOS wheel "
    "ships coremltools/modelrunner/; a wheel or source build made on another OS does not), and Xcode 15 or later"
)


@dataclass(frozen=True)
class MeasureResult:
    """What one run of :func:`measure_bundle` did."""

    csv: Path
    compute_plan: Path | None
    device: str
    timed: int
    planned: int
    skipped: int


def _macos_problem(system: str, version: str) -> str | None:
    """Why this machine cannot run coremltools' benchmarker (None when it can)."""
    if system != "Darwin":
        return f"this is {system or 'an unknown system'}"
    try:
        numbers = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        return None  # an unreadable version: let coremltools decide
    if numbers < MIN_MACOS:
        return f"this is macOS {version}, and coremltools' benchmarker needs macOS {MIN_MACOS[0]}.{MIN_MACOS[1]} or later"
    return None


def _require_macos(bundle: Path) -> None:
    problem = _macos_problem(platform.system(), platform.mac_ver()[0])
    if problem:
        raise EfnasError(
            f"Core ML prediction needs macOS {MIN_MACOS[0]}.{MIN_MACOS[1]} or later ({problem}); copy {bundle} to a Mac and run "
            "efnas lut measure-coreml there, with the iPhone connected to it for --device iphone "
            "(or time the packages in an app of your own and write the results CSV described in docs/latency_lut.md)"
        )


def modelrunner_problem(coremltools_root: Path, which: Callable[[str], str | None] = shutil.which) -> str | None:
    """Why coremltools cannot build its model-runner app for a connected device here (None when it
    can): it needs ``coremltools/modelrunner/ModelRunner.xcworkspace``, ``xcodebuild`` and ``xcrun``."""
    workspace = coremltools_root / "modelrunner" / "ModelRunner.xcworkspace"
    if not workspace.is_dir():
        return f"coremltools' model-runner app is missing ({workspace} does not exist); {MODELRUNNER_FIX}"
    missing = [tool for tool in ("xcodebuild", "xcrun") if which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not found; install Xcode 15 or later and run: xcode-select --install"
    return None


def _apple_api(bundle: Path, *, remote: bool) -> tuple[Callable[..., Any], Callable[[], list[Any]]]:
    """coremltools' ``MLModelBenchmarker`` and ``Device.get_devices``, after checking this machine can use them."""
    _require_macos(bundle)
    with _quiet_coremltools() as ct:
        try:
            from coremltools.models.ml_program.experimental.perf_utils import MLModelBenchmarker
            from coremltools.models.ml_program.experimental.remote_device import Device
        except ImportError:  # the experimental API arrived in coremltools 8.3
            raise EfnasError(f"measure-coreml needs coremltools 8.3 or later (installed: {ct.__version__}); "
                             "run: pip install -U coremltools") from None
        root = Path(ct.__file__).parent
    if remote:
        problem = modelrunner_problem(root)
        if problem:
            raise EfnasError(f"measuring on a connected device needs coremltools' model-runner app: {problem}")
    return MLModelBenchmarker, Device.get_devices


# -- which device --------------------------------------------------------------------------------


def pick_device(wanted: str, devices: Sequence[Any]) -> Any:
    """The connected device ``wanted`` names: ``iphone`` (the only connected iPhone) or a device
    name as ``xcrun devicectl list devices`` shows it (case-insensitive)."""
    from coremltools.models.ml_program.experimental.remote_device import DeviceState, DeviceType

    connected = [device for device in devices if device.state == DeviceState.CONNECTED]
    if wanted.lower() == "iphone":
        found = [device for device in connected if device.type == DeviceType.IPHONE]
        what = "iPhone"
    else:
        found = [device for device in connected if device.name.lower() == wanted.lower()]
        what = f"device named {wanted!r}"
    listed = ", ".join(f"{device.name!r} ({device.type.value})" for device in connected) or "none"
    if not found:
        raise EfnasError(
            f"no connected {what} (connected: {listed}); connect it by cable or on the same network, unlock it, "
            "turn on Developer Mode (Settings > Privacy & Security) and check: xcrun devicectl list devices"
        )
    if len(found) > 1:
        raise EfnasError(f"{len(found)} connected devices match --device {wanted} ({listed}); name one with --device NAME")
    return found[0]


async def _prepare(device: Any, team: str | None, workdir: Path) -> Any:
    from coremltools.models.ml_program.experimental.remote_device import AppSigningCredentials

    workdir.mkdir(parents=True, exist_ok=True)
    credentials = AppSigningCredentials(development_team=team or "")
    try:
        return await device.prepare_for_model_debugging(credentials=credentials, working_directory=workdir)
    except Exception as exc:  # coremltools raises ValueError, its own _AppBuilder.Error and _DeviceCtlError
        raise EfnasError(
            f"could not start coremltools' model-runner app on {device.name!r}: {_one_line(exc)}; "
            "sign it with --team YOUR_TEAM_ID (Xcode > Settings > Accounts) and trust the developer on the phone "
            "(Settings > General > VPN & Device Management)"
        ) from None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text[:300] + "...") if len(text) > 300 else (text or type(exc).__name__)


# -- what is left to do -------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One package under one compute-unit setting, and what is still missing for it."""

    name: str
    package: str
    shape: tuple[int, ...]
    units: str
    time: bool
    plan: bool


def read_done_rows(path: Path, names: set[str]) -> dict[tuple[str, str], dict[str, str]]:
    """The rows of an earlier (possibly killed) run's CSV, by (name, compute units)."""
    if not path.exists():
        return {}
    text = read_user_file(path, "results file").lstrip("\ufeff")
    reader = csv.DictReader(io.StringIO(text))
    columns = [name.strip() for name in reader.fieldnames or []]
    if not {"name", "median_ms", "compute_units"} <= set(columns) or set(columns) - set(CSV_COLUMNS):
        raise EfnasError(f"results file {path} was not written by efnas lut measure-coreml (columns {', '.join(columns)}); "
                         "pass another --out")
    done: dict[tuple[str, str], dict[str, str]] = {}
    for line, row in enumerate(reader, start=2):
        row = {key.strip(): (value or "").strip() for key, value in row.items() if key}
        if not any(row.values()):
            continue
        if row["name"] not in names:
            raise EfnasError(f"results file {path} line {line}: '{row['name']}' is not a package of this bundle; pass another --out")
        if row["compute_units"] not in COMPUTE_UNITS:
            raise EfnasError(f"results file {path} line {line}: compute units {row['compute_units']!r}; pass another --out")
        done[(row["name"], row["compute_units"])] = row
    return done


def plan_jobs(
    manifest: dict[str, Any], compute_units: Sequence[str], done: dict[tuple[str, str], Any],
    planned: dict[str, dict[str, Any]] | None,
) -> list[Job]:
    """Every package x compute-unit setting still lacking a timing (or, with ``planned``, a compute
    plan), in manifest order: units first, then the calibration networks."""
    jobs = []
    for units in compute_units:
        for record in manifest["units"] + manifest["models"]:
            name = record.get("key") or record["name"]
            time = (name, units) not in done
            plan = planned is not None and name not in planned.get(units, {})
            if time or plan:
                jobs.append(Job(name, record["package"], tuple(record["input"]["shape"]), units, time, plan))
    return jobs


# -- the Apple calls ------------------------------------------------------------------------------


def summarize_operations(infos: Sequence[Any]) -> dict[str, Any]:
    """Where Core ML placed one package's operations: from ``benchmark_operation_execution``'s
    results, the share of operations whose preferred device is the Neural Engine, the GPU or the
    CPU, and (where Core ML estimates costs: Apple silicon) the share of the estimated time."""
    from coremltools.models.compute_device import MLCPUComputeDevice, MLGPUComputeDevice, MLNeuralEngineComputeDevice

    kinds = ((MLNeuralEngineComputeDevice, "neural_engine"), (MLGPUComputeDevice, "gpu"), (MLCPUComputeDevice, "cpu"))
    counts = dict.fromkeys(PLAN_DEVICES, 0)
    costs = dict.fromkeys(PLAN_DEVICES, 0.0)
    for info in infos:
        usage = info.compute_device_usage
        if usage is None or info.spec.type == "const":  # constants run nowhere; coremltools' tests skip them too
            continue
        device = next((name for kind, name in kinds if isinstance(usage.preferred_compute_device, kind)), None)
        if device is None:
            continue
        counts[device] += 1
        if info.measurement.statistics is not None:
            costs[device] += info.measurement.statistics.median
    operations = sum(counts.values())
    total_cost = sum(costs.values())
    return {
        "operations": operations,
        **{device: round(counts[device] / operations, 4) if operations else 0.0 for device in PLAN_DEVICES},
        "cost": {device: round(costs[device] / total_cost, 4) for device in PLAN_DEVICES} if total_cost > 0 else None,
    }


async def _run_job(ct: Any, job: Job, bundle: Path, benchmarker: Callable[..., Any], device: Any,
                   runs: int, warmup: int) -> tuple[Timing | None, dict[str, Any] | None]:
    model = ct.models.MLModel(str(bundle / job.package), compute_units=ct.ComputeUnit[job.units], skip_model_load=True)
    bench = benchmarker(model=model, device=device)
    feed = {"input": np.random.default_rng(0).standard_normal(job.shape).astype(np.float32)}
    timing = plan = None
    if job.time:
        if warmup:  # discarded: the first predictions on the Neural Engine or GPU are slower
            await bench.benchmark_predict(inputs=feed, iterations=warmup)
        measurement = await bench.benchmark_predict(inputs=feed, iterations=runs)
        timing = Timing.from_samples([sample * 1e6 for sample in measurement.samples])  # ms -> ns
    if job.plan:
        plan = summarize_operations(await bench.benchmark_operation_execution(inputs=feed, iterations=1))
    return timing, plan


# -- the command ----------------------------------------------------------------------------------


def _check_arguments(device: str, compute_units: Sequence[str], runs: int, warmup: int, team: str | None) -> None:
    if not isinstance(device, str) or not device.strip():
        raise EfnasError("--device must be mac, iphone or a device name as xcrun devicectl list devices shows it")
    unknown = [units for units in compute_units if units not in COMPUTE_UNITS]
    if unknown or not compute_units:
        raise EfnasError(f"unknown compute units {', '.join(unknown) or '(none)'}; choose from {', '.join(COMPUTE_UNITS)}")
    for name, value, least in (("runs", runs, 1), ("warmup", warmup, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise EfnasError(f"--{name} must be an integer of at least {least}, got {value!r}")
    if team is not None and device.lower() == "mac":
        raise EfnasError("--team signs coremltools' model-runner app for a connected device; --device mac needs none")


def measure_bundle(
    bundle: str | Path,
    *,
    out: str | Path | None = None,
    device: str = "mac",
    compute_units: Sequence[str] = ("ALL",),
    runs: int = 50,
    warmup: int = 5,
    compute_plan: bool = False,
    team: str | None = None,
    show_progress: bool = True,
    benchmarker: Callable[..., Any] | None = None,
    devices: Callable[[], Sequence[Any]] | None = None,
) -> MeasureResult:
    """Time every package of ``bundle`` with coremltools' ``MLModelBenchmarker`` on this Mac
    (``device="mac"``) or on a connected device (``"iphone"`` or its name), writing the results CSV
    that :func:`~latency_lut._coreml.import_results` reads (default ``BUNDLE/results.csv``).

    Resumable: the CSV (and with ``compute_plan`` the plan file beside it) is rewritten atomically
    after every package, and a package already in it is not timed again. ``benchmarker`` and
    ``devices`` replace ``MLModelBenchmarker`` and ``Device.get_devices`` (tests; default: coremltools').
    """
    bundle = Path(bundle)
    compute_units = (compute_units,) if isinstance(compute_units, str) else tuple(compute_units)
    _check_arguments(device, compute_units, runs, warmup, team)
    remote = device.lower() != "mac"
    if benchmarker is None or (remote and devices is None):
        real_benchmarker, real_devices = _apple_api(bundle, remote=remote)
        benchmarker, devices = benchmarker or real_benchmarker, devices or real_devices
    manifest = read_manifest(bundle)
    out = Path(out) if out is not None else bundle / "results.csv"
    names = {record.get("key") or record["name"] for record in manifest["units"] + manifest["models"]}
    done = read_done_rows(out, names)
    plan_file = compute_plan_path(out)
    planned = None
    if compute_plan:
        planned = read_compute_plan(plan_file, names)["packages"] if plan_file.exists() else {}
    jobs = plan_jobs(manifest, compute_units, done, planned)
    target = _target(device, devices) if remote and jobs else None
    label = target.name if target is not None else device if remote else f"Mac ({platform.machine()})"
    counts = {"timed": 0, "planned": 0}

    def record(job: Job, timing: Timing | None, plan: dict[str, Any] | None) -> None:
        if timing is not None:
            done[(job.name, job.units)] = {"name": job.name, "compute_units": job.units, **timing.to_dict()}
            counts["timed"] += 1
            _write_rows(out, done)
        if plan is not None:
            planned.setdefault(job.units, {})[job.name] = plan
            counts["planned"] += 1
            atomic_write_json(plan_file, {"format": PLAN_FORMAT, "version": 1, "device": label, "packages": planned})

    if jobs:
        with _quiet_coremltools() as ct:
            pass  # imported once without its chatter; the run itself keeps coremltools' warnings
        asyncio.run(_drive(ct, jobs, bundle=bundle, benchmarker=benchmarker, target=target, team=team, label=label,
                           runs=runs, warmup=warmup, record=record, show_progress=show_progress))
    skipped = len(names) * len(compute_units) - counts["timed"]
    return MeasureResult(out, plan_file if compute_plan else None, label, counts["timed"], counts["planned"], skipped)


def _target(device: str, devices: Callable[[], Sequence[Any]]) -> Any:
    try:
        found = list(devices())
    except Exception as exc:  # xcrun devicectl missing or failing
        raise EfnasError(f"cannot list the connected devices (xcrun devicectl list devices): {_one_line(exc)}") from None
    return pick_device(device, found)


def _write_rows(out: Path, rows: dict[tuple[str, str], dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows.values())
    atomic_write_text(out, buffer.getvalue())


async def _drive(ct: Any, jobs: Sequence[Job], *, bundle: Path, benchmarker: Callable[..., Any], target: Any,
                 team: str | None, label: str, runs: int, warmup: int,
                 record: Callable[[Job, Timing | None, dict[str, Any] | None], None], show_progress: bool) -> None:
    prepared = await _prepare(target, team, bundle / ".modelrunner") if target is not None else None
    try:
        with progress_bar(show=show_progress) as progress:
            task = progress.add_task(f"Core ML on {label}", total=len(jobs))
            for job in jobs:
                try:
                    timing, plan = await _run_job(ct, job, bundle, benchmarker, prepared, runs, warmup)
                except Exception as exc:  # whatever coremltools or the device raised, for this one package
                    raise EfnasError(
                        f"{job.package} ({job.units}) failed on {label}: {_one_line(exc)}; the packages done so far "
                        "are saved, run the same command again to continue"
                    ) from None
                record(job, timing, plan)
                progress.advance(task)
    finally:
        session = getattr(prepared, "session", None)
        if session is not None:
            session.stop()  # ends the devicectl process that keeps the model-runner app attached
