"""The table file: JSON round trip, one-line errors for every malformed case, prediction, calibration."""

from __future__ import annotations

import json
import math

import pytest

from latency_lut import (
    CATEGORIES,
    Calibration,
    LatencyTable,
    Timing,
    fit_calibration,
    load_lut,
    op_keys,
    predict_ms,
    recalibrate,
    save_lut,
    space_units,
)
from supernet import EfnasError, load_space

TINY = load_space("tiny")
V1 = load_space("efficientformer-v1")


def _table(space, calibration: dict | None = None) -> LatencyTable:
    """A table with made-up but distinct entries (the file format does not care where they came from)."""
    entries = {}
    for i, key in enumerate(space_units(space)):
        median = round(0.01 + 0.001 * i, 6)  # files keep 6 decimals (ns resolution)
        entries[key] = Timing(median, round(median * 0.9, 6), round(median * 1.2, 6), 30)
    meta = {
        "device": "test CPU",
        "backend": "onnxruntime",
        "precision": "fp32",
        "batch": 1,
        "threads": 1,
        "resolution": space.resolution,
        "space": {"name": space.name, "source": space.name, "fingerprint": space.fingerprint(), "num_classes": space.num_classes},
        "source": "measured",
        "statistic": "median",
        "calibration": calibration,
    }
    return LatencyTable(meta, entries)


CALIBRATION = {
    "overhead_ms": 0.5,
    "scales": {"stem": 1.0, "embed": 1.1, "meta4d": 0.9, "meta3d": 1.2, "head": 2.0},
    "models": [],
}


def test_json_round_trip(tmp_path):
    table = _table(TINY, CALIBRATION)
    path = save_lut(table, tmp_path / "t.json")
    again = load_lut(path)
    assert again.meta == table.meta and again.entries == table.entries and again.path == path
    assert again.to_json() == path.read_text()
    # one entry per line, so the file reads and diffs well
    text = path.read_text()
    assert all(f'"{key}": {{"median_ms"' in text for key in table.entries)
    assert json.loads(text)["entries"] == {key: entry.to_dict() for key, entry in table.entries.items()}


def test_prediction_is_the_sum_and_the_calibration(tmp_path):
    table = _table(TINY)
    spec = TINY.preset("L3")
    raw = sum(table.entries[key].median_ms * count for key, count in op_keys(spec))
    assert math.isclose(table.predict_ms(spec, calibrated=False), raw)
    assert math.isclose(predict_ms(spec, table), raw)  # no calibration: the plain sum
    table.meta["calibration"] = CALIBRATION
    sums = table.category_sums(spec)
    expected = 0.5 + sum(CALIBRATION["scales"][c] * sums.get(c, 0.0) for c in CATEGORIES)
    assert math.isclose(predict_ms(spec, table), expected)
    # the prediction decomposes into a fixed part and one non-negative part per unit
    table.meta["call_overhead_ms"] = 0.015
    parts = [table.unit_ms(key) * count for key, count in op_keys(spec)]
    assert min(parts) >= 0
    assert math.isclose(predict_ms(spec, table), table.fixed_ms() + sum(parts))
    assert math.isclose(predict_ms(spec, table), table.calibration.apply(table.category_sums(spec)))
    table.meta["call_overhead_ms"] = 0.0
    table.meta["statistic"] = "p10"
    assert math.isclose(table.predict_ms(spec, calibrated=False), sum(table.entries[k].p10_ms * n for k, n in op_keys(spec)))


def test_missing_keys_name_the_command_that_fills_them(tmp_path):
    table = _table(TINY)
    save_lut(table, tmp_path / "t.json")
    spec = TINY.with_num_classes(10).preset("L1")
    with pytest.raises(EfnasError) as info:
        predict_ms(spec, table)
    message = str(info.value)
    assert "has no entry for 1 unit(s)" in message and "head:w64:r1:c10" in message
    assert f"efnas lut build --space tiny --num-classes 10 --backend onnxruntime --threads 1 --out {tmp_path / 't.json'}" in message
    assert "\n" not in message


def test_table_of_another_space_is_refused():
    table = _table(TINY)
    table.check_space(TINY.with_num_classes(10))  # same fingerprint: the head is just another key
    with pytest.raises(EfnasError, match=r"made for space 'tiny' \(fingerprint [0-9a-f]{12}\), not for space 'efficientformer-v1'"):
        table.check_space(V1)


