"""``efnas lut``: help that documents, one-line errors with exit status 2, stop-and-resume with 3."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from latency_lut import LatencyTable, Timing, load_lut, op_units, save_lut, space_keys, space_units
from nas.cli import main
from supernet import load_space

TINY = load_space("tiny")


def _table(tmp_path, source: str = "measured"):
    entries = {key: Timing(0.02, 0.01, 0.03, 5) for key in space_units(TINY)}
    meta = {
        "device": "test CPU",
        "backend": "onnxruntime" if source == "measured" else "coreml",
        "precision": "fp32",
        "batch": 1,
        "threads": 1,
        "resolution": TINY.resolution,
        "space": {"name": "tiny", "source": "tiny", "fingerprint": TINY.fingerprint(), "num_classes": TINY.num_classes},
        "source": source,
        "statistic": "median",
    }
    return save_lut(LatencyTable(meta, entries), tmp_path / f"{source}.json")


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("efnas: error: ") and err.count("\n") == 1, err
    return err


def test_help_reads_like_documentation(capsys):
    for command in ("build", "check", "show", "coreml-bundle", "measure-coreml", "import"):
        with pytest.raises(SystemExit):
            main(["lut", command, "--help"])
        out = capsys.readouterr().out
        assert "example" in out and "efnas lut " + command in out
    assert main(["lut"]) == 2
    assert "coreml-bundle" in capsys.readouterr().out


def test_show_prices_an_architecture(tmp_path, capsys):
    path = _table(tmp_path)
    assert main(["lut", "show", str(path), "--preset", "L1"]) == 0
    out = capsys.readouterr().out
    assert "stem:w16:r32" in out and "head:w64:r1:c37" in out and "no calibration" in out
    assert f"sum {0.02 * len(op_units(TINY.preset('L1'))):.3f} ms" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["lut", "show", "{tmp}/missing.json"], "latency table {tmp}/missing.json does not exist"),
        (["lut", "show", "{measured}", "--preset", "L9"], "space 'tiny' has no preset 'L9'"),
        (["lut", "check", "--lut", "{imported}"], "lut check measures on this machine, so it can only check tables measured here"),
        (["lut", "check", "--lut", "{measured}", "--space", "efficientformer-v1"], "was made for space 'tiny'"),
        (["lut", "build", "--space", "tiny-ish", "--out", "{tmp}/t.json"], "unknown space 'tiny-ish'"),
        (["lut", "build", "--space", "tiny", "--out", "{tmp}/t.json", "--rounds", "0"], "rounds must be at least 1, got 0"),
        (["lut", "build", "--space", "tiny", "--out", "{tmp}/t.json", "--batch", "0"], "--batch must be an integer from 1 to 1024, got 0"),
        (["lut", "build", "--space", "tiny", "--out", "{tmp}/t.json", "--batch", "-8"], "--batch must be an integer from 1 to 1024, got -8"),
        (["lut", "build", "--space", "tiny", "--out", "{tmp}/t.json", "--batch", "4096"], "--batch must be an integer from 1 to 1024, got 4096"),
        (["lut", "build", "--space", "tiny", "--out", "{measured}", "--batch", "8"], "at 1 thread(s) and batch 1, not onnxruntime at 1 and batch 8"),
        (["lut", "build", "--space", "tiny", "--out", "{imported}"], "is an imported table; build into another file with --out"),
        (["lut", "measure-coreml", "{tmp}"], "Core ML prediction needs macOS"),
        (["lut", "import", "--bundle", "{tmp}", "--results", "{tmp}/r.csv", "--device", "x", "--out", "{tmp}/o.json"], "manifest.json is missing"),
        (["lut", "coreml-bundle", "--space", "tiny", "--out", "{tmp}/b", "--keys", "stem:w17:r32"], "key(s) stem:w17:r32 are not units of space 'tiny'"),
    ],
)
def test_errors_are_one_line_with_exit_status_2(tmp_path, capsys, argv, message):
    names = {"tmp": str(tmp_path), "measured": str(_table(tmp_path)), "imported": str(_table(tmp_path, "imported"))}
    err = _error(capsys, [part.format(**names) for part in argv])
    assert message.format(**names) in err


def test_missing_keys_error_names_the_command(tmp_path, capsys):
    path = _table(tmp_path)
    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps(TINY.with_num_classes(10).preset("L1").to_dict()))
    err = _error(capsys, ["lut", "show", str(path), "--arch", str(arch)])
    assert f"measure them with: efnas lut build --space tiny --num-classes 10 --backend onnxruntime --threads 1 --out {path}" in err


def test_errors_have_no_traceback_in_a_real_process(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "efnas-latency-table", "version": 1, "meta": {}, "entries": {}}))
    done = subprocess.run([sys.executable, "-m", "nas.cli", "lut", "show", str(bad)], capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr == f"efnas: error: latency table {bad}: meta is missing 'device'\n"


@pytest.mark.slow
def test_build_stops_with_status_3_and_continues(tmp_path, capsys):
    out = tmp_path / "tiny.json"
    argv = ["lut", "build", "--space", "tiny", "--out", str(out), "--rounds", "2", "--calibration-samples", "2",
            "--min-group-seconds", "0"]
    assert main(argv + ["--max-minutes", "0.00001"]) == 3
    assert "run the same command again to continue" in capsys.readouterr().out
    partial = len(load_lut(out).entries)
    assert 0 < partial < len(space_keys(TINY))
    assert main(argv) == 0
    assert f"this run measured {len(space_keys(TINY)) - partial} " in capsys.readouterr().out
    assert set(load_lut(out).entries) == space_keys(TINY)


def test_show_says_threads_batch_and_what_a_prediction_is(tmp_path, capsys):
    path = _table(tmp_path)
    table = load_lut(path)
    table.meta.update(batch=8, threads=2)
    save_lut(table, path)
    assert main(["lut", "show", str(path), "--preset", "L1", "--no-stale-check"]) == 0
    out = capsys.readouterr().out
    assert "2 thread(s), batch 8," in out and "entries and predictions are ms per call on a batch of 8 image(s)" in out
    assert "ms per batch of 8" in out
