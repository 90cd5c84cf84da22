#!/usr/bin/env python3
"""Benchmark: how search and training throughput scale with processes, as ratios from one run.

(a) `efnas search` with 1 and then 2 workers on one storage (SQLite, and a throwaway local
    PostgreSQL cluster started here with initdb/pg_ctl): trials per minute, from the trials'
    own start and end times in the storage (process start-up is not a trial).
(b) `efnas train` in 1 process, then under `torchrun --nproc-per-node 2`, 1 thread each:
    training images/s (median of the 10-step windows after the first).

Goals on a 2-core machine: >= 1.8x for 2 search workers, >= 1.6x for 2 DDP processes. Run on a
quiet machine: anything else running takes cores from the 2-process runs.

    python bench/scaling.py             # ~15 min on 2 cores
    python bench/scaling.py --quick --out /tmp/scaling   # ~3 min, proves the pieces work

Writes docs/benchmarks/scaling.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from supernet.io import atomic_write_json, atomic_write_text, console, provenance, provenance_markdown  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
EFNAS = [sys.executable, "-m", "nas.cli"]
GOALS = {"search": 1.8, "ddp": 1.6}


def _run(command: list[str], what: str) -> None:
    result = subprocess.run(command, env=ENV, cwd=REPO, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{what} failed: {(result.stderr.strip().splitlines() or ['?'])[-1]}")


@contextmanager
def postgres_cluster(folder: Path) -> Iterator[str | None]:
    """The URL of a fresh local PostgreSQL database (None when the server binaries are missing)."""
    def binary(name: str) -> str | None:
        found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
        return str(found[-1]) if found else shutil.which(name)

    initdb, pg_ctl, createdb = binary("initdb"), binary("pg_ctl"), binary("createdb")
    if not (initdb and pg_ctl and createdb):
        yield None
        return
    folder.mkdir(parents=True)
    prefix: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        user = "postgres" if subprocess.run(["id", "postgres"], capture_output=True).returncode == 0 else "nobody"
        shutil.chown(folder, user)
        prefix = ["runuser", "-u", user, "--"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = folder / "data"
    subprocess.run([*prefix, initdb, "-D", str(data), "--auth=trust", "-U", "efnas"], check=True, capture_output=True)
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run([*prefix, pg_ctl, "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w", "start"], check=True, capture_output=True)
    try:
        subprocess.run([createdb, "-h", "127.0.0.1", "-p", str(port), "-U", "efnas", "efnas"], check=True, capture_output=True)
        yield f"postgresql://efnas@127.0.0.1:{port}/efnas"
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)


def trials_per_minute(url: str, study: str) -> tuple[float, int]:
    """Finished trials per minute over the span from the first trial's start to the last one's end."""
    import optuna

    from nas.results import storage_url  # names the installed PostgreSQL driver

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials = [t for t in optuna.load_study(study_name=study, storage=storage_url(url)).get_trials() if t.datetime_complete]
    span = (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()
    return 60 * len(trials) / span, len(trials)


def search_scaling(supernet: Path, lut: Path, url: str, work: Path, trials: int, tag: str) -> dict[str, float]:
    rates = {}
    for workers in (1, 2):
        study = f"{tag}-w{workers}"
        commands = [
            [*EFNAS, "search", "--supernet", str(supernet), "--lut", str(lut), "--budget", "L3", "--strategy", "random",
             "--trials", str(trials), "--storage", url, "--study", study, "--out", str(work / f"{study}-{i}"),
             "--val-subset", "512", "--calib-batches", "2", "--batch-size", "64", "--threads", "1", "--no-progress"]
            for i in range(workers)
        ]
        processes = [subprocess.Popen(c, env=ENV, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for c in commands]
        for process in processes:
            if process.wait():
                raise SystemExit(f"search worker on {tag} failed: {process.stderr.read().strip().splitlines()[-1:]}")
        rates[workers], _ = trials_per_minute(url, study)
    return {"trials_per_min_1": rates[1], "trials_per_min_2": rates[2], "ratio": rates[2] / rates[1]}


def training_rate(command: list[str], out: Path) -> float:
    _run(command, "training")
    windows = [json.loads(line)["images_per_s"] for line in (out / "metrics.jsonl").read_text().splitlines() if "images_per_s" in json.loads(line)]
    return statistics.median(windows[1:] or windows)


def ddp_scaling(work: Path, steps: int, batch: int) -> dict[str, float]:
    args = ["train", "--space", "tiny", "--epochs", "1", "--steps-per-epoch", str(steps), "--batch-size", str(batch),
            "--threads", "1", "--no-validate", "--no-progress"]
    one = training_rate([*EFNAS, *args, "--out", str(work / "train-1")], work / "train-1")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "nas.cli"]
    two = training_rate([*torchrun, *args, "--out", str(work / "train-2")], work / "train-2")
    return {"images_per_s_1": one, "images_per_s_2": two, "ratio": two / one}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few trials and steps: proves the pieces work, numbers mean little")
    parser.add_argument("--supernet", type=Path, help="a trained tiny supernet run (default: trained here, briefly)")
    parser.add_argument("--trials", type=int, help="trials per search (default: 40, quick: 6)")
    parser.add_argument("--steps", type=int, help="training steps per run (default: 100, quick: 20)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--out", default="docs/benchmarks/scaling")
    args = parser.parse_args()
    trials = args.trials or (6 if args.quick else 40)
    steps = args.steps or (20 if args.quick else 100)

    from latency_lut import shipped_lut
    from supernet import load_space

    lut = shipped_lut(load_space("tiny"))
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="efnas-scaling-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)  # the PostgreSQL server runs as another user
        supernet = args.supernet
        if supernet is None:
            supernet = work / "supernet"
            console.print("training a tiny supernet for the searches ...")
            _run([*EFNAS, "train", "--space", "tiny", "--epochs", "1", "--steps-per-epoch", "30", "--threads", "2", "--no-progress",
                  "--no-validate", "--out", str(supernet)], "supernet training")
        console.print(f"search workers on SQLite ({trials} trials each) ...")
        results["search_sqlite"] = search_scaling(supernet, lut, f"sqlite:///{work / 'search.db'}", work, trials, "sqlite")
        with postgres_cluster(work / "pg") as url:
            if url is None:
                console.print("PostgreSQL server binaries (initdb, pg_ctl) not found: PostgreSQL skipped")
            else:
                console.print(f"search workers on PostgreSQL ({trials} trials each) ...")
                results["search_postgresql"] = search_scaling(supernet, lut, url, work, trials, "pg")
        console.print(f"training, 1 process vs torchrun with 2 ({steps} steps each) ...")
        results["ddp"] = ddp_scaling(work, steps, args.batch)
    return _report(results, args, trials, steps)


def _report(results: dict[str, dict], args: argparse.Namespace, trials: int, steps: int) -> int:
    for name, row in results.items():
        goal = GOALS["ddp" if name == "ddp" else "search"]
        row.update(goal=goal, met=row["ratio"] >= goal)
    names = {"search_sqlite": "2 search workers vs 1, SQLite (trials/min)", "search_postgresql": "2 search workers vs 1, PostgreSQL (trials/min)",
             "ddp": "torchrun 2 processes vs 1 process (training images/s)"}
    rows = []
    for name, row in results.items():
        one, two = (row["images_per_s_1"], row["images_per_s_2"]) if name == "ddp" else (row["trials_per_min_1"], row["trials_per_min_2"])
        rows.append(f"| {names[name]} | {one:.1f} | {two:.1f} | {row['ratio']:.2f} | ≥ {row['goal']}: {'met' if row['met'] else 'not met'} |")
        console.print(f"{names[name]}: {one:.1f} -> {two:.1f}, ratio {row['ratio']:.2f} (goal {row['goal']}: {'met' if row['met'] else 'not met'})")
    settings = {"quick": args.quick, "trials": trials, "steps": steps, "batch": args.batch, "space": "tiny", "threads_per_process": 1,
                "search": "random strategy, budget L3, val subset 512, 2 calibration batches of 64"}
    result = {"benchmark": "scaling", "settings": settings, "results": results, "provenance": provenance()}
    out = Path(args.out)
    atomic_write_json(out.with_suffix(".json"), result)
    lines = [
        "# Scaling: search workers and DDP processes",
        "",
        f"Tiny space, 1 thread per process. Search: {trials} trials per study, {settings['search']}; rates from the trials' "
        f"start and end times in the storage. Training: `efnas train` for {steps} steps of batch {args.batch} per process, "
        "validation off; images/s is the median of the 10-step windows after the first."
        + (" Quick mode: too few trials and steps for the ratios to mean much." if args.quick else ""),
        "",
        "| comparison | 1 process | 2 processes | ratio | goal |",
        "|---|---|---|---|---|",
        *rows,
        "",
        *provenance_markdown(result["provenance"]),
    ]
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