def test_calibration_fit_recovers_a_known_model():
    # Networks whose latency is exactly 0.3 + 1.1 * sum: the fit must find it.
    table = _table(V1)
    specs = [V1.sample(__import__("random").Random(i)) for i in range(12)]
    sums = [table.category_sums(spec) for spec in specs]
    measured = [0.3 + 1.1 * sum(s.values()) for s in sums]
    fitted = fit_calibration(sums, measured)
    assert fitted.fit_mape < 1e-6
    for spec, value in zip(specs, measured):
        assert math.isclose(fitted.apply(table.category_sums(spec)), value, rel_tol=1e-6)
    again = Calibration.from_dict(json.loads(json.dumps(fitted.to_dict())))
    assert again.scales == pytest.approx(fitted.scales, rel=1e-5)


def test_calibration_scales_are_per_category_when_they_differ():
    table = _table(V1)
    rng = __import__("random").Random(1)
    specs = [V1.sample(rng) for _ in range(24)]
    truth = {"stem": 0.8, "embed": 1.3, "meta4d": 1.0, "meta3d": 0.7, "head": 1.0}
    sums = [table.category_sums(spec) for spec in specs]
    measured = [0.2 + sum(truth[c] * s.get(c, 0.0) for c in CATEGORIES) for s in sums]
    fitted = fit_calibration(sums, measured)
    assert fitted.fit_mape < 0.5
    for category in ("embed", "meta4d", "meta3d"):
        assert fitted.scales[category] == pytest.approx(truth[category], rel=0.05)


def _valid() -> dict:
    return json.loads(_table(TINY, CALIBRATION).to_json())


def _set(path: str, value):
    def change(data):
        *parents, last = path.split("/")
        node = data
        for part in parents:
            node = node[part]
        if value is _DELETE:
            del node[last]
        else:
            node[last] = value
        return data

    return change


_DELETE = object()
_KEY = "stem:w16:r32"


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: [d], "a latency table must be a JSON object"),
        (_set("format", "something"), 'not a latency table (expected "format": "efnas-latency-table")'),
        (_set("version", 2), "table format version 2 is not supported"),
        (_set("colour", "red"), "unknown top-level field(s) colour"),
        (_set("meta", _DELETE), "missing 'meta'"),
        (_set("meta", []), "'meta' must be an object"),
        (_set("meta/device", _DELETE), "meta is missing 'device'"),
        (_set("meta/threads", "1"), "meta 'threads' must be an integer, got '1'"),
        (_set("meta/batch", 0), "meta 'batch' must be at least 1, got 0"),
        (_set("meta/space", "tiny"), "meta 'space' must be an object"),
        (_set("meta/space/fingerprint", _DELETE), "meta space needs a 'fingerprint' string"),
        (_set("meta/source", "guessed"), "meta 'source' must be one of measured, imported"),
        (_set("meta/statistic", "mean"), "meta 'statistic' must be one of p10, median"),
        (_set("meta/calibration/scales/head", -1), "calibration scale 'head' must be a non-negative number"),
        (_set("meta/calibration/scales/stem", _DELETE), "calibration scales must give exactly stem, embed"),
        (_set("meta/calibration/overhead_ms", "0"), "calibration overhead_ms must be a non-negative number"),
        (_set("entries", []), "'entries' must be an object mapping keys to measurements"),
        (_set("entries/conv:w3", {}), "entry 'conv:w3' is not a latency key"),
        (_set(f"entries/{_KEY}", 0.5), f"entry '{_KEY}' must be an object with median_ms"),
        (_set(f"entries/{_KEY}/runs", _DELETE), f"entry '{_KEY}' is missing runs"),
        (_set(f"entries/{_KEY}/mean_ms", 1.0), f"entry '{_KEY}' has unknown field(s) mean_ms"),
        (_set(f"entries/{_KEY}/median_ms", -1.0), f"entry '{_KEY}' median_ms must be a non-negative number"),
        (_set(f"entries/{_KEY}/median_ms", float("nan")), f"entry '{_KEY}' median_ms must be a non-negative number"),
        (_set(f"entries/{_KEY}/p10_ms", 9.0), f"entry '{_KEY}' needs p10_ms <= median_ms <= p90_ms"),
        (_set(f"entries/{_KEY}/runs", 0), f"entry '{_KEY}' runs must be a positive integer"),
        (_set(f"entries/{_KEY}/runs", True), f"entry '{_KEY}' runs must be a positive integer"),
    ],
)
def test_malformed_files_give_one_line_errors(tmp_path, change, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(change(_valid())))
    with pytest.raises(EfnasError) as info:
        load_lut(path)
    text = str(info.value)
    assert message in text and "\n" not in text
    assert text.startswith(f"latency table {path}")


