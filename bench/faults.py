#!/usr/bin/env python3
"""Fault benchmark: ``kill -9`` at random moments of every long command, then run it to completion.

One command, bounded in time (``--minutes``; ``--quick`` is a smaller, faster run of the same
checks). At tiny sizes (the tiny space, few steps, a 64-image validation subset), through the real
``efnas`` command line (``python -m nas.cli``):

- **train**: kill, continue with ``--resume``; the final weights must equal an uninterrupted run's
  (``params_sha256``); work lost per kill = steps logged in metrics.jsonl (every 10 steps) beyond the
  checkpoint the next run continues from, at most ``--checkpoint-every``;
- **lut build**: kill, rerun the same command (it resumes); units lost = units the killed run logged
  as measured but did not save (the table is saved after every group), at most one group; the final
  table must load and cover the space;
- **search, 2 workers** on one SQLite study: kill one worker at a time, restart it; the study must end
  with exactly ``--trials`` evaluations, no architecture evaluated twice, no PRUNED trial, no trial
  left RUNNING, and at most one trial lost (FAIL, then retried) per kill;
- **export**: kill, rerun; the export must appear whole, once;
- **batch** of two searches: kill, rerun; every search done with exactly its trials, no duplicate,
  no trial left RUNNING.

Stale files are counted after the final run: temp files of the atomic writer (``.NAME.PID-HOST.*.tmp``),
``.efnas.lock`` files, and staging folders of killed exports. Writes FILE.json and FILE.md
(``--out``, default docs/benchmarks/faults) with the machine's provenance.

    .venv/bin/python bench/faults.py --quick
    .venv/bin/python bench/faults.py --minutes 8 --kills 5
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import optuna  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from supernet.checkpoint import load_checkpoint  # noqa: E402
from supernet.io import atomic_write_json, atomic_write_text, provenance, provenance_markdown  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
SCORING = ["--val-subset", "64", "--calib-batches", "1", "--batch-size", "32", "--threads", "1", "--no-progress"]
RUN_TIMEOUT_S = 600  # one uninterrupted run of any command here takes seconds


@dataclass(frozen=True)
class Sizes:
    kills: int
    train_epochs: int
    steps_per_epoch: int
    checkpoint_every: int
    trials: int
    batch_trials: int


QUICK = Sizes(kills=2, train_epochs=3, steps_per_epoch=20, checkpoint_every=20, trials=8, batch_trials=4)
FULL = Sizes(kills=5, train_epochs=4, steps_per_epoch=25, checkpoint_every=20, trials=16, batch_trials=6)


@dataclass
class Outcome:
    """What the kills of one command did."""

    command: str
    kills: int = 0
    survived: bool = False  # every run after a kill ended in a complete, correct result
    lost: list[float] = field(default_factory=list)  # work lost per kill, in `unit`
    unit: str = ""
    lost_limit: float = 0.0  # the most a kill may lose: one checkpoint interval, one group, one trial
    at: list[str] = field(default_factory=list)  # where each kill landed
    duplicates: int = 0  # evaluations of an architecture already evaluated (search, batch)
    pruned: int = 0  # PRUNED trials made (search, batch)
    stale: list[str] = field(default_factory=list)
    checks: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.survived and self.duplicates == 0 and self.pruned == 0 and not self.stale and max(self.lost, default=0) <= self.lost_limit


def efnas(*args: str) -> list[str]:
    return [sys.executable, "-m", "nas.cli", *args]


def run(command: list[str], log: Path, kill_after: float | None = None) -> int | None:
    """Run ``command`` (output appended to ``log``); SIGKILL it after ``kill_after`` seconds.
    Its exit status, or None if it was killed."""
    with log.open("ab") as out:
        out.write(f"\n$ {' '.join(command)}\n".encode())
        out.flush()
        process = subprocess.Popen(command, env=ENV, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        try:
            return process.wait(timeout=kill_after if kill_after is not None else RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            if kill_after is None:
                raise RuntimeError(f"{' '.join(command)} ran past {RUN_TIMEOUT_S} s; see {log}") from None
            out.write(b"\n[killed with SIGKILL]\n")
            return None


def timed(command: list[str], log: Path) -> float:
    began = time.monotonic()
    code = run(command, log)
    if code != 0:
        raise RuntimeError(f"{' '.join(command)} exited {code}; see {log}")
    return time.monotonic() - began


_TEMP = re.compile(r"^\..+\.\d+-[0-9a-f]{8}\.[A-Za-z0-9_]+\.tmp$")
_STAGING = re.compile(r"^\..+\.(partial|old)-\d+-")


def stale_files(folder: Path) -> list[str]:
    """Temp files of killed writers, lock files and export staging folders left under ``folder``."""
    found = []
    for path in folder.rglob("*"):
        if _TEMP.match(path.name) or path.name == ".efnas.lock" or (path.is_dir() and _STAGING.match(path.name)):
            found.append(str(path.relative_to(folder)))
    return sorted(found)


class Killer:
    """Random kill moments, within the run's deadline."""

    def __init__(self, seed: int, deadline: float, startup_s: float) -> None:
        self.rng = random.Random(seed)
        self.deadline = deadline
        self.startup_s = startup_s  # Python and torch starting: a kill there tests nothing

    def moment(self, reference_s: float) -> float:
        # Anywhere in the run's work: training or measuring, and while writing files.
        return self.startup_s + self.rng.uniform(0.0, 1.0) * max(reference_s - self.startup_s, 0.5)

    def time_left(self) -> bool:
        return time.monotonic() < self.deadline


