"""The Core ML path: packages that reopen with the right shapes, device timings imported as a table."""

from __future__ import annotations

import csv
import json
import math
import platform
from pathlib import Path

import numpy as np
import pytest

from latency_lut import calibration_specs, load_lut, op_keys, parse_key, predict_ms, space_units
from latency_lut._apple import measure_bundle
from latency_lut._coreml import import_results, write_bundle
from supernet import ArchSpec, EfnasError, load_space

TINY = load_space("tiny")
# Two stages with one width each: every kind of unit, yet only 7 packages to convert.
SMALL_SPACE = """
name = "two-stage"
resolution = 32
num_classes = 5
attn_heads = 2
attn_key_dim = 8
mlp_ratios = [2]
meta3d = [0, 1]
[[stages]]
widths = [8]
depths = [1, 2]
[[stages]]
widths = [16]
depths = [1, 2]
"""


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    path = tmp_path_factory.mktemp("space") / "two-stage.toml"
    path.write_text(SMALL_SPACE)
    return load_space(path)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, space):
    out = tmp_path_factory.mktemp("bundle")
    write_bundle(space, out, calibration_samples=1, seed=0)
    return out


@pytest.mark.slow
def test_packages_reopen_with_the_right_shapes(bundle, space):
    import coremltools as ct

    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["space"]["fingerprint"] == space.fingerprint() and manifest["precision"] == "fp16"
    assert [record["key"] for record in manifest["units"]] == list(space_units(space))
    assert [record["name"] for record in manifest["models"]] == ["model:cal00", "model:cal01"]
    for record in manifest["units"] + manifest["models"]:
        model = ct.models.MLModel(str(bundle / record["package"]), skip_model_load=True)
        spec = model.get_spec()
        assert spec.WhichOneof("Type") == "mlProgram"
        (inp,), (out,) = spec.description.input, spec.description.output
        assert (inp.name, out.name) == ("input", "output")
        assert list(inp.type.multiArrayType.shape) == record["input"]["shape"]
        assert list(out.type.multiArrayType.shape) == record["output"]["shape"]
        if "key" in record:
            unit = parse_key(record["key"])
            assert tuple(record["input"]["shape"]) == unit.input_shape() and tuple(record["output"]["shape"]) == unit.output_shape()
        else:
            assert record["output"]["shape"] == [1, space.num_classes]


