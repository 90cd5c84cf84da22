"""`efnas demo` end to end at reduced size: train, shipped table, TPE + slimming, export, summary."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from latency_lut import load_lut, predict_ms, shipped_lut
from nas.cli import build_parser, main
from nas.demo import DemoConfig, run_demo
from supernet import ArchSpec, load_space


def test_the_tiny_space_has_a_shipped_table():
    # The demo's first command relies on it; a change to tiny.toml that orphans it must fail here.
    path = shipped_lut(load_space("tiny"))
    assert path is not None
    lut = load_lut(path)
    assert lut.meta["backend"] == "onnxruntime" and lut.meta["threads"] == 1


@pytest.mark.slow
def test_demo_pipeline_at_reduced_size(tmp_path, capsys):
    out = tmp_path / "demo"
    config = DemoConfig(out=str(out), epochs=1, steps_per_epoch=8, budget="L3", trials=6, val_subset=256, threads=1)
    result = run_demo(config, show_progress=False)

    space = load_space("tiny")
    lut = load_lut(result.lut)
    limit = predict_ms(space.preset("L3"), lut)
    assert set(result.searches) == {"tpe", "slimming"}
    assert result.searches["tpe"].evaluated == 6
    slimmed = result.searches["slimming"]
    assert slimmed.best is not None and slimmed.slimming_path, "the slimming must run to its end"
    winner = ArchSpec.from_dict(json.loads((out / f"search-{result.winner}" / "best.json").read_text())["arch"])
    assert predict_ms(winner, lut) <= limit

    record = result.export.record
    assert record["arch"] == winner.to_dict()
    assert record["formats"]["onnx"]["checks"]["max_abs_diff"] <= 1e-4
    names = {f.name for f in result.export.files}
    assert {"model.pt", "arch.json", "model.onnx", "model_card.md"} <= names
    assert any(name.endswith(".mlpackage") for name in names)
    printed = capsys.readouterr().out
    assert "efnas demo" in printed and "same as:" in printed and "efnas export" in printed

    # A second run reuses the finished supernet and the complete studies: nothing is trained or searched again.
    trials_before = {name: (out / f"search-{name}" / "trials.csv").read_text() for name in result.searches}
    assert main(["demo", "--out", str(out), "--epochs", "1", "--steps-per-epoch", "8", "--budget", "L3", "--trials", "6",
                 "--val-subset", "256", "--threads", "1", "--no-progress"]) == 0
    assert "training skipped" in capsys.readouterr().out
    assert {name: (out / f"search-{name}" / "trials.csv").read_text() for name in result.searches} == trials_before

    # Every "same as" command the demo printed is the step it ran: the real parser turns it into the same config.
    assert [step.argv[:2] for step in result.steps] == [["efnas", "train"], ["efnas", "lut"], ["efnas", "search"],
                                                        ["efnas", "search"], ["efnas", "export"]]
    for step in result.steps:
        args = build_parser().parse_args(shlex.split(step.command)[1:])
        if step.config is None:  # the table step: the demo adapted the shipped table into this file
            assert Path(args.out) == result.lut and Path(args.table) == shipped_lut(space)
        else:
            assert args.config_flags.from_args(args)[0] == step.config
    # ... and run by hand it continues the demo's study, which refuses any other setting, without new trials.
    tpe = next(step for step in result.steps if "--strategy" in step.argv and "tpe" in step.argv)
    assert main([*shlex.split(tpe.command)[1:], "--no-progress"]) == 0
    assert (out / "search-tpe" / "trials.csv").read_text() == trials_before["tpe"]

