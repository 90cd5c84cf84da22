"""Real measurements at small size: a tiny-space build, its resume, a check, measure_model."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from latency_lut import (
    BuildConfig,
    CheckConfig,
    Timing,
    build_lut,
    calibration_specs,
    check_lut,
    check_staleness,
    load_lut,
    measure_model,
    plot_check,
    predict_ms,
    recalibrate_here,
    save_lut,
    space_keys,
)
from latency_lut._backends import get_backend
from latency_lut._measure import SpeedGate
from supernet import ArchSpec, EfnasError, build_model, load_space

TINY = load_space("tiny")
# Few runs: these tests prove the machinery, the benchmark proves the accuracy.
FAST = BuildConfig(
    rounds=3, warmup=1, retries=0, calibration_samples=3, calibration_rounds=2, calibration_runs=1, min_group_seconds=0.0
)


@pytest.fixture(scope="module")
def tiny_table(tmp_path_factory):
    path = tmp_path_factory.mktemp("lut") / "tiny.json"
    result = build_lut(TINY, path, FAST, space_arg="tiny")
    assert result.complete and result.measured == len(space_keys(TINY))
    return path


@pytest.mark.slow
def test_build_measures_every_unit_and_calibrates(tiny_table):
    lut = load_lut(tiny_table)
    assert set(lut.entries) == space_keys(TINY)
    assert all(entry.runs == FAST.rounds and 0 < entry.p10_ms <= entry.median_ms <= entry.p90_ms for entry in lut.entries.values())
    meta = lut.meta
    assert meta["source"] == "measured" and meta["backend"] == "onnxruntime" and meta["threads"] == 1
    assert meta["space"] == {"name": "tiny", "source": "tiny", "fingerprint": TINY.fingerprint(), "num_classes": TINY.num_classes}
    assert meta["statistic"] == "p10" and meta["measurement"]["clock"] == "thread-cpu"
    assert meta["call_overhead_ms"] > 0 and meta["build_seconds"] > 0
    measurement = meta["measurement"]
    assert measurement["context"] in ("cold", "warm") and "pending_warm" not in meta
    fits = measurement["context_error_percent"]
    assert fits[measurement["context"]] == min(fits.values())
    assert {"machine", "versions", "date", "command"} <= set(meta["provenance"])
    calibration = lut.calibration
    assert [model.name for model in calibration.models] == [name for name, _ in calibration_specs(TINY, 3, 0)]
    assert ArchSpec.from_dict(calibration.models[0].arch) == TINY.smallest()
    assert calibration.form == "shared"  # 4 networks are too few for one scale per category
    for name in TINY.preset_names:
        spec = TINY.preset(name)
        assert predict_ms(spec, lut) > 0 and lut.predict_ms(spec, calibrated=False) > 0
    # a table that is complete measures nothing more
    again = build_lut(TINY, tiny_table, FAST)
    assert again.measured == 0 and again.complete and load_lut(tiny_table).entries == lut.entries


@pytest.mark.slow
def test_calibration_networks_keep_their_fastest_pass(tiny_table, tmp_path):
    # A build stopped after its first pass over the calibration networks, one of which was timed
    # in a 3x slow stretch and one impossibly fast: the second pass times each network again.
    lut = load_lut(tiny_table)
    assert lut.meta["measurement"]["calibration_passes"] == 2
    first = [model.to_dict() for model in lut.calibration.models]
    slow, fast = first[1]["name"], first[2]["name"]
    for model in first:
        factor = {slow: 3.0, fast: 0.01}.get(model["name"], 1.0)
        model.update({key: model[key] * factor for key in ("median_ms", "p10_ms", "p90_ms")}, passes=1)
    lut.meta["pending_calibration"], lut.meta["calibration"] = first, None
    path = tmp_path / "stopped.json"
    save_lut(lut, path)
    result = build_lut(TINY, path, FAST)
    assert result.complete and result.measured == 0
    kept = {model.name: model for model in load_lut(path).calibration.models}
    recorded = {model["name"]: model for model in first}
    assert kept[fast].p10_ms == pytest.approx(recorded[fast]["p10_ms"], abs=1e-6)  # faster than any real timing: kept
    assert kept[slow].p10_ms < recorded[slow]["p10_ms"]  # the second pass was faster than the slow one
    assert all(kept[name].p10_ms <= model["p10_ms"] + 1e-6 for name, model in recorded.items())
    assert "pending_calibration" not in load_lut(path).meta


@pytest.mark.slow
def test_killed_build_resumes_where_it_stopped(tmp_path):
    out = tmp_path / "tiny.json"
    command = [sys.executable, "-m", "nas.cli", "lut", "build", "--space", "tiny", "--out", str(out), "--rounds", "3",
               "--calibration-samples", "3", "--min-group-seconds", "0"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not out.exists() and process.poll() is None:
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    partial = load_lut(out)  # written atomically: a complete file even though the process was killed
    assert 0 < len(partial.entries) < len(space_keys(TINY))
    assert partial.calibration is None
    result = build_lut(TINY, out, FAST)
    assert result.measured == len(space_keys(TINY)) - len(partial.entries)
    done = load_lut(out)
    assert set(done.entries) == space_keys(TINY) and done.calibration is not None
    # what the killed run measured is kept, in whichever context the calibration chose
    context = done.meta["measurement"]["context"]
    kept = partial.entries if context == "cold" else {k: Timing(**v) for k, v in partial.meta["pending_warm"].items()}
    assert set(kept) == set(partial.entries) and all(done.entries[key] == timing for key, timing in kept.items())


@pytest.mark.slow
def test_missing_head_is_filled_by_the_command_in_the_error(tiny_table, tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(tiny_table.read_text())
    lut = load_lut(path)
    spec = TINY.with_num_classes(10).preset("L3")
    with pytest.raises(EfnasError) as info:
        predict_ms(spec, lut)
    command = str(info.value).split("measure them with: ")[1]
    assert command == f"efnas lut build --space tiny --num-classes 10 --backend onnxruntime --threads 1 --out {path}"
    from nas.cli import main

    assert main(command.split()[1:] + ["--rounds", "3", "--min-group-seconds", "0"]) == 0
    filled = load_lut(path)
    assert set(filled.entries) - set(lut.entries) == {key for key in space_keys(TINY.with_num_classes(10)) if key.startswith("head:")} - set(lut.entries)
    assert filled.meta["calibration"] == lut.meta["calibration"]
    assert predict_ms(spec, filled) > 0


@pytest.mark.slow
def test_check_measures_held_out_networks_and_resumes(tiny_table, tmp_path):
    lut = load_lut(tiny_table)
    out = tmp_path / "check.json"
    config = CheckConfig(samples=8, rounds=2, runs=1, group_size=6, max_minutes=1e-6, min_group_seconds=0.0)
    first = check_lut(lut, TINY, config, out=out)
    assert not first.complete and len(first.rows) == 6  # one group per run, then it stops
    report = check_lut(lut, TINY, config, out=out)
    assert report.complete and [row["name"] for row in report.rows[:3]] == list(TINY.preset_names)
    assert len(report.rows) == 3 + 8
    assert [row["measured"] for row in report.rows[:6]] == [row["measured"] for row in first.rows]
    calibration = {ArchSpec.from_dict(model.arch) for model in lut.calibration.models}
    assert not calibration & {ArchSpec.from_dict(row["arch"]) for row in report.rows}
    stats = report.stats()
    assert stats.n == 11 and 0 <= stats.within_5 <= stats.within_10 <= 100 and stats.mape >= 0
    png = plot_check(report, tmp_path / "check.png", "tiny")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_speed_gate_leaves_out_slow_rounds_but_keeps_the_rounds_asked_for():
    engine = get_backend("onnxruntime", 1)
    with engine.session():
        gate = SpeedGate(engine)
        gate.start()
        for _ in range(5):
            gate.time_round()
    assert gate.best_ns is not None and len(gate.fast_rounds(least=5)) == 5
    gate.best_ns = 100
    gate.start()
    gate._times = [100, 300, 110, 400, 105]  # reference runs of one call, ns
    assert gate.fast_rounds(least=2) == [True, False, True, False, True]
    gate.start()
    gate._times = [300, 400, 350]  # a call wholly in a slow stretch: its fastest rounds
    assert gate.fast_rounds(least=2) == [True, False, True]
    assert gate.record() == {"rounds": 13, "slow_rounds_dropped": 3, "factor": 1.15}


def test_measure_model_reports_spread():
    spec = TINY.preset("L1")
    timing = measure_model(spec, rounds=3, runs=2)
    # the rounds asked for are kept (more are timed when some ran while the machine was slow)
    assert timing.runs == 6 and 0 < timing.p10_ms <= timing.median_ms <= timing.p90_ms
    # a model of microseconds gets more rounds while under min_seconds, at most 20x the rounds
    assert 6 < measure_model(spec, rounds=3, runs=2, min_seconds=0.3).runs <= 20 * 6
    model = build_model(spec)
    del model.spec
    with pytest.raises(ValueError, match="needs input_shape"):
        measure_model(model)
    threads = torch.get_num_threads()
    timing = measure_model(model, "torch", threads=2, input_shape=(1, 3, 32, 32), rounds=2, runs=1)
    assert timing.runs == 2 and torch.get_num_threads() == threads  # the caller's setting is restored


def test_measuring_leaves_the_global_random_state_as_it_was():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    measure_model(TINY.smallest(), "torch", rounds=1, runs=1, seed=7)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.slow
def test_torch_backend_builds_a_table(tmp_path):
    config = BuildConfig(
        backend="torch", rounds=2, warmup=1, retries=0, calibration_samples=2, calibration_rounds=1, calibration_runs=1,
        min_group_seconds=0.0,
    )
    result = build_lut(TINY, tmp_path / "torch.json", config)
    lut = result.table
    assert lut.meta["backend"] == "torch" and set(lut.entries) == space_keys(TINY)
    assert predict_ms(TINY.preset("L7"), lut) > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error is for machines without a GPU")
def test_cuda_backend_without_gpu_is_a_clear_error():
    with pytest.raises(EfnasError, match="backend torch-cuda needs a CUDA GPU"):
        get_backend("torch-cuda")


def test_resuming_with_other_settings_is_refused(tiny_table):
    with pytest.raises(EfnasError, match="was measured with onnxruntime at 1 thread"):
        build_lut(TINY, tiny_table, BuildConfig(threads=2))
    with pytest.raises(EfnasError, match="was made for space 'tiny'"):
        build_lut(load_space("efficientformer-v1"), tiny_table, FAST)


# -- threads and batch as table dimensions ------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_batch8(tmp_path_factory):
    path = tmp_path_factory.mktemp("lut") / "tiny-batch8.json"
    result = build_lut(TINY, path, dataclasses.replace(FAST, batch=8), space_arg="tiny")
    assert result.complete
    return path


@pytest.mark.slow
def test_batch_8_build_times_every_unit_on_8_images(tiny_table, tiny_batch8):
    one, eight = load_lut(tiny_table), load_lut(tiny_batch8)
    assert one.batch == 1 and eight.batch == 8 and eight.meta["batch"] == 8
    assert set(eight.entries) == set(one.entries) == space_keys(TINY)
    assert "1 thread(s), batch 8," in eight.describe()
    # Most entries are per-call overhead, the same at any batch; the five heaviest units are compute:
    # 4-6x their batch-1 time on a quiet machine, 1.6-3.4x in a full test run (the two tables are
    # built seconds apart, and a slow moment can inflate either); a build that ignored the batch
    # would give 1x.
    heaviest = sorted(eight.entries, key=lambda key: eight.entries[key].value(eight.statistic))[-5:]
    assert sum(eight.entries[key].value(eight.statistic) for key in heaviest) > 1.5 * sum(
        one.entries[key].value(one.statistic) for key in heaviest)
    # Whole networks: ~3.7x (reference) and ~3x (calibration) on a quiet machine.
    assert eight.meta["reference"]["batch"] == 8 and eight.meta["reference"]["p10_ms"] > 1.5 * one.meta["reference"]["p10_ms"]
    calibration = {model.name: model.value(eight.statistic) for model in eight.calibration.models}
    assert sum(calibration.values()) > 1.5 * sum(model.value(one.statistic) for model in one.calibration.models)
    with pytest.raises(EfnasError, match="at 1 thread\\(s\\) and batch 8, not onnxruntime at 1 and batch 1"):
        build_lut(TINY, tiny_batch8, FAST)


@pytest.mark.slow
def test_check_staleness_and_recalibration_time_at_the_tables_batch(tiny_table, tiny_batch8, tmp_path):
    one, eight = load_lut(tiny_table), load_lut(tiny_batch8)
    config = CheckConfig(samples=2, rounds=2, runs=1, min_group_seconds=0.0)
    report = check_lut(eight, TINY, config, out=tmp_path / "check.json")
    assert report.measurement == {"backend": "onnxruntime", "threads": 1, "batch": 8, "clock": "thread-cpu"}
    saved = json.loads((tmp_path / "check.json").read_text())
    assert saved["lut"]["batch"] == 8 and saved["measurement"]["batch"] == 8
    measured = sum(row["measured"]["p10_ms"] for row in report.rows)
    assert measured > 1.5 * sum(predict_ms(ArchSpec.from_dict(row["arch"]), one) for row in report.rows)
    # Timed at batch 1, the reference network would take about a quarter of its recorded time.
    stale = check_staleness(eight)
    assert 0.6 < stale.measured_ms / stale.recorded_ms < 1.7
    again = recalibrate_here(eight, tmp_path / "here.json", show_progress=False).table
    assert again.batch == 8 and again.meta["reference"]["p10_ms"] > 1.5 * one.meta["reference"]["p10_ms"]
    ratio = again.meta["recalibration"]["unit_ratio"]
    assert ratio["stem"] > 0.6 and ratio["meta4d"] > 0.6  # at batch 1: about 0.2 and 0.4


# One width and MLP ratio per stage: 11 units. A two-thread build of the tiny space takes 30 s on
# two busy cores, where the second thread waits for a core.
MINI_SPACE = """
name = "mini"
resolution = 32
num_classes = 10
attn_heads = 2
attn_key_dim = 16
mlp_ratios = [4]
meta3d = [0, 1]
""" + "".join(f"\n[[stages]]\nwidths = [{width}]\ndepths = [1, 2]\n" for width in (16, 24, 32, 48))


@pytest.mark.slow
def test_two_threads_are_used_by_build_and_check(tmp_path):
    (tmp_path / "mini.toml").write_text(MINI_SPACE)
    mini = load_space(tmp_path / "mini.toml")
    config = dataclasses.replace(FAST, threads=2, batch=2, calibration_samples=2)
    lut = build_lut(mini, tmp_path / "t2.json", config).table
    assert lut.threads == 2 and lut.batch == 2 and set(lut.entries) == space_keys(mini)
    assert lut.meta["backend_details"]["threads"] == 2 and lut.meta["measurement"]["clock"] == "wall"
    report = check_lut(load_lut(tmp_path / "t2.json"), mini, CheckConfig(samples=2, rounds=1, runs=1, min_group_seconds=0.0))
    assert report.measurement == {"backend": "onnxruntime", "threads": 2, "batch": 2, "clock": "wall"}
    assert len(report.rows) == 2


def test_torch_backend_runs_at_its_threads():
    engine = get_backend("torch", 2)
    before = torch.get_num_threads()
    with engine.session():
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == before
    import onnxruntime as ort

    runner = get_backend("onnxruntime", 2).prepare(torch.nn.Conv2d(3, 8, 3), (1, 3, 16, 16))
    session = next(item for item in runner.keep if isinstance(item, ort.InferenceSession))
    assert session.get_session_options().intra_op_num_threads == 2


def test_measure_model_times_the_batch_asked_for():
    spec = TINY.preset("L3")
    one = measure_model(spec, rounds=4, runs=2, min_seconds=0.2)
    eight = measure_model(spec, rounds=4, runs=2, min_seconds=0.2, batch=8)
    assert eight.p10_ms > 2 * one.p10_ms
    for bad in (0, -1, 5000, 2.5):
        with pytest.raises(EfnasError, match=f"batch must be an integer from 1 to 1024, got {bad}"):
            measure_model(spec, batch=bad)
    with pytest.raises(EfnasError, match="batch must be an integer from 1 to 1024, got 0"):
        BuildConfig(batch=0)
