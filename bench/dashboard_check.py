#!/usr/bin/env python3
"""Does optuna-dashboard tell the truth about a search? One command, about a minute on 2 cores.

Trains the tiny supernet briefly, runs a TPE and an NSGA-II search under a budget that about half
of the space misses, starts a real ``optuna-dashboard`` server on the study's storage and reads
its HTTP API (``/api/studies``, ``/api/studies/<id>``) as the web page does. Checks, per study:

- metric names: the dashboard's ``objective_names`` are the search's objectives;
- feasibility: each trial's ``constraints`` (what the dashboard colours feasible/infeasible by)
  agrees with the search's own feasibility (every budget met);
- "Best Trial": whether the trial(s) the dashboard marks best are feasible;
- study user attributes: each value the dashboard returns parses as JSON and equals the stored value.

Writes docs/benchmarks/dashboard_check.md (or --report PATH). Needs ``pip install optuna-dashboard``.

    .venv/bin/python bench/dashboard_check.py
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from latency_lut import fastest_subnet, load_lut, predict_ms, shipped_lut  # noqa: E402
from nas import BudgetRequest, SearchConfig, load_records, run_search  # noqa: E402
from supernet import load_space  # noqa: E402
from supernet.io import provenance  # noqa: E402
from supernet.train import TrainConfig, train  # noqa: E402


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _get(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
        return json.loads(response.read())


def _serve(url: str) -> tuple[subprocess.Popen, int]:
    port = _free_port()
    command = shutil.which("optuna-dashboard", path=str(Path(sys.executable).parent)) or shutil.which("optuna-dashboard") or "optuna-dashboard"
    server = subprocess.Popen([command, url, "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while True:
        try:
            _get(port, "/api/studies")
            return server, port
        except OSError:
            if time.time() > deadline or server.poll() is not None:
                server.kill()
                raise SystemExit("optuna-dashboard did not start (is it installed? pip install optuna-dashboard)")
            time.sleep(0.3)


def check_study(port: int, storage: str, name: str) -> dict[str, Any]:
    """What the dashboard shows of study ``name`` against what the search recorded."""
    import optuna

    study = optuna.load_study(study_name=name, storage=storage)
    study_id = next(s["study_id"] for s in _get(port, "/api/studies")["study_summaries"] if s["study_name"] == name)
    detail = _get(port, f"/api/studies/{study_id}")
    ours = {r.number: r for r in load_records(storage, name)}
    complete = [t for t in detail["trials"] if t["state"] == "Complete"]
    agree = sum(1 for t in complete if bool(t["constraints"]) and all(v <= 0 for v in t["constraints"]) == ours[t["number"]].feasible)
    best = [t["number"] for t in detail["best_trials"]]
    attrs = {}
    for attr in detail["user_attrs"]:
        try:
            attrs[attr["key"]] = json.loads(attr["value"]) == study.user_attrs[attr["key"]]
        except json.JSONDecodeError:
            attrs[attr["key"]] = False
    return {
        "study": name,
        "objective_names": detail.get("objective_names"),
        "metric_names": study.metric_names,
        "complete": len(complete),
        "feasible": sum(1 for r in ours.values() if r.feasible),
        "constraints_agree": agree,
        "best_marked": best,
        "best_marked_feasible": [ours[n].feasible for n in best],
        "best_feasible_attr": study.user_attrs.get("best_feasible", {}).get("trial"),
        "attrs_json": attrs,
    }


def _report(rows: list[dict[str, Any]], seconds: float) -> str:
    lines = [
        "# optuna-dashboard check",
        "",
        "Does optuna-dashboard show a search truthfully? `bench/dashboard_check.py` runs a TPE and an",
        "NSGA-II search on the tiny space (budget: 40% of the way from the fastest to the largest",
        "architecture), serves the storage with a real optuna-dashboard and reads its HTTP API.",
        "",
        "| study | dashboard metric names | trials: constraints shown and agreeing / complete (feasible) | marked \"Best Trial\" (feasible?) | study attribute `best_feasible` | study attributes that are valid JSON equal to the stored value |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        marked = ", ".join(f"{n} ({'yes' if f else 'no'})" for n, f in zip(r["best_marked"], r["best_marked_feasible"])) or "-"
        good = [k for k, ok in r["attrs_json"].items() if ok]
        bad = [k for k, ok in r["attrs_json"].items() if not ok]
        attrs = f"{len(good)}/{len(r['attrs_json'])}" + (f" (not: {', '.join(bad)})" if bad else "")
        lines.append(f"| {r['study']} | {r['objective_names']} | {r['constraints_agree']} / {r['complete']} ({r['feasible']}) "
                     f"| {marked} | trial {r['best_feasible_attr']} | {attrs} |")
    info = provenance()
    lines += [
        "",
        "What this means:",
        "",
        "- Metric names and feasibility are what the search recorded: every trial carries its constraints",
        "  in the list the dashboard reads (Optuna 5's per-name constraints are mirrored there), so the",
        "  dashboard's plots grey out infeasible trials.",
        "- For a single-objective study (tpe, random, slimming) the dashboard's \"Best Trial\" is the",
        "  trial with the highest value, feasible or not (it asks the storage for the best value and does",
        "  not look at constraints); it can be over budget. The best feasible trial is the study's user",
        "  attribute `best_feasible`, shown on the dashboard's study page. For NSGA-II the dashboard's best",
        "  trials are its own Pareto front of all complete trials, again without constraints.",
        "- A study attribute longer than 1,024 characters of JSON is cut by the dashboard and then",
        "  no longer parses; those are listed as \"not\" above.",
        "",
        f"Run: {time.strftime('%Y-%m-%d')}, {seconds:.0f} s, `python bench/dashboard_check.py`; "
        f"optuna {info['versions'].get('optuna', '?')}, optuna-dashboard {_dashboard_version()}, Python {sys.version.split()[0]}.",
        "",
    ]
    return "\n".join(lines)


def _dashboard_version() -> str:
    from importlib.metadata import version

    return version("optuna-dashboard")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report", type=Path, default=REPO / "docs/benchmarks/dashboard_check.md")
    parser.add_argument("--trials", type=int, default=8)
    args = parser.parse_args()
    start = time.time()
    work = Path(tempfile.mkdtemp(prefix="efnas-dashboard-"))
    space = load_space("tiny")
    lut = shipped_lut(space)
    table = load_lut(lut)
    low, high = fastest_subnet(space, table)[1], predict_ms(space.largest(), table)
    supernet = train(TrainConfig(out=str(work / "supernet"), space="tiny", epochs=1, steps_per_epoch=20, batch_size=64, threads=1),
                     show_progress=False).checkpoint
    storage = f"sqlite:///{work / 'study.db'}"
    rows = []
    for strategy in ("tpe", "nsga2"):
        config = SearchConfig(supernet=supernet, budgets=(BudgetRequest(lut=lut, ms=low + 0.4 * (high - low)),), strategy=strategy,
                              trials=args.trials, population=4, out=work / strategy, storage=storage, study=strategy,
                              val_subset=128, calib_batches=1, batch_size=32, threads=1)
        run_search(config, show_progress=False)
    server, port = _serve(storage)
    try:
        rows = [check_study(port, storage, name) for name in ("tpe", "nsga2")]
    finally:
        server.terminate()
        server.wait()
    args.report.write_text(_report(rows, time.time() - start))
    print(json.dumps(rows, indent=1))
    print(f"wrote {args.report}")
    if not os.environ.get("KEEP"):
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
