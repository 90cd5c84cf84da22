#!/usr/bin/env python3
"""Benchmark: do two latency tables of the same space, built one after the other on the same machine
with another process busy, predict the same latencies? (issue 12)

Builds ``--builds`` tables of the space with the default settings (``efnas lut build``), one after
the other, while ``--busy`` processes spin on the other cores (a user's machine is rarely idle),
then compares every pair of tables on the presets and ``--samples`` random subnets: Kendall's tau
between their predictions and the share of networks whose predictions differ by at most 5%.
Goal for the tiny space with one busy process: tau >= 0.95 and >= 90% within ±5%.

    .venv/bin/python bench/lut_agreement.py                        # tiny, 3 builds, 1 busy process, 40 networks
    .venv/bin/python bench/lut_agreement.py --busy 0 --builds 2    # on an otherwise idle machine

Writes docs/benchmarks/lut_agreement.{json,md}; the tables stay in runs/bench/lut_agreement/.
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from latency_lut import BuildConfig, build_lut, load_lut  # noqa: E402
from supernet import load_space  # noqa: E402
from supernet.io import atomic_write_json, atomic_write_text, console, provenance, provenance_markdown  # noqa: E402
from _load import OtherLoad, busy_processes, load_note  # noqa: E402  (bench/_load.py, beside this script)

WORK = ROOT / "runs" / "bench" / "lut_agreement"
GOAL_TAU, GOAL_WITHIN_5 = 0.95, 90.0


def _compare(a: list[float], b: list[float]) -> dict[str, float]:
    from scipy.stats import kendalltau

    x, y = np.asarray(a), np.asarray(b)
    differ = np.abs(x - y) / np.minimum(x, y) * 100
    return {
        "kendall_tau": float(kendalltau(x, y).statistic),
        "within_5": float(np.mean(differ <= 5) * 100),
        "within_10": float(np.mean(differ <= 10) * 100),
        "median_difference_percent": float(np.median(differ)),
        "worst_difference_percent": float(np.max(differ)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="tiny", help="built-in space or space file (default: %(default)s)")
    parser.add_argument("--builds", type=int, default=3, help="tables built one after the other (default: %(default)s)")
    parser.add_argument("--busy", type=int, default=1, help="spinning processes during the builds (default: %(default)s)")
    parser.add_argument("--samples", type=int, default=37, help="random subnets besides the presets (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=9173, help="seed of the compared subnets (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "lut_agreement", help="output path without suffix")
    args = parser.parse_args(argv)
    if args.builds < 2:
        parser.error("--builds must be at least 2 (the benchmark compares tables)")
    space = load_space(args.space)
    WORK.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    networks = [(name, spec) for name, spec in space.presets] + [(f"random {i + 1}", space.sample(rng)) for i in range(args.samples)]

    tables = []
    with busy_processes(args.busy):
        meter = OtherLoad()
        for index in range(args.builds):
            path = WORK / f"{space.name}_{index}.json"
            path.unlink(missing_ok=True)  # every build measured anew, under this run's conditions
            started = time.monotonic()
            build_lut(space, path, BuildConfig(), space_arg=args.space, show_progress=False)
            table = load_lut(path)
            predictions = [table.predict_ms(spec) for _, spec in networks]
            calibration = table.calibration
            tables.append({
                "table": str(path.relative_to(ROOT)),
                "seconds": round(time.monotonic() - started, 1),
                "loo_mape_percent": calibration.loo_mape if calibration else None,
                "quality": table.meta.get("quality"),
                "predicted_ms": predictions,
            })
            console.print(f"build {index}: {tables[-1]['seconds']} s, leave-one-out {tables[-1]['loo_mape_percent']}%")
        other = meter.cores()
    pairs = []
    for i, j in itertools.combinations(range(len(tables)), 2):
        pairs.append({"a": i, "b": j, **_compare(tables[i]["predicted_ms"], tables[j]["predicted_ms"])})
        p = pairs[-1]
        console.print(f"tables {i} vs {j}: τ {p['kendall_tau']:.3f}, within ±5% {p['within_5']:.1f}%, worst {p['worst_difference_percent']:.1f}%")
    met = all(p["kendall_tau"] >= GOAL_TAU and p["within_5"] >= GOAL_WITHIN_5 for p in pairs)
    data = {
        "benchmark": "lut_agreement",
        "space": space.name,
        "settings": {"builds": args.builds, "busy": args.busy, "samples": args.samples, "seed": args.seed},
        "goal": {"kendall_tau": GOAL_TAU, "within_5": GOAL_WITHIN_5, "met": met},
        "other_cores": other,  # includes the --busy spinners
        "networks": [{"name": name, "arch": spec.to_dict()} for name, spec in networks],
        "tables": tables,
        "pairs": pairs,
        "provenance": provenance(),
    }
    atomic_write_json(args.out.with_suffix(".json"), data)
    atomic_write_text(args.out.with_suffix(".md"), _markdown(data, os.cpu_count() or 1))
    console.print(f"goal {'met' if met else 'NOT met'}; wrote {args.out.with_suffix('.md')}")
    return 0


def _markdown(data: dict, cores: int) -> str:
    s, goal = data["settings"], data["goal"]
    lines = [
        "# Latency tables built twice: do they agree?",
        "",
        f"**Question** (issue 12): {s['builds']} tables of space `{data['space']}` built one after the other with the default "
        f"settings, while {s['busy']} other process(es) spun on the machine's cores; do they predict the same latencies for "
        f"the presets and {s['samples']} random subnets (seed {s['seed']})? Goal: Kendall τ >= {goal['kendall_tau']} and "
        f">= {goal['within_5']:.0f}% of networks within ±5% of each other, for every pair. **Result: "
        f"{'met' if goal['met'] else 'NOT met'}.**",
        "",
        load_note(data["other_cores"], cores) + " (The spinning processes the benchmark starts are part of that load, on purpose.)",
        "",
        "| tables | Kendall τ | within ±5% | within ±10% | median difference | worst difference |",
        "|---|---|---|---|---|---|",
    ]
    for p in data["pairs"]:
        lines.append(f"| {p['a']} vs {p['b']} | {p['kendall_tau']:.3f} | {p['within_5']:.1f}% | {p['within_10']:.1f}% | "
                     f"{p['median_difference_percent']:.2f}% | {p['worst_difference_percent']:.2f}% |")
    lines += ["", "| table | build s | leave-one-out calibration error | quality problems |", "|---|---|---|---|"]
    for i, t in enumerate(data["tables"]):
        warning = "; ".join((t["quality"] or {}).get("problems", []))
        loo = "—" if t["loo_mape_percent"] is None else f"{t['loo_mape_percent']:.2f}%"
        lines.append(f"| {i} | {t['seconds']:.0f} | {loo} | {warning or 'none'} |")
    lines += ["", *provenance_markdown(data["provenance"])]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