# -- train ------------------------------------------------------------------------------------------


def _logged_step(metrics: Path) -> int:
    steps = [json.loads(line).get("step", 0) for line in metrics.read_text().splitlines() if line.strip()] if metrics.exists() else []
    return max(steps, default=0)


def _checkpoint_step(folder: Path) -> int:
    path = folder / "supernet.pt"
    return int(load_checkpoint(path)["step"]) if path.exists() else 0


def fault_train(work: Path, sizes: Sizes, killer: Killer) -> tuple[Outcome, Path]:
    outcome = Outcome("train", unit="steps", lost_limit=sizes.checkpoint_every)
    args = ["train", "--space", "tiny", "--epochs", str(sizes.train_epochs), "--steps-per-epoch", str(sizes.steps_per_epoch),
            "--batch-size", "16", "--threads", "1", "--no-validate", "--checkpoint-every", str(sizes.checkpoint_every), "--no-progress"]
    log = work / "train.log"
    reference = work / "train-reference"
    reference_s = timed(efnas(*args, "--out", str(reference)), log)
    digest = load_checkpoint(reference / "supernet.pt")["metrics"]["params_sha256"]
    episode, digests = 0, []
    while outcome.kills < sizes.kills and killer.time_left():
        folder = work / f"train-{episode}"
        while True:
            resume = ["--resume"] if (folder / "supernet.pt").exists() else []
            code = run(efnas(*args, "--out", str(folder), *resume), log, killer.moment(reference_s))
            if code is not None:
                break
            outcome.kills += 1
            logged, saved = _logged_step(folder / "metrics.jsonl"), _checkpoint_step(folder)
            outcome.lost.append(max(0, logged - saved))
            outcome.at.append(f"step {logged} logged, {saved} checkpointed")
            if outcome.kills >= sizes.kills or not killer.time_left():
                code = run(efnas(*args, "--out", str(folder), "--resume"), log)  # to completion
                break
        payload = load_checkpoint(folder / "supernet.pt")
        digests.append(code == 0 and payload["finished"] and payload["metrics"]["params_sha256"] == digest)
        outcome.stale += [f"{folder.name}/{name}" for name in stale_files(folder)]
        steps = [json.loads(line)["step"] for line in (folder / "metrics.jsonl").read_text().splitlines()]
        outcome.duplicates += len(steps) - len(set(steps))  # metrics.jsonl lines of a step written twice
        episode += 1
    outcome.survived = bool(digests) and all(digests)
    outcome.checks = {"runs": episode, "bit_identical_to_uninterrupted": outcome.survived, "reference_s": round(reference_s, 1)}
    return outcome, reference


