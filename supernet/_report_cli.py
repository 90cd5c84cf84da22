"""``efnas supernet-report``: how healthy a trained supernet is, before a search trusts it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.table import Table

from supernet.io import atomic_write_json, console

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    from supernet.cli import DocFormatter

    parser = subparsers.add_parser(
        "supernet-report",
        help="inherited accuracy of a supernet's subnets, and its gap to stand-alone training",
        description=(
            "Score a trained supernet's largest and smallest subnets, the space's presets and seeded random "
            "subnets with inherited weights (BatchNorm recalibrated, the whole validation split). Given "
            "stand-alone results (--standalone), also the gap between inherited and stand-alone top-1 and the "
            "Kendall tau between the two orders, with a warning when the supernet is not fit to rank or to "
            "report accuracies. Writes report.json beside the checkpoint."
        ),
        formatter_class=DocFormatter,
        epilog=(
            "examples:\n"
            "  efnas supernet-report runs/demo/supernet\n"
            "  efnas supernet-report runs/demo/supernet --standalone docs/benchmarks/task_separability.json"
        ),
    )
    parser.add_argument("supernet", help="a run folder or its supernet.pt")
    parser.add_argument("--standalone", default=None,
                        help="JSON of stand-alone results: a list of {\"arch\": ..., \"top1\": percent}, or bench/task_separability.py's output")
    parser.add_argument("--random", type=int, default=5, help="seeded random subnets to score (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random subnets and the BN calibration batches (default: %(default)s)")
    parser.add_argument("--calib-batches", type=int, default=8, help="training batches for BatchNorm recalibration (default: %(default)s)")
    parser.add_argument("--out", default=None, help="where to write the report (default: report.json in the run folder)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from supernet.report import load_standalone, supernet_report

    standalone = load_standalone(args.standalone) if args.standalone else None
    report = supernet_report(args.supernet, num_random=args.random, standalone=standalone, seed=args.seed,
                             calib_batches=args.calib_batches)
    out = Path(args.out) if args.out else Path(report.checkpoint).parent / "report.json"
    atomic_write_json(out, report.to_dict())
    if args.json:
        console.print_json(json.dumps(report.to_dict()))
        return 0
    table = Table(title=f"Supernet {report.checkpoint} — {report.step} of {report.total_steps} steps")
    for column in ("subnet", "architecture", "params", "inherited top-1", "stand-alone", "gap"):
        table.add_column(column, justify="left" if column in ("subnet", "architecture") else "right")
    for s in report.scores:
        table.add_row(s.name, s.spec.label(), f"{s.params:,}", f"{s.inherited_top1:.2f}%",
                      "-" if s.standalone_top1 is None else f"{s.standalone_top1:.2f}%",
                      "-" if s.gap is None else f"{s.gap:+.2f}")
    console.print(table)
    if report.median_gap is not None:
        tau = report.kendall_tau
        console.print(f"{len(report.compared)} subnets with stand-alone results: median gap {report.median_gap:.2f} pts"
                      + (f", Kendall tau {tau:.3f}" if tau is not None else ""))
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    console.print(f"wrote {out}")
    return 0