def _write_csv(path, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _device_rows(bundle, with_models: bool = True):
    """Timings as a device would report them: made-up, but consistent (network = 0.05 + 1.2 x sum)."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    times = {record["key"]: 0.01 * (i + 1) for i, record in enumerate(manifest["units"])}
    rows = [{"name": key, "median_ms": value} for key, value in times.items()]
    if with_models:
        for record in manifest["models"]:
            spec = ArchSpec.from_dict(record["arch"])
            total = sum(times[key] * count for key, count in op_keys(spec))
            rows.append({"name": record["name"], "median_ms": round(0.05 + 1.2 * total, 6)})
    return rows, times


@pytest.mark.slow
def test_imported_results_give_a_calibrated_table(bundle, space, tmp_path):
    rows, times = _device_rows(bundle)
    _write_csv(tmp_path / "results.csv", rows)
    table = import_results(bundle, tmp_path / "results.csv", "iPhone 12", tmp_path / "iphone.json")
    lut = load_lut(tmp_path / "iphone.json")
    assert lut.meta["device"] == "iPhone 12" and lut.meta["backend"] == "coreml" and lut.meta["source"] == "imported"
    assert lut.meta["precision"] == "fp16" and lut.entries == table.entries
    for _, spec in calibration_specs(space, 1, 0):
        raw = sum(times[key] * count for key, count in op_keys(spec))
        assert math.isclose(lut.predict_ms(spec, calibrated=False), raw)
        assert math.isclose(predict_ms(spec, lut), 0.05 + 1.2 * raw, rel_tol=1e-3)


@pytest.mark.slow
def test_imported_results_without_networks_predict_the_plain_sum(bundle, space, tmp_path):
    rows, times = _device_rows(bundle, with_models=False)
    for row in rows:  # an Xcode-style report: median only, plus the optional columns partly filled
        row.update({"p10_ms": "", "p90_ms": "", "runs": "", "compute_units": "ALL"})
    _write_csv(tmp_path / "results.csv", rows)
    import_results(bundle, tmp_path / "results.csv", "M1 Mac", tmp_path / "mac.json")
    lut = load_lut(tmp_path / "mac.json")
    assert lut.calibration is None
    spec = space.largest()
    assert math.isclose(predict_ms(spec, lut), sum(times[key] * count for key, count in op_keys(spec)))
    assert all(entry.runs == 1 and entry.p10_ms == entry.median_ms for entry in lut.entries.values())


@pytest.mark.slow
@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"key": "stem:w8:r32", "median_ms": 1}], "needs the column(s) name"),
        ([{"name": "stem:w8:r32", "median_ms": 1, "colour": 2}], "unknown column(s) colour"),
        ([{"name": "meta4d:w999:r8:m4", "median_ms": 1}], "names 1 package(s) that are not in the bundle"),
        ([{"name": "stem:w8:r32", "median_ms": "fast"}], "line 2: could not convert string to float"),
        ([{"name": "stem:w8:r32", "median_ms": 1, "p10_ms": 2}], "line 2: needs 0 <= p10_ms <= median_ms <= p90_ms"),
        ([{"name": "stem:w8:r32", "median_ms": 1}, {"name": "stem:w8:r32", "median_ms": 2}], "line 3: 'stem:w8:r32' appears twice"),
        (
            [{"name": "stem:w8:r32", "median_ms": 1, "compute_units": "ALL"}, {"name": "stem:w8:r32", "median_ms": 2, "compute_units": "CPU_ONLY"}],
            "rows for compute units ALL, CPU_ONLY; choose one with --compute-units",
        ),
    ],
)
def test_bad_results_files_give_one_line_errors(bundle, tmp_path, rows, message):
    _write_csv(tmp_path / "results.csv", rows)
    with pytest.raises(EfnasError) as info:
        import_results(bundle, tmp_path / "results.csv", "iPhone", tmp_path / "out.json")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_bundle_errors(tmp_path):
    with pytest.raises(EfnasError, match="manifest.json is missing"):
        import_results(tmp_path, tmp_path / "results.csv", "iPhone", tmp_path / "out.json")
    with pytest.raises(EfnasError, match="are not units of space 'tiny'"):
        write_bundle(TINY, tmp_path / "b", keys=["stem:w999:r32"])


@pytest.mark.skipif(platform.system() == "Darwin", reason="on macOS Core ML prediction works")
def test_measuring_needs_macos(tmp_path):
    with pytest.raises(EfnasError) as info:
        measure_bundle(tmp_path, out=tmp_path / "results.csv")
    assert str(info.value).startswith("Core ML prediction needs macOS") and "\n" not in str(info.value)


@pytest.mark.slow
def test_a_bundle_redone_with_another_seed_replaces_its_calibration_networks(tmp_path, space):
    first = write_bundle(space, tmp_path, keys=[], calibration_samples=1, seed=0)
    written = {m["name"]: (tmp_path / m["package"] / "Manifest.json").stat().st_mtime_ns for m in first["models"]}
    second = write_bundle(space, tmp_path, keys=[], calibration_samples=1, seed=5)
    old = {m["name"]: m["arch"] for m in first["models"]}
    changed = {m["name"] for m in second["models"] if m["arch"] != old.get(m["name"])}
    assert changed, "seed 5 should pick other calibration networks"
    for record in second["models"]:
        rewritten = (tmp_path / record["package"] / "Manifest.json").stat().st_mtime_ns != written[record["name"]]
        assert rewritten == (record["name"] in changed), record["name"]


# -- measure-coreml: everything up to coremltools' Apple-only calls --------------------------------
#
# FakeBenchmarker and FakeDevice stand in for coremltools' MLModelBenchmarker and remote Device
# (coremltools/models/ml_program/experimental/perf_utils.py, remote_device.py): same constructor,
# same async methods and arguments, and they return coremltools' own record types. Nothing of
# ours is replaced; none of this has run on Apple hardware.


def _unit_times(bundle):
    """What the fake device measures: made-up but consistent (network = 0.05 + 1.2 x sum of units)."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    times = {record["key"]: 0.01 * (i + 1) for i, record in enumerate(manifest["units"])}
    for record in manifest["models"]:
        total = sum(times[key] * count for key, count in op_keys(ArchSpec.from_dict(record["arch"])))
        times[record["name"]] = round(0.05 + 1.2 * total, 6)
    by_package = {record["package"]: record.get("key") or record["name"] for record in manifest["units"] + manifest["models"]}
    return manifest, times, by_package


def _operations(name):
    """benchmark_operation_execution's answer for one package: 2 constants (skipped), 3 operations
    preferring the Neural Engine and 1 the CPU, with estimated times 1, 2, 3 and 4 ms."""
    from coremltools import proto
    from coremltools.models.compute_device import MLCPUComputeDevice, MLNeuralEngineComputeDevice
    from coremltools.models.compute_plan import MLComputePlanDeviceUsage
    from coremltools.models.ml_program.experimental.perf_utils import MLModelBenchmarker

    def usage(kind):  # coremltools' device classes, without the Apple-only proxy behind them
        return MLComputePlanDeviceUsage(preferred_compute_device=kind.__new__(kind), supported_compute_devices=[])

    ops = [("const", None, 0.0), ("const", usage(MLCPUComputeDevice), 0.0), ("conv", usage(MLNeuralEngineComputeDevice), 1.0),
           ("add", usage(MLNeuralEngineComputeDevice), 2.0), ("gelu", usage(MLNeuralEngineComputeDevice), 3.0),
           ("reshape", usage(MLCPUComputeDevice), 4.0)]
    return [MLModelBenchmarker.OperationExecutionInfo(spec=proto.MIL_pb2.Operation(type=kind), path=None, compute_device_usage=use,
                                                      measurement=MLModelBenchmarker.Measurement.from_samples([ms]))
            for kind, use, ms in ops]


def _fake_benchmarker(bundle, log, fail_at=None):
    from coremltools.models.ml_program.experimental.perf_utils import MLModelBenchmarker

    _, times, by_package = _unit_times(bundle)

    class FakeBenchmarker:
        def __init__(self, model, device=None):
            self.name = by_package[str(Path(model.package_path).relative_to(bundle))]
            log.append(("new", self.name, model.compute_unit.name, device))

        async def benchmark_predict(self, inputs=None, iterations=1, warmup=False):
            log.append(("predict", self.name, iterations, inputs["input"].shape, inputs["input"].dtype.name, warmup))
            if fail_at == self.name:
                raise RuntimeError("the device went to sleep\nsecond line")
            t = times[self.name]
            return MLModelBenchmarker.Measurement.from_samples(list(np.linspace(0.9 * t, 1.1 * t, iterations)))

        async def benchmark_operation_execution(self, inputs=None, iterations=1, warmup=False):
            log.append(("operations", self.name, iterations))
            return _operations(self.name)

    return FakeBenchmarker


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_measure_coreml_times_every_package_and_import_reads_it(bundle, space, tmp_path):
    log = []
    result = measure_bundle(bundle, out=tmp_path / "mac.csv", benchmarker=_fake_benchmarker(bundle, log), show_progress=False)
    manifest, times, _ = _unit_times(bundle)
    names = [record["key"] for record in manifest["units"]] + [record["name"] for record in manifest["models"]]
    assert (result.timed, result.skipped, result.compute_plan) == (len(names), 0, None)
    shapes = {record.get("key") or record["name"]: tuple(record["input"]["shape"]) for record in manifest["units"] + manifest["models"]}
    expected = []
    for name in names:  # per package: one benchmarker on this Mac, 5 warm-up predictions, then 50 timed
        expected += [("new", name, "ALL", None), ("predict", name, 5, shapes[name], "float32", False),
                     ("predict", name, 50, shapes[name], "float32", False)]
    assert log == expected
    rows = _rows(tmp_path / "mac.csv")
    assert [row["name"] for row in rows] == names and {row["compute_units"] for row in rows} == {"ALL"}
    for row in rows:
        t = times[row["name"]]
        assert math.isclose(float(row["median_ms"]), t, rel_tol=1e-5) and math.isclose(float(row["p10_ms"]), 0.92 * t, rel_tol=1e-4)
        assert row["runs"] == "50"
    table = import_results(bundle, tmp_path / "mac.csv", result.device, tmp_path / "mac.json")
    lut = load_lut(tmp_path / "mac.json")
    assert lut.entries == table.entries and lut.calibration is not None
    for _, spec in calibration_specs(space, 1, 0):
        raw = sum(times[key] * count for key, count in op_keys(spec))
        assert math.isclose(predict_ms(spec, lut), 0.05 + 1.2 * raw, rel_tol=1e-3)


@pytest.mark.slow
def test_a_stopped_measurement_continues_without_timing_packages_again(bundle, tmp_path):
    out = tmp_path / "results.csv"
    manifest, _, _ = _unit_times(bundle)
    fourth = manifest["units"][3]["key"]
    log = []
    with pytest.raises(EfnasError) as info:
        measure_bundle(bundle, out=out, compute_units=["ALL", "CPU_ONLY"], runs=3, warmup=0,
                       benchmarker=_fake_benchmarker(bundle, log, fail_at=fourth), show_progress=False)
    message = str(info.value)
    assert "\n" not in message and "the device went to sleep second line" in message and "run the same command again" in message
    first = _rows(out)
    assert [row["name"] for row in first] == [record["key"] for record in manifest["units"][:3]]
    log.clear()
    result = measure_bundle(bundle, out=out, compute_units=["ALL", "CPU_ONLY"], runs=3, warmup=0,
                            benchmarker=_fake_benchmarker(bundle, log), show_progress=False)
    total = len(manifest["units"]) + len(manifest["models"])
    assert (result.timed, result.skipped) == (2 * total - 3, 3)
    made = [(entry[1], entry[2]) for entry in log if entry[0] == "new"]
    assert len(made) == 2 * total - 3 and not {(row["name"], "ALL") for row in first} & set(made)
    rows = _rows(out)
    assert rows[:3] == first and len(rows) == len({(row["name"], row["compute_units"]) for row in rows}) == 2 * total
    log.clear()
    again = measure_bundle(bundle, out=out, compute_units=["ALL", "CPU_ONLY"], benchmarker=_fake_benchmarker(bundle, log))
    assert (again.timed, log) == (0, [])  # all there: nothing is loaded, no device is needed
    with pytest.raises(EfnasError, match="choose one with --compute-units"):
        import_results(bundle, out, "Mac", tmp_path / "t.json")
    assert len(import_results(bundle, out, "Mac", tmp_path / "t.json", "CPU_ONLY").entries) == len(manifest["units"])


@pytest.mark.slow
def test_compute_plan_reaches_the_table_and_lut_show(bundle, tmp_path, capsys):
    from nas.cli import main

    out = tmp_path / "results.csv"
    measure_bundle(bundle, out=out, runs=2, benchmarker=_fake_benchmarker(bundle, []), show_progress=False)
    log = []  # a plan added to a finished run: no package is timed again, each is asked for its operations once
    result = measure_bundle(bundle, out=out, runs=2, compute_plan=True, benchmarker=_fake_benchmarker(bundle, log), show_progress=False)
    assert result.timed == 0 and result.compute_plan == tmp_path / "results.compute-plan.json"
    assert [entry[0] for entry in log] == ["new", "operations"] * result.planned and all(e[2] == 1 for e in log if e[0] == "operations")
    plan = json.loads(result.compute_plan.read_text())["packages"]["ALL"]
    expected = {"operations": 4, "neural_engine": 0.75, "gpu": 0.0, "cpu": 0.25, "cost": {"neural_engine": 0.6, "gpu": 0.0, "cpu": 0.4}}
    assert len(plan) == result.planned and all(value == expected for value in plan.values())
    table = tmp_path / "mac.json"
    assert main(["lut", "import", "--bundle", str(bundle), "--results", str(out), "--device", "M2", "--out", str(table)]) == 0
    lut = load_lut(table)
    assert set(lut.meta["compute_plan"]) == set(lut.entries)
    for key, shares in lut.meta["compute_plan"].items():
        assert shares == {**expected, "ms": lut.entries[key].median_ms}
    capsys.readouterr()
    assert main(["lut", "show", str(table), "--no-stale-check"]) == 0
    shown = capsys.readouterr().out
    assert "Core ML compute plan" in shown and "75% (60%)" in shown and "25% (40%)" in shown
    slowest = max(lut.entries, key=lambda key: lut.entries[key].median_ms)
    assert shown.index(slowest) < min(shown.index(key) for key in lut.entries if key != slowest)


class FakeDevice:
    """Stands in for coremltools' remote_device.Device: name, type, state, and the async
    prepare_for_model_debugging that returns the device with a session."""

    def __init__(self, name, kind, state, log):
        self.name, self.type, self.state, self.log, self.session = name, kind, state, log, None

    async def prepare_for_model_debugging(self, credentials=None, working_directory=None, clean=False):
        self.log.append(("prepare", self.name, credentials.development_team, working_directory))
        prepared = FakeDevice(self.name, self.type, self.state, self.log)
        prepared.session = type("Session", (), {"stop": lambda session: self.log.append(("stop", self.name))})()
        return prepared


def _devices(log):
    from coremltools.models.ml_program.experimental.remote_device import DeviceState, DeviceType

    return [FakeDevice("Studio", DeviceType.MAC, DeviceState.CONNECTED, log),
            FakeDevice("Old phone", DeviceType.IPHONE, DeviceState.DISCONNECTED, log),
            FakeDevice("Ana's iPhone", DeviceType.IPHONE, DeviceState.CONNECTED, log)]


@pytest.mark.slow
def test_measuring_on_a_connected_iphone(bundle, tmp_path):
    log = []
    devices = _devices(log)
    manifest, _, _ = _unit_times(bundle)
    fail = manifest["models"][0]["name"]
    with pytest.raises(EfnasError, match="failed on Ana's iPhone"):
        measure_bundle(bundle, out=tmp_path / "phone.csv", device="iphone", team="TEAM12345", runs=2,
                       benchmarker=_fake_benchmarker(bundle, log, fail_at=fail), devices=lambda: devices, show_progress=False)
    assert log[0] == ("prepare", "Ana's iPhone", "TEAM12345", bundle / ".modelrunner") and log[-1] == ("stop", "Ana's iPhone")
    prepared = {id(entry[3]) for entry in log if entry[0] == "new"}
    assert len(prepared) == 1 and all(entry[3].session is not None for entry in log if entry[0] == "new")
    log.clear()
    result = measure_bundle(bundle, out=tmp_path / "phone.csv", device="ANA'S IPHONE", runs=2,
                            benchmarker=_fake_benchmarker(bundle, log), devices=lambda: devices, show_progress=False)
    assert result.device == "Ana's iPhone" and result.timed == len(manifest["models"])
    assert log[0][:3] == ("prepare", "Ana's iPhone", "") and log[-1] == ("stop", "Ana's iPhone")


@pytest.mark.parametrize(
    "wanted, keep, message",
    [
        ("iphone", [0, 1], "no connected iPhone (connected: 'Studio' (mac)); connect it"),
        ("Bob's iPhone", [0, 2], "no connected device named \"Bob's iPhone\""),
        ("iphone", [0, 2, 2], "2 connected devices match --device iphone"),
    ],
)
def test_device_choice_errors(wanted, keep, message):
    from latency_lut._apple import pick_device

    devices = _devices([])
    with pytest.raises(EfnasError) as info:
        pick_device(wanted, [devices[i] for i in keep])
    assert message in str(info.value) and "\n" not in str(info.value)


def test_what_a_mac_needs_is_said_in_one_line(tmp_path):
    import coremltools

    from latency_lut._apple import _macos_problem, modelrunner_problem

    assert _macos_problem("Darwin", "14.4.1") is None and _macos_problem("Darwin", "15.0") is None
    assert "needs macOS 14.4 or later" in _macos_problem("Darwin", "13.6")
    assert _macos_problem("Linux", "") == "this is Linux"
    # The wheel installed here is the Linux one, which lacks the model-runner app: the message says what to do.
    problem = modelrunner_problem(Path(coremltools.__file__).parent)
    if platform.system() != "Darwin":
        assert "ModelRunner.xcworkspace does not exist" in problem and "pip install --force-reinstall coremltools==9.0" in problem
    (tmp_path / "modelrunner" / "ModelRunner.xcworkspace").mkdir(parents=True)
    assert modelrunner_problem(tmp_path, which=lambda tool: None).startswith("xcodebuild and xcrun not found")
    assert modelrunner_problem(tmp_path, which=lambda tool: "/usr/bin/" + tool) is None


@pytest.mark.skipif(platform.system() == "Darwin", reason="on macOS Core ML prediction works")
@pytest.mark.parametrize("device", ["mac", "iphone", "Ana's iPhone"])
def test_measure_coreml_on_linux_exits_2_in_one_line(tmp_path, capsys, device):
    from nas.cli import main

    assert main(["lut", "measure-coreml", str(tmp_path), "--device", device, "--compute-plan"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("efnas: error: Core ML prediction needs macOS 14.4 or later (this is Linux)") and err.count("\n") == 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"runs": 0}, "--runs must be an integer of at least 1, got 0"),
        ({"warmup": -1}, "--warmup must be an integer of at least 0"),
        ({"compute_units": ["ALL", "NPU"]}, "unknown compute units NPU"),
        ({"device": " "}, "--device must be mac, iphone or a device name"),
        ({"team": "T"}, "--device mac needs none"),
    ],
)
def test_bad_measure_arguments(tmp_path, kwargs, message):
    with pytest.raises(EfnasError, match=message.replace("(", r"\(")):
        measure_bundle(tmp_path, **kwargs, benchmarker=object)