# -- lut build ---------------------------------------------------------------------------------------

_MEASURED = re.compile(r"measured (\d+) of (\d+) unit\(s\)$")


def _entries(table: Path) -> int:
    try:
        return len(json.loads(table.read_text()).get("entries", {}))
    except (OSError, ValueError):
        return 0


def _logged_units(log: Path, start: int) -> int:
    """Units the last run logged as measured (its log begins at byte ``start``)."""
    counts = [int(m[1]) for line in log.read_bytes()[start:].decode(errors="replace").splitlines() if (m := _MEASURED.search(line))]
    return max(counts, default=0)


def fault_lut(work: Path, sizes: Sizes, killer: Killer) -> Outcome:
    from latency_lut import load_lut
    from latency_lut._keys import space_keys
    from supernet import load_space

    outcome = Outcome("lut build", unit="units", lost_limit=64)  # the build's group size
    args = ["lut", "build", "--space", "tiny", "--rounds", "5", "--calibration-samples", "3", "--min-group-seconds", "0.3",
            "--seed", "0", "--no-progress"]
    log = work / "lut.log"
    reference_s = timed(efnas(*args, "--out", str(work / "lut-reference" / "t.json")), log)
    keys = set(space_keys(load_space("tiny")))
    episode, complete = 0, []
    while outcome.kills < sizes.kills and killer.time_left():
        table = work / f"lut-{episode}" / "t.json"
        while True:
            before, start = _entries(table), log.stat().st_size
            code = run(efnas(*args, "--out", str(table)), log, killer.moment(reference_s))
            if code is not None:
                break
            outcome.kills += 1
            outcome.lost.append(max(0, before + _logged_units(log, start) - _entries(table)))
            outcome.at.append(f"{_entries(table)} of {len(keys)} units saved")
            if outcome.kills >= sizes.kills or not killer.time_left():
                code = run(efnas(*args, "--out", str(table)), log)
                break
        complete.append(code == 0 and keys <= set(load_lut(table).entries))
        outcome.stale += [f"{table.parent.name}/{name}" for name in stale_files(table.parent)]
        episode += 1
    outcome.survived = bool(complete) and all(complete)
    outcome.checks = {"runs": episode, "tables_complete": outcome.survived, "reference_s": round(reference_s, 1)}
    return outcome


# -- search and batch: what a study holds --------------------------------------------------------------


def study_counts(storage: str, name: str) -> dict[str, int]:
    trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    evaluated = [t.user_attrs.get("arch") for t in trials if t.state == TrialState.COMPLETE and t.user_attrs.get("evaluated")]
    states = Counter(t.state.name for t in trials)
    return {"trials": len(trials), "evaluated": len(evaluated), "duplicates": len(evaluated) - len(set(evaluated)),
            "pruned": states.get("PRUNED", 0), "failed": states.get("FAIL", 0), "running": states.get("RUNNING", 0)}


def _search_args(supernet: Path, trials: int, storage: str, out: Path) -> list[str]:
    return ["search", "--supernet", str(supernet), "--budget", "L3", "--strategy", "random", "--trials", str(trials),
            "--storage", storage, "--study", "faults", "--out", str(out), *SCORING]


def _where(storage: str, name: str) -> str:
    try:
        counts = study_counts(storage, name)
    except Exception:  # noqa: BLE001 - killed before it made the study
        return "before the study existed"
    return f"{counts['evaluated']} evaluated, {counts['running']} running"


