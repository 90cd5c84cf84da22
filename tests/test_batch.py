"""Batch files: a batch run twice does no new trials; malformed files get one-line errors naming
the table and the key; the shipped examples are valid."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nas import load_batch, load_records
from nas.batch import EXAMPLE_FILE
from nas.cli import main
from supernet import EfnasError

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_batch_runs_twice_and_the_second_run_does_no_new_trials(trained_tiny_supernet, tiny_lut, tmp_path, capsys):
    batch_file = tmp_path / "sweep.toml"
    batch_file.write_text(f"""
out = "{tmp_path / 'sweep'}"

[defaults]
supernet = "{trained_tiny_supernet}"
lut = "{tiny_lut}"
strategy = "random"
trials = 3
val_subset = 128
calib_batches = 1
batch_size = 32
threads = 1

[[search]]
name = "l3"
budget = "L3"

[[search]]
name = "l7-tpe"
budget = "L7"
strategy = "tpe"
seed = 1
""")
    assert main(["batch", str(batch_file), "--no-progress"]) == 0
    summary = json.loads((tmp_path / "sweep" / "summary.json").read_text())
    first = {row["name"]: row for row in summary["searches"]}
    assert set(first) == {"l3", "l7-tpe"}
    assert all(row["status"] == "done" and row["evaluated"] == 3 and row["added"] == 3 for row in first.values())
    assert first["l3"]["preset"] == "L3" and first["l3"]["preset_accuracy"] is not None
    assert first["l3"]["best_latency_ms"] and max(first["l3"]["best_latency_ms"].values()) <= max(first["l3"]["preset_latency_ms"].values())
    counts = {name: len(load_records(tmp_path / "sweep" / name / "study.db", name)) for name in first}
    printed = capsys.readouterr().out
    assert f"Batch {batch_file}" in printed and "summary.json" in printed

    assert main(["batch", str(batch_file), "--no-progress"]) == 0
    second = {row["name"]: row for row in json.loads((tmp_path / "sweep" / "summary.json").read_text())["searches"]}
    assert all(row["added"] == 0 for row in second.values())
    assert counts == {name: len(load_records(tmp_path / "sweep" / name / "study.db", name)) for name in first}
    assert (tmp_path / "sweep" / "summary.csv").read_text().count("\n") == 3


MALFORMED = [
    ("[[search]\nname = 'x'", "is not valid TOML"),
    ("[[search]]\nname = 'a'\nbudget = 'L1'\ntrails = 5", "[[search]] #1 ('a'): unknown key 'trails'"),
    ("[[search]]\nbudget = 'L1'", "[[search]] #1: missing key 'name'"),
    ("[[search]]\nname = 'a'", "[[search]] #1 ('a'): missing key 'budget'"),
    ("[[search]]\nname = 'a'\nbudget = 'L1'\ntrials = 'sixty'", "[[search]] #1 ('a'): key 'trials' must be an integer, got 'sixty'"),
    ("[[search]]\nname = 'a'\nbudget = 'L1'\ntrials = 0", "[[search]] #1 ('a'): key 'trials' must be at least 1"),
    ("[[search]]\nname = 'a'\nbudget = -2.0", "[[search]] #1 ('a'): key 'budget' must be a preset name, milliseconds"),
    ("[[search]]\nname = 'a'\nbudget = 'L1'\n[[search]]\nname = 'a'\nbudget = 'L3'", "[[search]] #2 ('a'): key 'name' repeats"),
    ("[[search]]\nname = 'a/b'\nbudget = 'L1'", "key 'name' must be a folder name"),
    ("[[search]]\nname = 'a'\nbudget = [1.0, 2.0]\nlut = ['x.json', 'y.json', 'z.json']", "[[search]] #1 ('a'): 3 latency tables but 2 budgets"),
    ("[[search]]\nname = 'a'\nbudget = 'L1'\nstrategy = 'bayes'", "[[search]] #1 ('a'): key 'strategy' must be one of tpe, nsga2, random, slimming"),
    ("[defaults]\nseed = true\n[[search]]\nname = 'a'\nbudget = 'L1'", "[defaults]: key 'seed' must be an integer, got True"),
    ("[defaults]\nbudgets = 'L1'\n[[search]]\nname = 'a'", "[defaults]: unknown key 'budgets'"),
    ("searches = []", "unknown top-level key 'searches'"),
    ("out = 'runs/x'", "no searches"),
]


@pytest.mark.parametrize("text, message", MALFORMED)
def test_malformed_batch_files_get_one_line_errors(text, message, tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(EfnasError) as error:
        load_batch(path)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_batch_cli_error_exit_code(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text("[[search]]\nname = 'a'\nbudget = 'L1'\ntrials = 'many'\n")
    assert main(["batch", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "key 'trials'" in err[0]


@pytest.mark.parametrize("name", ["regenerate_l1_l3_l7.toml", "budget_sweep.toml"])
def test_shipped_examples_are_valid(name):
    batch = load_batch(REPO / "examples" / name)
    assert batch.entries and all(entry.config.budgets for entry in batch.entries)


def test_the_file_format_in_the_help_is_a_valid_batch(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text(EXAMPLE_FILE)
    batch = load_batch(path)
    assert [entry.name for entry in batch.entries] == ["l1", "cpu-and-phone"]
    assert [len(entry.config.budgets) for entry in batch.entries] == [1, 2]
