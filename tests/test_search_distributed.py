"""One search under torchrun on one machine (issue 15): rank 0 runs the search, every rank scores
each architecture with it, and the study is the one a single process makes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from test_search import ENV, QUICK_ARGS, REPO, _search_cmd

from nas import EvalConfig, Evaluator
from nas.cli import main
from supernet import EfnasError
from supernet.checkpoint import load_supernet

# TPE: the architectures it proposes after its random start depend on the scores, so the two
# studies agree only if every score does.
SEARCH = ["--budget", "L3", "--strategy", "tpe", "--trials", "5", "--startup-trials", "3", "--study", "shared"]


def _study(out: Path) -> optuna.Study:
    return optuna.load_study(study_name="shared", storage=f"sqlite:///{out / 'study.db'}")


def _scores(study: optuna.Study) -> list[tuple[str, str, float]]:
    return [(t.state.name, t.user_attrs["arch"], t.user_attrs["accuracy"]) for t in study.get_trials()]


def _torchrun_search(supernet: Path, lut: Path, out: Path, logs: Path, *extra: str,
                     monitor_seconds: float = 0.1) -> tuple[subprocess.CompletedProcess, list[Path]]:
    """``efnas search`` under torchrun with 2 ranks, and each rank's log folder (its stdout.log, stderr.log)."""
    # torchrun starts the interpreter itself; each rank's output goes to files of its own.
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "--monitor-interval", str(monitor_seconds), "--log-dir", str(logs), "--redirects", "3",
               *_search_cmd(supernet, lut, out, *extra)[1:]]
    run = subprocess.run(command, env=ENV, cwd=REPO, capture_output=True, text=True, timeout=300)
    return run, [next(logs.glob(f"*/attempt_0/{rank}")) for rank in (0, 1)]


@pytest.mark.slow
def test_two_gloo_ranks_run_one_search_with_one_process_scores(trained_tiny_supernet, tiny_lut, tmp_path, capsys):
    alone, shared, logs = tmp_path / "alone", tmp_path / "shared", tmp_path / "logs"
    assert main(_search_cmd(trained_tiny_supernet, tiny_lut, alone, *SEARCH)[3:]) == 0
    printed_alone = capsys.readouterr().out

    run, (rank0, rank1) = _torchrun_search(trained_tiny_supernet, tiny_lut, shared, logs, *SEARCH)
    assert run.returncode == 0, (rank0 / "stderr.log").read_text()[-2000:] + run.stderr[-2000:]

    study, reference = _study(shared), _study(alone)
    assert sum(t.state == TrialState.COMPLETE and t.user_attrs.get("evaluated") for t in study.get_trials()) == 5
    # Counts are summed over the ranks and BatchNorm statistics in float64: equal, not close.
    assert _scores(study) == _scores(reference)
    assert study.user_attrs["presets"] == reference.user_attrs["presets"]
    # Only rank 0 searched, printed and wrote.
    assert len({t.user_attrs["worker"]["pid"] for t in study.get_trials()}) == 1
    assert sorted(p.name for p in shared.iterdir()) == sorted(p.name for p in alone.iterdir())
    assert (rank1 / "stdout.log").read_text() == "" and (rank1 / "stderr.log").read_text() == ""
    printed = (rank0 / "stdout.log").read_text()
    assert "5 architectures evaluated" in printed and printed.count("wrote ") == printed_alone.count("wrote ")


@pytest.mark.slow
def test_a_failed_search_releases_the_other_rank_with_its_status(trained_tiny_supernet, tiny_lut, tmp_path):
    # torchrun stops the other ranks as soon as it sees one fail; polling every 5 s lets both ranks end by
    # themselves first, so the report holds each one's own exit status.
    run, (rank0, rank1) = _torchrun_search(trained_tiny_supernet, tiny_lut, tmp_path / "bad", tmp_path / "logs",
                                           "--budget", "L9", monitor_seconds=5)
    assert (rank0 / "stderr.log").read_text().strip().splitlines() == [
        "efnas: error: space 'tiny' has no preset 'L9'; its presets are L1, L3, L7"]
    assert (rank1 / "stdout.log").read_text() == "" and (rank1 / "stderr.log").read_text() == ""
    # torchrun's failure report: rank 1 ended with rank 0's status 2, not killed in a collective.
    statuses = dict(re.findall(r"^\s+rank\s+: (\d+) .*\n\s+exitcode\s+: (-?\d+)", run.stderr, flags=re.M))
    assert run.returncode != 0 and statuses == {"0": "2", "1": "2"}, run.stderr[-2000:]


def test_an_evaluator_alone_neither_serves_nor_sends(trained_tiny_supernet):
    supernet, info = load_supernet(trained_tiny_supernet)
    evaluator = Evaluator(supernet, info, EvalConfig(calib_batches=1, batch_size=32, val_subset=32))
    evaluator.release()  # nothing to release in a single process
    with pytest.raises(EfnasError, match="ranks other than 0"):
        evaluator.serve()
    assert 0 <= evaluator.accuracy(info.space.smallest()) <= 1


def test_batch_under_torchrun_is_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")  # what torchrun --nproc-per-node 2 gives each rank
    assert main(["batch", str(tmp_path / "never-read.toml")]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("efnas: error: efnas batch runs as one process")