@pytest.mark.slow
def test_resume_and_plan_files_of_another_bundle_are_refused(bundle, tmp_path):
    other = tmp_path / "other.csv"
    other.write_text("name,compute_units,median_ms\nmeta4d:w999:r8:m4,ALL,1\n")
    with pytest.raises(EfnasError, match="line 2: 'meta4d:w999:r8:m4' is not a package of this bundle; pass another --out"):
        measure_bundle(bundle, out=other, benchmarker=_fake_benchmarker(bundle, []))
    (tmp_path / "xcode.csv").write_text("name,median_ms\nstem:w8:r32,1\n")
    with pytest.raises(EfnasError, match="was not written by efnas lut measure-coreml"):
        measure_bundle(bundle, out=tmp_path / "xcode.csv", benchmarker=_fake_benchmarker(bundle, []))
    rows, _ = _device_rows(bundle)
    _write_csv(tmp_path / "r.csv", rows)
    plan = tmp_path / "r.compute-plan.json"
    for packages, wanted in (({"ALL": {"stem:w8:r32": {"operations": 1, "neural_engine": 1.5, "gpu": 0, "cpu": 0}}}, "'neural_engine' must be a share"),
                             ({"ALL": {"model:cal99": {"operations": 1}}}, "'model:cal99' is not a package of the bundle")):
        plan.write_text(json.dumps({"format": "efnas-coreml-compute-plan", "version": 1, "packages": packages}))
        with pytest.raises(EfnasError, match=wanted):
            import_results(bundle, tmp_path / "r.csv", "iPhone", tmp_path / "t.json", compute_plan=plan)