def _two_workers(commands: list[list[str]], log: Path, killer: Killer, reference_s: float, kills_left: int,
                 where: Any) -> tuple[list[str], list[int]]:
    """Run both workers; kill a running one at random moments (``kills_left`` at most), restarting
    it at once; then let both finish. Where each kill landed, and the workers' final exit statuses."""
    handle = log.open("ab")
    start = lambda i: subprocess.Popen(commands[i], env=ENV, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT)  # noqa: E731
    workers, kills = [start(0), start(1)], []
    while len(kills) < kills_left and killer.time_left():
        time.sleep(killer.moment(reference_s))
        running = [i for i, w in enumerate(workers) if w.poll() is None]
        if not running:
            break
        victim = killer.rng.choice(running)
        workers[victim].kill()
        workers[victim].wait()
        handle.write(f"\n[worker {victim} killed with SIGKILL]\n".encode())
        kills.append(f"worker {victim}: {where()}")
        workers[victim] = start(victim)
    codes = [w.wait(timeout=RUN_TIMEOUT_S) for w in workers]
    handle.close()
    return kills, codes


def fault_search(work: Path, sizes: Sizes, killer: Killer, supernet: Path) -> Outcome:
    outcome = Outcome("search (2 workers)", unit="trials", lost_limit=1)
    log = work / "search.log"
    reference = work / "search-reference"
    reference_s = timed(efnas(*_search_args(supernet, sizes.trials, f"sqlite:///{reference}/study.db", reference)), log)
    episode, good = 0, []
    while outcome.kills < sizes.kills and killer.time_left():
        folder = work / f"search-{episode}"
        storage = f"sqlite:///{folder}/study.db"
        commands = [efnas(*_search_args(supernet, sizes.trials, storage, folder / f"w{i}")) for i in range(2)]
        at, codes = _two_workers(commands, log, killer, reference_s, sizes.kills - outcome.kills, lambda: _where(storage, "faults"))
        counts, kills = study_counts(storage, "faults"), len(at)
        outcome.kills += kills
        outcome.at += at
        # A killed worker loses the trial it was evaluating (reaped as FAIL, then retried).
        outcome.lost += [counts["failed"] / kills] * kills if kills else []
        outcome.duplicates += counts["duplicates"]
        outcome.pruned += counts["pruned"]
        outcome.stale += [f"{folder.name}/{name}" for name in stale_files(folder)]
        good.append(codes == [0, 0] and counts["evaluated"] == sizes.trials and counts["running"] == 0)
        outcome.checks.setdefault("studies", []).append(counts)
        episode += 1
    outcome.survived = bool(good) and all(good)
    outcome.checks.update(runs=episode, reference_s=round(reference_s, 1), trials=sizes.trials)
    return outcome


# -- export --------------------------------------------------------------------------------------------


def fault_export(work: Path, sizes: Sizes, killer: Killer, supernet: Path) -> Outcome:
    outcome = Outcome("export", unit="exports", lost_limit=1)
    args = ["export", "--supernet", str(supernet), "--preset", "L1", "--formats", "pt,onnx", "--val-subset", "64",
            "--calib-batches", "1", "--latency-rounds", "0", "--threads", "1", "--no-progress"]
    log = work / "export.log"
    reference_s = timed(efnas(*args, "--out", str(work / "export-reference" / "e")), log)
    episode, whole = 0, []
    while outcome.kills < sizes.kills and killer.time_left():
        out = work / f"export-{episode}" / "e"
        while True:
            if (out / "export.json").exists():  # killed after the export was in place: it is done
                code = 0
                break
            code = run(efnas(*args, "--out", str(out)), log, killer.moment(reference_s))
            if code is not None:
                break
            outcome.kills += 1
            in_place = (out / "export.json").exists()
            outcome.lost.append(0 if in_place else 1)  # an export is not resumed: redone whole
            outcome.at.append("after the export was in place" if in_place else "before the export was in place")
            if outcome.kills >= sizes.kills or not killer.time_left():
                code = 0 if (out / "export.json").exists() else run(efnas(*args, "--out", str(out)), log)
                break
        whole.append(code == 0 and {"model.pt", "model.onnx", "export.json", "model_card.md"} <= {p.name for p in out.iterdir()})
        outcome.stale += [f"{out.parent.name}/{name}" for name in stale_files(out.parent)]
        episode += 1
    outcome.survived = bool(whole) and all(whole)
    outcome.checks = {"runs": episode, "exports_whole": outcome.survived, "reference_s": round(reference_s, 1)}
    return outcome