def test_unreadable_files_give_one_line_errors(tmp_path):
    with pytest.raises(EfnasError, match="does not exist"):
        load_lut(tmp_path / "missing.json")
    (tmp_path / "text.json").write_text("{not json")
    with pytest.raises(EfnasError, match="is not valid JSON"):
        load_lut(tmp_path / "text.json")
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(EfnasError, match="cannot read latency table"):
        load_lut(tmp_path / "binary.json")


def test_recalibrate_refits_from_the_stored_networks(tmp_path):
    table = _table(V1)
    rng = __import__("random").Random(2)
    specs = [V1.sample(rng) for _ in range(5)]
    models = []
    for i, spec in enumerate(specs):
        ms = 0.4 + 0.9 * sum(table.category_sums(spec).values())
        models.append({"name": f"cal{i:02d}", "arch": spec.to_dict(), "median_ms": ms, "p10_ms": ms, "p90_ms": ms, "runs": 4})
    table.meta["calibration"] = {**CALIBRATION, "models": models}
    save_lut(table, tmp_path / "t.json")
    from nas.cli import main

    assert main(["lut", "calibrate", "--lut", str(tmp_path / "t.json")]) == 0
    fitted = load_lut(tmp_path / "t.json").calibration
    assert fitted.form == "shared" and fitted.fit_mape < 1e-6 and fitted.loo_mape < 1e-6
    assert fitted.overhead_ms == pytest.approx(0.4, rel=1e-4) and fitted.scales["embed"] == pytest.approx(0.9, rel=1e-4)
    with pytest.raises(EfnasError, match="has no calibration networks to fit on"):
        recalibrate(_table(TINY))


def test_a_table_without_batch_means_batch_1(tmp_path):
    data = _table(TINY).to_dict()
    del data["meta"]["batch"]  # tables written before the batch was a dimension
    path = tmp_path / "old.json"
    path.write_text(json.dumps(data))
    table = load_lut(path)
    assert table.batch == 1 and table.meta["batch"] == 1 and "1 thread(s), batch 1," in table.describe()
    assert "--batch" not in table.fill_command(TINY.with_num_classes(10).preset("L1"))


def test_commands_for_a_batch_table_measure_at_its_batch_and_threads(tmp_path):
    table = _table(TINY)
    table.meta.update(batch=8, threads=2)
    save_lut(table, tmp_path / "b8.json")
    assert load_lut(tmp_path / "b8.json").batch == 8 and "2 thread(s), batch 8," in table.describe()
    with pytest.raises(EfnasError) as info:
        predict_ms(TINY.with_num_classes(10).preset("L1"), table)
    assert f"--backend onnxruntime --threads 2 --batch 8 --out {tmp_path / 'b8.json'}" in str(info.value)
    with pytest.raises(EfnasError, match="--threads 2 --batch 8 --out efficientformer-v1_onnxruntime-2thread-batch8.json"):
        table.check_space(V1)


def test_shipped_tables_are_found_by_threads_and_batch():
    from latency_lut import shipped_lut

    shipped = shipped_lut(TINY)
    assert shipped is not None and load_lut(shipped).batch == 1
    assert shipped_lut(TINY, batch=1) == shipped and shipped_lut(TINY, batch=8) is None
    assert shipped_lut(TINY, threads=4) is None
    for bad, message in ((dict(batch=0), "batch must be an integer from 1 to 1024, got 0"),
                         (dict(threads=-1), "threads must be a non-negative integer, got -1")):
        with pytest.raises(EfnasError, match=message):
            shipped_lut(TINY, **bad)
