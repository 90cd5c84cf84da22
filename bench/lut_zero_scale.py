#!/usr/bin/env python3
"""Benchmark: when a recalibrated table prices a category at 0, does it predict worse? (issue 12)

Recalibrates a table on this machine ``--repeats`` times (``recalibrate_here``, the shipped tiny
table by default), with ``--busy`` other processes spinning, and checks each result on the same
held-out networks (``lut check``: the presets and ``--samples`` random subnets). Each
recalibration's calibration networks are then fitted a second way, the best form that prices
every category that is a real part of a network (>= 2 % of its blocks) above 0, and both fits are
scored on the same held-out measurements. If the fits with a 0 predicted worse, a scale of 0
would be a sign of a poor table on its own; if they predict better, it is the fit moving a block
every network has into the other scales.

    .venv/bin/python bench/lut_zero_scale.py --repeats 8 --busy 1
    .venv/bin/python bench/lut_zero_scale.py --repeats 6 --busy 0 --out docs/benchmarks/lut_zero_scale_quiet

Writes docs/benchmarks/lut_zero_scale.{json,md}; the tables stay in runs/bench/lut_zero_scale/.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from latency_lut import CheckConfig, check_lut, load_lut, prediction_stats, recalibrate_here, shipped_tables  # noqa: E402
from latency_lut._calibration import PER_CATEGORY_MIN, _fit_form  # noqa: E402
from latency_lut._health import _calibration_errors, zero_priced  # noqa: E402
from latency_lut._keys import CATEGORIES  # noqa: E402
from latency_lut._table import LatencyTable  # noqa: E402
from supernet import ArchSpec, load_space  # noqa: E402
from supernet.io import atomic_write_json, atomic_write_text, console, provenance, provenance_markdown  # noqa: E402
from _load import OtherLoad, busy_processes, load_note  # noqa: E402  (bench/_load.py, beside this script)

WORK = ROOT / "runs" / "bench" / "lut_zero_scale"


def _pricing_everything(table: LatencyTable) -> LatencyTable | None:
    """``table`` with the best calibration form (lowest leave-one-out error) that prices every
    real part of a network above 0, or None when no form does."""
    models = list(table.calibration.models)  # type: ignore[union-attr]
    sums = np.array([[table.category_sums(ArchSpec.from_dict(m.arch)).get(c, 0.0) for c in CATEGORIES] for m in models])
    y = np.array([m.value(table.statistic) for m in models])
    forms = ("per_category", "shared") if len(y) >= PER_CATEGORY_MIN else ("shared",)
    _, shares = _calibration_errors(table)
    fits = [fit for fit in (_fit_form(form, sums, y, models) for form in forms) if not zero_priced(fit.scales, shares)]
    if not fits:
        return None
    meta = copy.deepcopy(table.meta)
    meta["calibration"] = min(fits, key=lambda fit: fit.selection_mape).to_dict()
    return LatencyTable(meta, table.entries)


def _one(table: LatencyTable, index: int, space_name: str, samples: int, seed: int) -> dict:
    here = recalibrate_here(table, WORK / f"recalibrated_{index}.json", show_progress=False).table
    report = check_lut(here, load_space(space_name), CheckConfig(samples=samples, seed=seed))
    measured = [row["measured"][f"{report.statistic}_ms"] for row in report.rows]
    specs = [ArchSpec.from_dict(row["arch"]) for row in report.rows]
    _, shares = _calibration_errors(here)
    priced = _pricing_everything(here)
    calibration = here.calibration
    return {
        "form": calibration.form,
        "zero": zero_priced(calibration.scales, shares),
        "loo_mape_percent": calibration.loo_mape,
        "fit": prediction_stats([here.predict_ms(s) for s in specs], measured).to_dict(),
        "priced_form": None if priced is None else priced.calibration.form,
        "priced_loo_mape_percent": None if priced is None else priced.calibration.loo_mape,
        "priced": None if priced is None else prediction_stats([priced.predict_ms(s) for s in specs], measured).to_dict(),
        "plain": prediction_stats([here.predict_ms(s, calibrated=False) for s in specs], measured).to_dict(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lut", type=Path, help="table to recalibrate (default: the shipped tiny table)")
    parser.add_argument("--repeats", type=int, default=8, help="recalibrations, one after the other (default: %(default)s)")
    parser.add_argument("--busy", type=int, default=1, help="spinning processes meanwhile (default: %(default)s)")
    parser.add_argument("--samples", type=int, default=40, help="held-out random subnets besides the presets (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=9173, help="seed of the held-out subnets (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "lut_zero_scale", help="output path without suffix")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    path = args.lut or next(p for p in shipped_tables() if Path(p).name.startswith("tiny_"))
    table = load_lut(path)
    space_name = table.meta["space"].get("source") or table.meta["space"]["name"]
    WORK.mkdir(parents=True, exist_ok=True)
    rows = []
    with busy_processes(args.busy):
        meter = OtherLoad()
        for index in range(args.repeats):
            rows.append(_one(table, index, space_name, args.samples, args.seed))
            row = rows[-1]
            priced = row["priced"]
            console.print(
                f"recalibration {index}: {row['form']}, zero {row['zero'] or '-'}, held-out MAPE {row['fit']['mape']:.2f}%"
                + ("" if priced is None or not row["zero"] else f" (pricing everything: {priced['mape']:.2f}%)")
            )
        other = meter.cores()
    data = {
        "benchmark": "lut_zero_scale",
        "table": str(path),
        "settings": {"repeats": args.repeats, "busy": args.busy, "samples": args.samples, "seed": args.seed},
        "other_cores": other,  # includes the --busy spinners
        "recalibrations": rows,
        "provenance": provenance(),
    }
    atomic_write_json(args.out.with_suffix(".json"), data)
    atomic_write_text(args.out.with_suffix(".md"), _markdown(data, os.cpu_count() or 1))
    console.print(f"wrote {args.out.with_suffix('.md')}")
    return 0


def _markdown(data: dict, cores: int) -> str:
    s = data["settings"]
    rows = data["recalibrations"]
    with_zero = [r for r in rows if r["zero"] and r["priced"]]
    better = sum(r["fit"]["mape"] < r["priced"]["mape"] for r in with_zero)
    lines = [
        "# A recalibrated table with a category priced at 0: worse or better?",
        "",
        f"`{Path(data['table']).name}` recalibrated on this machine {s['repeats']} times one after the other, with "
        f"{s['busy']} other process(es) spinning; each result checked on the same held-out networks (the presets and "
        f"{s['samples']} random subnets, seed {s['seed']}). 'pricing everything' is the same calibration networks "
        "fitted with the best form that prices every real part of a network (>= 2 % of its blocks) above 0. "
        "Errors in percent of the measured latency.",
        "",
        load_note(data["other_cores"], cores) + " (The spinning processes are part of that load, on purpose.)",
        "",
        "| # | fit kept | priced at 0 | leave-one-out | held-out MAPE | within ±5% | pricing everything: leave-one-out | MAPE | within ±5% | plain sum MAPE | within ±5% |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(rows):
        p = r["priced"]
        priced = ["–", "–", "–"] if p is None or not r["zero"] else [
            f"{r['priced_loo_mape_percent']:.2f}% ({r['priced_form']})", f"{p['mape']:.2f}%", f"{p['within_5']:.1f}%"]
        lines.append(
            f"| {i} | {r['form']} | {', '.join(r['zero']) or '–'} | {r['loo_mape_percent']:.2f}% | {r['fit']['mape']:.2f}% | "
            f"{r['fit']['within_5']:.1f}% | {' | '.join(priced)} | {r['plain']['mape']:.2f}% | {r['plain']['within_5']:.1f}% |"
        )
    lines += [
        "",
        f"**{len(with_zero)} of {len(rows)} fits priced a category at 0; {better} of them predicted the held-out networks "
        "better (lower MAPE) than the fit made to price it.**",
        "",
        *provenance_markdown(data["provenance"]),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
