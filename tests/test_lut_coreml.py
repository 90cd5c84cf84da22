"""The Core ML path: packages that reopen with the right shapes, device timings imported as a table."""

from __future__ import annotations

import csv
import json
import math
import platform

import pytest

from latency_lut import calibration_specs, load_lut, op_keys, parse_key, predict_ms, space_units
from latency_lut._coreml import import_results, measure_coreml, write_bundle
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
        measure_coreml(tmp_path, tmp_path / "results.csv")
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
