"""What the commands print when their output is a file or a pipe, or with --no-progress: full-width
lines (no table cell wrapped or cut) and one log line per stretch of work instead of a live bar;
and no password of a storage URL in the provenance every artefact carries."""

from __future__ import annotations

import csv
import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest

from supernet import load_arch
from supernet.io import console, lock_folder, mask_passwords, progress_bar, progress_lines, provenance

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
ENV.pop("COLUMNS", None)
QUICK_ARGS = ["--val-subset", "64", "--calib-batches", "1", "--batch-size", "32", "--threads", "1"]


def _efnas(*argv: str) -> subprocess.CompletedProcess:
    """The real command line, its output piped (not a terminal)."""
    return subprocess.run([sys.executable, "-m", "nas.cli", *argv], env=ENV, cwd=REPO, capture_output=True, text=True, timeout=600)


def _efnas_on_a_terminal(*argv: str) -> str:
    """The real command line on a pseudo-terminal; what it printed."""
    leader, follower = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "nas.cli", *argv], env=ENV, cwd=REPO, stdout=follower, stderr=follower)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert process.wait(timeout=600) == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")


def _feasible_labels(trials_csv: Path) -> list[str]:
    with trials_csv.open() as handle:
        return [row["architecture"] for row in csv.DictReader(handle) if row["evaluated"] == "1" and row["feasible"] == "1"]


# -- the console and the progress lines, in this process ----------------------------------------


def test_piped_progress_is_one_line_per_log_every_and_one_at_the_end(capsys):
    with progress_bar("loss {task.fields[loss]:.3f}") as progress:
        epochs = progress.add_task("supernet", total=60, loss=0.0, log_every=20)  # one line per epoch of 20 steps
        trials = progress.add_task("random", total=20, loss=0.0)  # default: each tenth
        for step in range(10, 61, 10):  # updated every 10 steps, as training's meter does
            progress.update(epochs, completed=step, loss=1 / step)
        for _ in range(15):
            progress.advance(trials)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" (")[0] for line in lines if line.startswith("supernet")] == [
        "supernet: 20/60  loss 0.050", "supernet: 40/60  loss 0.025", "supernet: 60/60  loss 0.017"]
    # every second trial, and where it stopped (15 of 20: the stretch after the last line)
    assert [re.search(r"(\d+)/20", line)[1] for line in lines if line.startswith("random")] == ["2", "4", "6", "8", "10", "12", "14", "15"]


def test_show_false_prints_nothing(capsys):
    with progress_lines(), progress_bar(show=False) as progress:  # a DDP worker other than rank 0
        task = progress.add_task("supernet", total=10)
        progress.update(task, completed=10)
    assert capsys.readouterr().out == ""


def test_piped_console_does_not_wrap_and_rules_stay_short(capsys):
    assert not console.is_terminal  # pytest captures the output
    text = " ".join(f"word{i}" for i in range(100))
    console.print(text)
    console.rule("step 1: train")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == text
    assert "step 1: train" in lines[1] and len(lines[1]) == 80


# -- provenance: no password ----------------------------------------------------------------------


def test_provenance_and_the_lock_file_mask_url_passwords(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["efnas", "search", "--storage", "postgresql://efnas:hunter2@db:5432/nas",
                                      "--storage=postgresql+psycopg2://u:p@ss@db/nas", "--x", "postgresql://db/nas?user=u&password=s3cret"])
    command = provenance()["command"]
    assert "hunter2" not in command and "p@ss" not in command and "s3cret" not in command
    assert "postgresql://efnas:***@db:5432/nas" in command and "password=***" in command
    with lock_folder(tmp_path / "run") as lock:
        assert "hunter2" not in lock.read_text()


@pytest.mark.parametrize("text", ["sqlite:///runs/s/study.db", "postgresql://efnas@db/nas", "postgresql://db:5432/nas", "runs/s/study.db"])
def test_urls_without_a_password_are_left_alone(text):
    assert mask_passwords(text) == text


# -- the real command line, piped -----------------------------------------------------------------


@pytest.mark.slow
def test_piped_train_logs_one_line_per_epoch(tmp_path):
    run = _efnas("train", "--space", "tiny", "--epochs", "2", "--steps-per-epoch", "10", "--batch-size", "8", "--threads", "1",
                 "--no-validate", "--out", str(tmp_path / "t"))
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert [re.match(r"supernet: (\d+/\d+)  loss", line)[1] for line in lines if line.startswith("supernet:")] == ["10/20", "20/20"]
    assert not any("━" in line and "supernet" in line for line in lines)  # no bar drawn at the end
    assert any("w32-48-80-128 d2-2-3-2 v2 r4" in line for line in lines)  # the largest subnet's label, whole


@pytest.mark.slow
def test_piped_search_keeps_every_label_whole_and_logs_every_tenth_of_the_trials(tmp_path, trained_tiny_supernet, tiny_lut):
    out = tmp_path / "s"
    run = _efnas("search", "--supernet", str(trained_tiny_supernet), "--lut", str(tiny_lut), "--budget", "L3",
                 "--strategy", "random", "--trials", "20", "--top", "20", "--out", str(out), *QUICK_ARGS)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    counts = [int(m[1]) for line in lines if (m := re.match(r"random: .*: (\d+)/20 ", line))]
    assert counts == list(range(2, 21, 2))
    labels = _feasible_labels(out / "trials.csv")
    assert len(labels) > 5
    for label in labels:  # each row of the results table is one line, the label in one piece
        assert any(label in line and line.startswith("│") for line in lines), label
    assert any(f"{Path(tiny_lut).stem} ms" in line for line in lines)  # the table's column title, not "tiny_onnxrunt…"
    assert not any("…" in line for line in lines)


@pytest.mark.slow
def test_piped_batch_table_rows_are_one_line(tmp_path, trained_tiny_supernet, tiny_lut):
    batch = tmp_path / "sweep.toml"
    batch.write_text(f"""
out = "{tmp_path / 'b'}"
[defaults]
supernet = "{trained_tiny_supernet}"
lut = "{tiny_lut}"
strategy = "random"
trials = 2
val_subset = 64
calib_batches = 1
batch_size = 32
threads = 1
[[search]]
name = "a-search-with-a-rather-long-name"
budget = "L3"
[[search]]
name = "another-search-under-l7"
budget = "L7"
""")
    run = _efnas("batch", str(batch))
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())["searches"]
    for row in summary:
        label = load_arch(tmp_path / "b" / row["name"] / "best.json").label()
        assert row["best_label"] == label
        assert any(row["name"] in line and "done" in line and label in line and row["budget"] in line for line in lines), row
    assert not any("…" in line for line in lines)
    assert sum(1 for line in lines if line.startswith("─") and ": random" in line) == 2  # a short heading per search


@pytest.mark.slow
def test_no_progress_on_a_terminal_prints_the_log_lines(tmp_path, trained_tiny_supernet, tiny_lut):
    shown = _efnas_on_a_terminal("search", "--supernet", str(trained_tiny_supernet), "--lut", str(tiny_lut), "--budget", "L3",
                                 "--strategy", "random", "--trials", "4", "--out", str(tmp_path / "s"), *QUICK_ARGS, "--no-progress")
    counts = [int(m[1]) for line in shown.splitlines() if (m := re.search(r"random: .*: (\d+)/4 ", line))]
    assert counts == [1, 2, 3, 4]
    assert "\x1b[?25l" not in shown  # no live display (rich hides the cursor while it draws one)