# -- batch ---------------------------------------------------------------------------------------------


def _batch_file(folder: Path, supernet: Path, trials: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "batch.toml"
    path.write_text(f'out = "{folder / "runs"}"\n[defaults]\nsupernet = "{supernet}"\nstrategy = "random"\ntrials = {trials}\n'
                    'val_subset = 64\ncalib_batches = 1\nbatch_size = 32\nthreads = 1\n'
                    '[[search]]\nname = "l3"\nbudget = "L3"\n[[search]]\nname = "l7"\nbudget = "L7"\n')
    return path


def _batch_storage(folder: Path, name: str) -> str:
    return f"sqlite:///{folder / 'runs' / name / 'study.db'}"


def fault_batch(work: Path, sizes: Sizes, killer: Killer, supernet: Path) -> Outcome:
    outcome = Outcome("batch", unit="trials", lost_limit=1)
    log = work / "batch.log"
    reference_s = timed(efnas("batch", str(_batch_file(work / "batch-reference", supernet, sizes.batch_trials)), "--no-progress"), log)
    episode, good = 0, []
    while outcome.kills < sizes.kills and killer.time_left():
        folder = work / f"batch-{episode}"
        command = efnas("batch", str(_batch_file(folder, supernet, sizes.batch_trials)), "--no-progress")
        kills = 0
        while True:
            code = run(command, log, killer.moment(reference_s))
            if code is not None:
                break
            kills += 1
            outcome.at.append("; ".join(f"{name}: {_where(_batch_storage(folder, name), name)}" for name in ("l3", "l7")))
            if outcome.kills + kills >= sizes.kills or not killer.time_left():
                code = run(command, log)
                break
        studies = {name: study_counts(_batch_storage(folder, name), name) for name in ("l3", "l7")}
        failed = sum(c["failed"] for c in studies.values())
        outcome.kills += kills
        outcome.lost += [failed / kills] * kills if kills else []
        outcome.duplicates += sum(c["duplicates"] for c in studies.values())
        outcome.pruned += sum(c["pruned"] for c in studies.values())
        outcome.stale += [f"{folder.name}/{name}" for name in stale_files(folder)]
        summary = json.loads((folder / "runs" / "summary.json").read_text())["searches"] if code == 0 else []
        good.append(code == 0 and all(r["status"] == "done" for r in summary)
                    and all(c["evaluated"] == sizes.batch_trials and c["running"] == 0 for c in studies.values()))
        outcome.checks.setdefault("studies", []).append(studies)
        episode += 1
    outcome.survived = bool(good) and all(good)
    outcome.checks.update(runs=episode, reference_s=round(reference_s, 1), trials_per_search=sizes.batch_trials)
    return outcome


# -- report --------------------------------------------------------------------------------------------


def markdown(outcomes: list[Outcome], sizes: Sizes, quick: bool, prov: dict[str, Any], seconds: float) -> str:
    mode = "quick mode (`--quick`)" if quick else "full mode"
    lines = [
        "# Fault benchmark: kill -9 at random moments, then run to completion",
        "",
        f"Made by `bench/faults.py` in {mode}: {sizes.kills} kill(s) per command, {seconds:.0f} s in all. Each command runs on the",
        "tiny space at tiny sizes through the real `efnas` command line; after its kills it is run again to",
        "completion and its result checked (see the script's docstring for what each check means).",
        "",
        "| command | kills | survived | work lost per kill (max) | limit | duplicate evaluations | PRUNED trials | stale files |",
        "|---|---:|---|---|---:|---:|---:|---:|",
    ]
    for o in outcomes:
        lost = ", ".join(f"{x:g}" for x in o.lost) or "-"
        lines.append(f"| {o.command} | {o.kills} | {'yes' if o.survived else '**no**'} | {lost} {o.unit} ({max(o.lost, default=0):g}) "
                     f"| {o.lost_limit:g} | {o.duplicates} | {o.pruned} | {len(o.stale)} |")
    verdict = "all within bounds" if all(o.ok for o in outcomes) else "**some outside bounds**: " + ", ".join(o.command for o in outcomes if not o.ok)
    lines += ["", f"Verdict: {verdict}.", "",
              "Work lost per kill: train, steps logged in metrics.jsonl (every 10 steps) past the checkpoint the next run",
              "continued from; lut build, units the killed run logged as measured but did not save; search and batch,",
              "trials reaped as FAIL (each retried) over the kills; export, 1 when the export had to be redone whole.",
              "Kill moments are uniform over each command's work, after Python's start-up (measured with `efnas --version`).",
              "", "Checks per command:", ""]
    lines += [f"- {o.command}: kills landed at {'; '.join(o.at) or '-'}; `{json.dumps(o.checks)}`"
              + (f"; stale: {', '.join(o.stale)}" if o.stale else "") for o in outcomes]
    lines += ["", *provenance_markdown(prov)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer kills, fewer steps and trials")
    parser.add_argument("--minutes", type=float, default=8.0, help="stop killing after this long; the final runs still finish (default: 8)")
    parser.add_argument("--kills", type=int, default=None, help="kills per command (default: 2 with --quick, else 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments and victims")
    parser.add_argument("--work", type=Path, default=None, help="folder for the runs (default: a temporary one, removed)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks" / "faults", help="report path without suffix")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.kills is not None:
        sizes = Sizes(**{**asdict(sizes), "kills": max(1, args.kills)})
    began = time.monotonic()
    work = args.work or Path(tempfile.mkdtemp(prefix="efnas-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    # An equal share of the time per command, so that the last one gets its kills too.
    share = args.minutes * 60 / 5
    startup_s = timed(efnas("--version"), work / "startup.log")
    outcomes: list[Outcome] = []
    try:
        supernet = None
        for step, scenario in enumerate([fault_train, fault_lut, fault_search, fault_export, fault_batch], start=1):
            killer = Killer(args.seed + step, began + step * share, startup_s)
            started = time.monotonic()
            if scenario is fault_train:
                outcome, supernet = fault_train(work, sizes, killer)  # its reference run is the others' supernet
            else:
                outcome = scenario(work, sizes, killer) if scenario is fault_lut else scenario(work, sizes, killer, supernet)
            outcome.seconds = round(time.monotonic() - started, 1)
            outcomes.append(outcome)
            print(f"{outcome.command}: {outcome.kills} kill(s), lost {outcome.lost} {outcome.unit}, "
                  f"{outcome.duplicates} duplicate(s), {outcome.pruned} PRUNED, {len(outcome.stale)} stale; ok={outcome.ok}", flush=True)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    seconds = time.monotonic() - began
    prov = provenance()
    record = {"quick": args.quick, "sizes": asdict(sizes), "seconds": round(seconds, 1), "provenance": prov,
              "commands": [{**asdict(o), "ok": o.ok} for o in outcomes]}
    atomic_write_json(args.out.with_suffix(".json"), record)
    atomic_write_text(args.out.with_suffix(".md"), markdown(outcomes, sizes, args.quick, prov, seconds) + "\n")
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.md')}")
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
