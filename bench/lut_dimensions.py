"""Benchmark: latency tables at several thread counts and batch sizes, each checked on held-out networks (issue 12).

For every (threads, batch) pair: build a table of the space at those settings (``lut build
--threads T --batch B``, resumable), then ``lut check`` it on the presets and --samples random
subnets measured at the same settings. The check networks are the same for every pair (every
table draws the same calibration networks, and the check excludes exactly those), so the page also
shows what happens when a user serves at another batch or thread count with the 1-thread, batch-1
table: its predictions times the batch, against the networks measured at those settings.

Needs a quiet machine for the accuracy numbers (threads > 1 are timed on the wall clock, which a
busy machine inflates); on a busy one it still proves the machinery, and the page says the
numbers were taken under load.

    .venv/bin/python bench/lut_dimensions.py                                   # tiny, threads 1,2 x batch 1,8, 40 held out
    .venv/bin/python bench/lut_dimensions.py --space efficientformer-v1 --threads 1,2,4
    .venv/bin/python bench/lut_dimensions.py --quick --samples 4               # smoke run, seconds per table

Writes docs/benchmarks/lut_dimensions.{json,md}; tables and checks stay in runs/bench/lut_dimensions/.
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

from latency_lut import BuildConfig, CheckConfig, build_lut, check_lut, load_lut, prediction_stats  # noqa: E402
from supernet import ArchSpec, load_space  # noqa: E402
from supernet.errors import EfnasError  # noqa: E402
from supernet.io import atomic_write_json, atomic_write_text, console, provenance  # noqa: E402
from _load import OtherLoad, load_note  # noqa: E402  (bench/_load.py, beside this script)

WORK = ROOT / "runs" / "bench" / "lut_dimensions"
OUT = ROOT / "docs" / "benchmarks"
#: Build settings of --quick: enough to run every step, not to be accurate.
QUICK_BUILD = dict(rounds=3, warmup=1, retries=0, calibration_samples=3, calibration_rounds=2, calibration_runs=1, min_group_seconds=0.0)
QUICK_CHECK = dict(rounds=2, runs=1, min_group_seconds=0.0)


def _ints(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _one(space, space_arg: str, threads: int, batch: int, args: argparse.Namespace) -> dict:
    """Build and check the table at ``threads`` x ``batch``; its numbers and check rows."""
    name = f"{space.name}_t{threads}_b{batch}{'_quick' if args.quick else ''}"
    path = WORK / f"{name}.json"
    config = BuildConfig(threads=threads, batch=batch, seed=args.seed_build, **(QUICK_BUILD if args.quick else {}))
    started = time.monotonic()
    result = build_lut(space, path, config, space_arg=space_arg, show_progress=False)
    build_seconds = time.monotonic() - started
    if not result.complete:
        raise EfnasError(f"building {path} stopped early; run the benchmark again to continue")
    table = load_lut(path)
    check = CheckConfig(samples=args.samples, seed=args.seed, **(QUICK_CHECK if args.quick else {}))
    report = check_lut(table, space, check, out=WORK / f"{name}.check.json")
    calibration = table.calibration
    presets = {row["name"]: row for row in report.rows if row["preset"]}
    return {
        "threads": threads,
        "batch": batch,
        "table": str(path.relative_to(ROOT)),
        "units": len(table.entries),
        "build_seconds_this_run": round(build_seconds, 1),
        "build_seconds_total": table.meta.get("build_seconds"),
        "clock": table.meta["measurement"]["clock"],
        "context": table.meta["measurement"].get("context"),
        "loo_mape_percent": calibration.loo_mape if calibration else None,
        "quality": table.meta.get("quality"),
        "reference_ms": table.meta["reference"][f"{table.statistic}_ms"],
        "check_seconds": round(report.seconds, 1),
        "held_out": len(report.rows),
        "stats": report.stats().to_dict(),
        "stats_plain_sum": report.stats(calibrated=False).to_dict(),
        "presets": {
            preset: {"measured_ms": row["measured"][f"{report.statistic}_ms"], "predicted_ms": row["predicted_ms"],
                     "measured_ms_per_image": row["measured"][f"{report.statistic}_ms"] / batch}
            for preset, row in presets.items()
        },
        "rows": report.rows,
        "statistic": report.statistic,
    }


def _naive(base: dict, other: dict) -> dict | None:
    """The 1-thread, batch-1 table's predictions times the batch, against ``other``'s measurements
    of the same networks: what a user who ignores the dimensions would search with."""
    rows = other["rows"]
    if len(rows) < 2:
        return None
    base_table = load_lut(ROOT / base["table"])
    predicted = [base_table.predict_ms(ArchSpec.from_dict(row["arch"])) * other["batch"] for row in rows]
    return prediction_stats(predicted, [row["measured"][f"{other['statistic']}_ms"] for row in rows]).to_dict()


def _settings(values: dict) -> str:
    return ", ".join(f"{name} {value}" for name, value in values.items())


def _markdown(data: dict) -> str:
    prov = data["provenance"]
    lines = [
        "# Benchmark: latency tables at several thread counts and batch sizes",
        "",
        f"**Question** (issue 12): do tables built with `efnas lut build --threads T --batch B` predict networks measured "
        f"at those settings, so that a user serving on a multi-core box or in batches searches with the right numbers? "
        f"Space `{data['space']}`; every table is checked on the same {data['rows'][0]['held_out']} held-out networks "
        f"(the presets and {data['samples']} random subnets, seed {data['seed']}), measured at the table's own threads and batch.",
        "",
        load_note(data.get("other_cores"), data["cores"]),
        "",
        *(["**Quick settings** (`--quick`): few rounds per unit and network, to prove the machinery in seconds.", ""]
          if data["quick"] else []),
        "| threads | batch | within ±5% | within ±10% | MAPE | worst | Kendall τ | plain sum MAPE | LOO calibration error | "
        "1-thread batch-1 table × batch: MAPE | build s | check s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in data["rows"]:
        s, plain, naive = row["stats"], row["stats_plain_sum"], row.get("naive_scaling")
        loo = f"{row['loo_mape_percent']:.2f}%" if row["loo_mape_percent"] is not None else "—"
        lines.append(
            f"| {row['threads']} | {row['batch']} | {s['within_5']:.1f}% | {s['within_10']:.1f}% | {s['mape']:.2f}% | "
            f"{s['worst']:.2f}% | {s['kendall_tau']:.3f} | {plain['mape']:.2f}% | {loo} | "
            f"{'—' if naive is None else format(naive['mape'], '.1f') + '%'} | {row['build_seconds_total']:.0f} | {row['check_seconds']:.0f} |"
        )
    presets = sorted({name for row in data["rows"] for name in row["presets"]})
    if presets:
        lines += ["", "Measured latency of the presets per call (ms) and per image (ms / batch):", "",
                  "| threads | batch | " + " | ".join(presets) + " |", "|---|---|" + "---|" * len(presets)]
        for row in data["rows"]:
            cells = [f"{row['presets'][p]['measured_ms']:.3f} ({row['presets'][p]['measured_ms_per_image']:.3f})" for p in presets]
            lines.append(f"| {row['threads']} | {row['batch']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "A table's entries and predictions are milliseconds per call on a batch of its `meta.batch` images; a budget "
        "given to `efnas search` with such a table is per batch too.",
        "",
        "## How it was measured",
        "",
        f"- Build settings: {_settings(data['build_settings'])}; check settings: {_settings(data['check_settings'])}.",
        "- One thread is timed on the inference thread's CPU clock; more threads on the wall clock (the work is spread "
        "over threads, so one thread's CPU time would under-count it), which a busy machine inflates.",
        f"- Machine: {prov['machine']['cpu']}, {prov['machine']['cores']} cores ({prov['machine']['platform']}); versions: "
        + ", ".join(f"{k} {v}" for k, v in prov["versions"].items()) + ".",
        f"- Date: {prov['date']}; whole run {data['seconds']:.0f} s.",
        f"- Command: `{prov['command']}`",
        "",
        "Numbers: `lut_dimensions.json` (every network's architecture and measurement per table).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="tiny", help="built-in space or space file (default: %(default)s)")
    parser.add_argument("--threads", type=_ints, default=[1, 2], help="comma-separated thread counts (default: 1,2)")
    parser.add_argument("--batch", type=_ints, default=[1, 8], help="comma-separated batch sizes (default: 1,8)")
    parser.add_argument("--samples", type=int, default=40, help="held-out random subnets per table besides the presets (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=9173, help="seed of the held-out subnets (default: %(default)s)")
    parser.add_argument("--seed-build", type=int, default=0, help="seed of the tables' calibration networks (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="few rounds per unit and network: proves the machinery in seconds, not the accuracy")
    parser.add_argument("--out", type=Path, default=OUT, help="folder of lut_dimensions.{json,md} (default: docs/benchmarks)")
    args = parser.parse_args(argv)
    space = load_space(args.space)
    WORK.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    meter = OtherLoad()
    rows = []
    for threads in args.threads:
        for batch in args.batch:
            rows.append(_one(space, args.space, threads, batch, args))
            s = rows[-1]["stats"]
            console.print(f"threads {threads}, batch {batch}: {rows[-1]['held_out']} held out, within ±5% {s['within_5']:.1f}%, "
                          f"±10% {s['within_10']:.1f}%, MAPE {s['mape']:.2f}%, τ {s['kendall_tau']:.3f}")
    base = next((row for row in rows if row["threads"] == 1 and row["batch"] == 1), None)
    for row in rows:
        row["naive_scaling"] = None if base is None or row is base else _naive(base, row)
    defaults = dataclasses.asdict(BuildConfig())
    build_settings = {**{k: defaults[k] for k in QUICK_BUILD}, **(QUICK_BUILD if args.quick else {})}
    check_defaults = dataclasses.asdict(CheckConfig())
    check_settings = {**{k: check_defaults[k] for k in QUICK_CHECK}, **(QUICK_CHECK if args.quick else {})}
    data = {
        "space": space.name,
        "threads": args.threads,
        "batches": args.batch,
        "samples": args.samples,
        "seed": args.seed,
        "quick": args.quick,
        "build_settings": build_settings,
        "check_settings": check_settings,
        "cores": os.cpu_count(),
        "other_cores": meter.cores(),  # cores' worth of CPU other processes used (bench/_load.py)
        "seconds": round(time.monotonic() - started, 1),
        "provenance": provenance(),
        "rows": rows,
    }
    atomic_write_json(args.out / "lut_dimensions.json", data)
    atomic_write_text(args.out / "lut_dimensions.md", _markdown(data))
    console.print(f"wrote {args.out / 'lut_dimensions.json'} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
