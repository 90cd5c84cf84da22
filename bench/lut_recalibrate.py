"""Benchmark: a shipped table recalibrated on this machine, and how well it then predicts (issue 12).

For each shipped table (or --lut ones): time its staleness check, recalibrate it here
(``recalibrate_here``: its calibration networks, plus --extra networks, timed here), then measure
held-out networks with ``lut check`` and compare the original and the recalibrated predictions on
the SAME measurements. Needs a quiet machine for the accuracy numbers; on a busy one it still
shows the machinery and the wall time.

    .venv/bin/python bench/lut_recalibrate.py --samples 40 --seed 9173
    .venv/bin/python bench/lut_recalibrate.py --lut latency_lut/tables/tiny_onnxruntime-cpu1.json --samples 4   # smoke run

Writes runs/bench/lut_recalibrate/summary.json and prints one line per table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from latency_lut import (  # noqa: E402
    CheckConfig,
    check_lut,
    check_staleness,
    load_lut,
    prediction_stats,
    quality_warning,
    recalibrate_here,
    shipped_tables,
)
from supernet import ArchSpec, load_space  # noqa: E402
from supernet.io import provenance  # noqa: E402

WORK = ROOT / "runs" / "bench" / "lut_recalibrate"


def _one(path: Path, samples: int, seed: int, extra: int) -> dict:
    table = load_lut(path)
    started = time.monotonic()
    stale = check_staleness(table)
    stale_seconds = time.monotonic() - started
    out = WORK / f"{path.stem}-here.json"
    result = recalibrate_here(table, out, samples=extra, show_progress=False)
    here = result.table
    space = load_space(table.meta["space"].get("source") or table.meta["space"]["name"])
    report = check_lut(here, space, CheckConfig(samples=samples, seed=seed), out=WORK / f"{path.stem}-here.check.json")
    measured = [row["measured"][f"{report.statistic}_ms"] for row in report.rows]
    specs = [ArchSpec.from_dict(row["arch"]) for row in report.rows]
    before = prediction_stats([table.predict_ms(spec) for spec in specs], measured)
    after = prediction_stats([here.predict_ms(spec) for spec in specs], measured)
    return {
        "table": str(path),
        "staleness": None if stale is None else {"change_percent": stale.change_percent, "stale": stale.stale, "seconds": round(stale_seconds, 2)},
        "recalibration_seconds": round(result.seconds, 1),
        "networks_timed": result.networks,
        "quality_warning": quality_warning(here),
        "held_out": len(measured),
        "before": before.to_dict(),
        "after": after.to_dict(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lut", type=Path, action="append", help="table(s) to recalibrate (default: every shipped table)")
    parser.add_argument("--samples", type=int, default=40, help="held-out random subnets besides the presets (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=9173, help="seed of the held-out subnets (default: %(default)s)")
    parser.add_argument("--extra", type=int, default=0, help="networks timed here besides the calibration networks (default: %(default)s)")
    args = parser.parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    rows = [_one(path, args.samples, args.seed, args.extra) for path in (args.lut or shipped_tables())]
    for row in rows:
        b, a = row["before"], row["after"]
        print(f"{Path(row['table']).name}: recalibrated in {row['recalibration_seconds']} s on {row['networks_timed']} networks; "
              f"{row['held_out']} held out: within ±5% {b['within_5']:.1f}% -> {a['within_5']:.1f}%, "
              f"MAPE {b['mape']:.2f}% -> {a['mape']:.2f}%, τ {a['kendall_tau']:.3f}")
    (WORK / "summary.json").write_text(json.dumps({"provenance": provenance(), "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
