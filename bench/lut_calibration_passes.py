#!/usr/bin/env python3
"""Benchmark: one pass over the calibration networks, or two keeping each network's faster? (issue 12)

Per repeat: builds a table of the space with one calibration pass (``efnas lut build
--calibration-passes 1``), copies it, and has the build time the copy's calibration networks a
second time (the copy is turned into a build stopped after its first pass, so entries and first
pass are shared and only the second pass is new). Then ``lut check`` measures the presets and
``--samples`` random subnets once, and both tables are scored on those same measurements.

    .venv/bin/python bench/lut_calibration_passes.py --space efficientformer-v1 --repeats 2
    .venv/bin/python bench/lut_calibration_passes.py --space tiny --repeats 3 --out docs/benchmarks/lut_calibration_passes_tiny

Writes docs/benchmarks/lut_calibration_passes.{json,md}; the tables stay in runs/bench/lut_calibration_passes/.
Needs a quiet machine: it measures how well a table predicts.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from latency_lut import BuildConfig, CheckConfig, build_lut, check_lut, load_lut, prediction_stats, save_lut  # noqa: E402
from supernet import ArchSpec, load_space  # noqa: E402
from supernet.io import atomic_write_json, atomic_write_text, console, provenance, provenance_markdown  # noqa: E402
from _load import OtherLoad, load_note  # noqa: E402  (bench/_load.py, beside this script)

WORK = ROOT / "runs" / "bench" / "lut_calibration_passes"


def _second_pass(one: Path, two: Path, space, config: BuildConfig) -> float:
    """``two``: ``one`` with its calibration networks timed once more, each keeping its faster pass."""
    table = load_lut(one)
    table.meta["pending_calibration"] = [{**model.to_dict(), "passes": 1} for model in table.calibration.models]
    table.meta["calibration"] = None
    table.meta["measurement"]["calibration_passes"] = 2
    save_lut(table, two)
    started = time.monotonic()
    # No noisy units re-measured: both tables keep the same entries.
    build_lut(space, two, dataclasses.replace(config, calibration_passes=2, retries=0), show_progress=False)
    return time.monotonic() - started


def _repeat(index: int, space, space_name: str, samples: int, seed: int) -> dict:
    one, two = WORK / f"{space.name}_{index}_one_pass.json", WORK / f"{space.name}_{index}_two_passes.json"
    for path in (one, two):
        path.unlink(missing_ok=True)
    config = BuildConfig(calibration_passes=1)
    started = time.monotonic()
    build_lut(space, one, config, space_arg=space_name, show_progress=False)
    build_seconds = time.monotonic() - started
    second_seconds = _second_pass(one, two, space, config)
    tables = {"one pass": load_lut(one), "two passes": load_lut(two)}
    report = check_lut(tables["one pass"], space, CheckConfig(samples=samples, seed=seed))
    measured = [row["measured"][f"{report.statistic}_ms"] for row in report.rows]
    specs = [ArchSpec.from_dict(row["arch"]) for row in report.rows]
    first = {m.name: m.value(report.statistic) for m in tables["one pass"].calibration.models}
    kept = {m.name: m.value(report.statistic) for m in tables["two passes"].calibration.models}
    return {
        "build_seconds": round(build_seconds, 1),
        "second_pass_seconds": round(second_seconds, 1),
        "second_over_first": sorted(round(kept[name] / first[name], 4) for name in first),
        "held_out": len(measured),
        "tables": {
            name: {
                "scales": table.calibration.scales,
                "overhead_ms": table.calibration.overhead_ms,
                "loo_mape_percent": table.calibration.loo_mape,
                "calibrated": prediction_stats([table.predict_ms(s) for s in specs], measured).to_dict(),
            }
            for name, table in tables.items()
        },
        "plain": prediction_stats([tables["one pass"].predict_ms(s, calibrated=False) for s in specs], measured).to_dict(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="efficientformer-v1", help="built-in space or space file (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=2, help="builds, one after the other (default: %(default)s)")
    parser.add_argument("--samples", type=int, default=40, help="held-out random subnets besides the presets (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=9173, help="seed of the held-out subnets (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "lut_calibration_passes", help="output path without suffix")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    space = load_space(args.space)
    WORK.mkdir(parents=True, exist_ok=True)
    meter = OtherLoad()
    repeats = []
    for index in range(args.repeats):
        repeats.append(_repeat(index, space, args.space, args.samples, args.seed))
        r = repeats[-1]
        one, two = (r["tables"][name]["calibrated"] for name in ("one pass", "two passes"))
        console.print(
            f"repeat {index}: one pass {one['within_5']:.1f}% within ±5% (MAPE {one['mape']:.2f}%), two passes "
            f"{two['within_5']:.1f}% (MAPE {two['mape']:.2f}%), plain sum {r['plain']['within_5']:.1f}%"
        )
    data = {
        "benchmark": "lut_calibration_passes",
        "space": space.name,
        "settings": {"repeats": args.repeats, "samples": args.samples, "seed": args.seed},
        "other_cores": meter.cores(),
        "repeats": repeats,
        "provenance": provenance(),
    }
    atomic_write_json(args.out.with_suffix(".json"), data)
    atomic_write_text(args.out.with_suffix(".md"), _markdown(data, os.cpu_count() or 1))
    console.print(f"wrote {args.out.with_suffix('.md')}")
    return 0


def _markdown(data: dict, cores: int) -> str:
    s = data["settings"]
    lines = [
        "# Calibration networks timed in one pass or two",
        "",
        f"Each repeat builds a `{data['space']}` table with one pass over its calibration networks, then times the same "
        "networks a second time into a copy (each keeping its faster pass; entries shared), and checks both on the same "
        f"measurements of the presets and {s['samples']} random subnets (seed {s['seed']}). 'second / first' is each "
        "network's kept timing over its first pass's (1.0: the first pass was the faster).",
        "",
        load_note(data["other_cores"], cores),
        "",
        "| repeat | build s | 2nd pass s | second / first (min–max) | calibration | scales (stem/embed/meta4d/meta3d/head) | "
        "leave-one-out | within ±5% | within ±10% | MAPE | bias | plain sum ±5% / MAPE |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(data["repeats"]):
        ratios = r["second_over_first"]
        for name, t in r["tables"].items():
            c = t["calibrated"]
            scales = "/".join(f"{t['scales'][k]:.2f}" for k in ("stem", "embed", "meta4d", "meta3d", "head"))
            lines.append(
                f"| {i} | {r['build_seconds']} | {r['second_pass_seconds']} | {ratios[0]:.3f}–{ratios[-1]:.3f} | {name} | {scales} | "
                f"{t['loo_mape_percent']:.2f}% | {c['within_5']:.1f}% | {c['within_10']:.1f}% | {c['mape']:.2f}% | {c['bias']:+.2f}% | "
                f"{r['plain']['within_5']:.1f}% / {r['plain']['mape']:.2f}% |"
            )
    lines += ["", *provenance_markdown(data["provenance"])]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
