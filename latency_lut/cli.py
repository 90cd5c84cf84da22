"""``efnas lut ...``: build, check, inspect and import latency tables; the Core ML path."""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

from rich.table import Table

from supernet.cli import DocFormatter
from supernet.cliconfig import ConfigFlags, Flag
from supernet.errors import EfnasError
from supernet.io import console, progress_lines
from supernet.space import load_arch, load_space

from latency_lut._table import in_installed_package

__all__ = ["build_flags", "check_flags", "register"]

_FORMAT = DocFormatter


def register(subparsers: argparse._SubParsersAction) -> None:
    lut = subparsers.add_parser(
        "lut",
        help="latency lookup tables: build one for your device, check it, use it, import Core ML timings",
        description=(
            "Latency lookup tables price every block of a search space on one device and backend, so "
            "that the search can predict a network's latency without running it. A table is a JSON "
            "file (see docs/latency_lut.md); the tool ships tables for the built-in spaces measured "
            "with onnxruntime on one CPU thread."
        ),
        formatter_class=_FORMAT,
        epilog=(
            "examples:\n"
            "  efnas lut build --space tiny --out tiny.json\n"
            "  efnas lut check --lut tiny.json --samples 50\n"
            "  efnas lut show tiny.json --preset L1\n"
            "  efnas lut calibrate --lut tiny.json\n"
            "  efnas lut recalibrate latency_lut/tables/tiny_onnxruntime-cpu1.json --out tiny-here.json\n"
            "  efnas lut coreml-bundle --space efficientformer-v1 --out bundle/\n"
            "  efnas lut measure-coreml bundle/ --device iphone --team ABCDE12345 --compute-plan   # on a Mac\n"
            "  efnas lut import --bundle bundle/ --results results.csv --device 'iPhone 12' --out iphone12.json"
        ),
    )
    commands = lut.add_subparsers(title="commands", metavar="COMMAND")

    def usage(args: argparse.Namespace) -> int:
        lut.print_help()
        return 2

    lut.set_defaults(func=usage)
    _add_build(commands)
    _add_check(commands)
    _add_calibrate(commands)
    _add_recalibrate(commands)
    _add_show(commands)
    _add_bundle(commands)
    _add_measure_coreml(commands)
    _add_import(commands)


# -- build -------------------------------------------------------------------------------------


def _add_build(commands: argparse._SubParsersAction) -> None:
    build = commands.add_parser(
        "build",
        help="measure every block of a space on this machine, then calibrate on whole networks",
        description=(
            "Measure every latency unit of a search space (stem, embeddings, Meta4D, Flat, Meta3D, "
            "head at each width, resolution and MLP ratio the space allows) as a standalone module, "
            "interleaved in rounds with warm-up, then measure a few random networks end to end and fit "
            "the calibration (a fixed overhead and one scale per block category). Everything is timed at "
            "--threads intra-op threads on inputs of --batch images, recorded in the table: a search with it "
            "prices milliseconds per call on a batch of that size. Progress is saved "
            "after every group of units: a build that is stopped or killed resumes when run again "
            "with the same --out, and a build into an existing table measures only the keys it lacks "
            "(e.g. the head for another class count with --num-classes). Run it on a quiet machine."
        ),
        formatter_class=_FORMAT,
        epilog=(
            "examples:\n"
            "  efnas lut build --space tiny --out tiny.json\n"
            "  efnas lut build --space efficientformer-v1 --out v1-ort.json --max-minutes 9   # run again to go on\n"
            "  efnas lut build --space tiny --num-classes 10 --out tiny.json   # adds the 10-class head keys\n"
            "  efnas lut build --space my_space.toml --backend torch --threads 4 --out mine.json\n"
            "  efnas lut build --space tiny --threads 2 --batch 8 --out tiny-2t-b8.json   # serving batches of 8 on 2 cores\n\n"
            "exit status: 0 when the table is complete, 3 when --max-minutes stopped it (run again), 2 on bad input"
        ),
    )
    build.add_argument("--space", required=True, help="built-in space name or a space file")
    build.add_argument("--out", required=True, type=Path, help="table file to write (resumed if it exists)")
    build_flags().add_arguments(build)
    build.add_argument("--no-progress", action="store_true", help="no progress bar: one log line per group of units or networks")
    build.set_defaults(func=_run_build)


@functools.cache
def build_flags() -> ConfigFlags:
    """The flags of ``efnas lut build`` besides --space and --out, for :class:`BuildConfig`."""
    from latency_lut._backends import BACKENDS
    from latency_lut._build import BuildConfig

    return ConfigFlags(BuildConfig, {
        "backend": Flag("where to measure (default: %(default)s)", choices=BACKENDS),
        "threads": Flag("intra-op CPU threads of the backend, for blocks and networks alike (default: %(default)s)"),
        "batch": Flag("images per call: every block and network is timed on inputs of this batch, and the table's "
                      "predictions are ms per batch (default: %(default)s)"),
        "num_classes": Flag("price the head for this class count instead of the space's"),
        "device": Flag("device name recorded in the table (default: the CPU or GPU model)"),
        "statistic": Flag("what entries and predictions stand for (default: %(default)s, the latency on an undisturbed machine)",
                          choices=("p10", "median")),
        "rounds": Flag("timed runs per unit (default: %(default)s)"),
        "calibration_samples": Flag("random networks measured end to end for the calibration (default: %(default)s)"),
        "calibration_passes": Flag("passes over the calibration networks, each network keeping its fastest; more passes "
                                   "outlast longer slow stretches of a shared machine (default: %(default)s)"),
        "min_group_seconds": Flag("time every group of units (and of calibration networks) at least this long, with more rounds "
                                  "for small ones (default: %(default)s)"),
        "seed": Flag("seed of the calibration networks and the run order (default: %(default)s)"),
        "max_minutes": Flag("stop after about this many minutes; run again to continue"),
        # Measurement details without flags: the defaults are what the shipped tables used.
        **dict.fromkeys(("warmup", "group_size", "max_spread", "retries", "calibration_rounds", "calibration_runs")),
    })


def _run_build(args: argparse.Namespace) -> int:
    from latency_lut._build import build_lut

    config, _ = build_flags().from_args(args)
    space = load_space(args.space)
    if in_installed_package(args.out):
        raise EfnasError(f"--out {args.out} lies inside the installed package; build into your run folder or current folder")
    result = build_lut(space, args.out, config, space_arg=args.space, show_progress=not args.no_progress)
    table = result.table
    console.print(
        f"{args.out}: {len(table.entries)} unit(s); this run measured {result.measured} and re-measured "
        f"{result.remeasured} noisy one(s) in {result.seconds:.0f} s (all runs so far: {table.meta['build_seconds']:.0f} s)"
    )
    if not result.complete:
        console.print("[yellow]stopped after --max-minutes; run the same command again to continue[/]")
        return 3
    _print_calibration(table)
    _print_warnings(table, stale=False)
    console.print(f"check it with: efnas lut check --lut {args.out}")
    return 0


def _print_warnings(table, stale: bool) -> None:
    """The table's quality warning, and with ``stale`` its staleness warning (times its reference
    network here, a few hundred ms), each one line."""
    from latency_lut._health import quality_warning, staleness_warning

    for warning in (quality_warning(table), staleness_warning(table) if stale else None):
        if warning:
            console.print(f"[yellow]warning: {warning}[/]", soft_wrap=True)


# -- check -------------------------------------------------------------------------------------


def _add_check(commands: argparse._SubParsersAction) -> None:
    check = commands.add_parser(
        "check",
        help="measure random subnets and the presets end to end and compare with the table's predictions",
        description=(
            "Measure the space's presets and N random subnets end to end on the table's backend, at its "
            "threads and on inputs of its batch (none "
            "of them a calibration network of the table) and print predicted vs measured: the share "
            "within ±5% and ±10%, mean absolute percentage error, worst case and Kendall's tau. The "
            "results go to a JSON file (saved as the check goes; a stopped check resumes) and a "
            "scatter plot PNG."
        ),
        formatter_class=_FORMAT,
        epilog=(
            "examples:\n"
            "  efnas lut check --lut tiny.json\n"
            "  efnas lut check --lut v1-ort.json --samples 100 --out v1-check.json --plot v1-check.png"
        ),
    )
    check.add_argument("--lut", required=True, type=Path, help="the table to check")
    check.add_argument("--space", help="the table's space (default: the one recorded in the table)")
    check_flags().add_arguments(check, names=("samples", "seed", "rounds"))
    check.add_argument("--out", type=Path, help="results JSON (default: next to the table, NAME.check.json)")
    check.add_argument("--plot", type=Path, help="scatter plot PNG (default: next to the results, .png)")
    check_flags().add_arguments(check, names=("max_minutes",))
    check.add_argument("--no-progress", action="store_true", help="log lines instead of a live progress bar")
    check.set_defaults(func=_run_check)


@functools.cache
def check_flags() -> ConfigFlags:
    """The flags of ``efnas lut check`` for :class:`CheckConfig`."""
    from latency_lut._check import CheckConfig

    return ConfigFlags(CheckConfig, {
        "samples": Flag("random subnets besides the presets (default: %(default)s)"),
        "seed": Flag("seed of the random subnets (default: %(default)s)"),
        "rounds": Flag("visits per network (default: %(default)s)"),
        "max_minutes": Flag("stop after about this many minutes; run again to continue"),
        **dict.fromkeys(("runs", "group_size", "min_group_seconds")),  # measurement details without flags
    })


def _run_check(args: argparse.Namespace) -> int:
    from latency_lut._check import check_lut, plot_check
    from latency_lut._table import load_lut

    lut = load_lut(args.lut)
    space = load_space(args.space or lut.meta["space"].get("source") or lut.meta["space"]["name"])
    out = args.out or args.lut.with_suffix(".check.json")
    plot = args.plot or out.with_suffix(".png")
    config, _ = check_flags().from_args(args)
    with progress_lines(enabled=args.no_progress):
        report = check_lut(lut, space, config, out=out)
    if not report.complete:
        console.print(f"[yellow]stopped after --max-minutes with {len(report.rows)} network(s) measured; run again to continue[/]")
        return 3
    _print_check(report)
    plot_check(report, plot, f"{space.name}: {lut.meta['device']}, {lut.backend}, {lut.threads} thread(s), batch {lut.batch}")
    console.print(f"results: {out}\nplot: {plot}")
    return 0


def _print_check(report) -> None:
    timed = report.measurement
    table = Table(title=f"predicted vs measured ({report.statistic} of runs, ms per call on a batch of {timed['batch']}, "
                        f"{timed['threads']} thread(s))")
    for column in ("network", "measured", "predicted", "error"):
        table.add_column(column, justify="left" if column == "network" else "right")
    for row in report.rows:
        if row["preset"]:
            table.add_row(row["name"], f"{row['measured'][report.statistic + '_ms']:.3f}", f"{row['predicted_ms']:.3f}", f"{row['error_percent']:+.2f}%")
    console.print(table)
    summary = Table(title=f"{len(report.rows)} held-out networks (the presets and random subnets)")
    for column in ("predictor", "within ±5%", "within ±10%", "MAPE", "worst", "Kendall τ"):
        summary.add_column(column, justify="left" if column == "predictor" else "right")
    for label, stats in (("table, calibrated", report.stats()), ("table, plain sum", report.stats(calibrated=False))):
        summary.add_row(label, f"{stats.within_5:.1f}%", f"{stats.within_10:.1f}%", f"{stats.mape:.2f}%", f"{stats.worst:.2f}%", f"{stats.kendall_tau:.3f}")
    console.print(summary)


# -- calibrate ---------------------------------------------------------------------------------


def _add_calibrate(commands: argparse._SubParsersAction) -> None:
    calibrate = commands.add_parser(
        "calibrate",
        help="fit a table's calibration again from the networks it already measured (measures nothing)",
        description=(
            "Fit the calibration of a table again on the whole networks stored in it (meta.calibration.models), "
            "for instance after editing entries by hand or after a tool update changed the fit. Nothing is "
            "measured; the table is rewritten in place. lut build calibrates by itself: a fresh table needs "
            "no extra step."
        ),
        formatter_class=_FORMAT,
        epilog="example:\n  efnas lut calibrate --lut latency_lut/tables/tiny_onnxruntime-cpu1.json",
    )
    calibrate.add_argument("--lut", required=True, type=Path, help="the table to calibrate again")
    calibrate.set_defaults(func=_run_calibrate)


def _run_calibrate(args: argparse.Namespace) -> int:
    from latency_lut._build import recalibrate
    from latency_lut._table import load_lut, save_lut

    table = recalibrate(load_lut(args.lut))
    save_lut(table, args.lut)
    _print_calibration(table)
    _print_warnings(table, stale=False)
    return 0


# -- recalibrate -------------------------------------------------------------------------------


def _add_recalibrate(commands: argparse._SubParsersAction) -> None:
    command = commands.add_parser(
        "recalibrate",
        help="adapt a table measured on another machine to this one in seconds (times only its calibration networks)",
        description=(
            "Time the table's calibration networks (and, with --samples, more random networks of its space), "
            "its reference network and that network's units on this machine, fit the calibration again on "
            "them, and write the result as a new table: the entries stay those of the machine that measured "
            "them, meta.recalibration records both machines. Seconds for tiny, under a minute for "
            "efficientformer-v1, against minutes for a full lut build. Use it when efnas warns that a table "
            "does not describe this machine; a table measured here with lut build is still the most exact."
        ),
        formatter_class=_FORMAT,
        epilog=(
            "examples:\n"
            "  efnas lut recalibrate latency_lut/tables/tiny_onnxruntime-cpu1.json --out tiny-here.json\n"
            "  efnas lut recalibrate v1-other-machine.json --out runs/v1-here.json --samples 12"
        ),
    )
    command.add_argument("table", type=Path, help="the table to adapt (left as it is)")
    command.add_argument("--out", required=True, type=Path, help="the new table file")
    command.add_argument("--samples", type=int, default=0, help="random networks to time besides the table's calibration networks (default: %(default)s)")
    command.add_argument("--rounds", type=int, default=8, help="visits per network (default: %(default)s)")
    command.add_argument("--no-progress", action="store_true", help="no progress bar")
    command.set_defaults(func=_run_recalibrate)


def _run_recalibrate(args: argparse.Namespace) -> int:
    from latency_lut._recalibrate import recalibrate_here
    from latency_lut._table import load_lut

    with progress_lines(enabled=args.no_progress):
        result = recalibrate_here(load_lut(args.table), args.out, samples=args.samples, rounds=args.rounds)
    table = result.table
    ratio = ", ".join(f"{name} {value:.2f}x" for name, value in table.meta["recalibration"]["unit_ratio"].items())
    console.print(f"{args.out}: calibrated for {table.meta['device']} on {result.networks} network(s) timed here in "
                  f"{result.seconds:.0f} s", soft_wrap=True)
    if ratio:
        console.print(f"the reference network's units run here at {ratio} of their entries", soft_wrap=True)
    _print_calibration(table)
    _print_warnings(table, stale=False)
    return 0


def _print_calibration(table) -> None:
    calibration = table.calibration
    if calibration is None:
        console.print("no calibration: predictions are the plain sum of the units")
        return
    scales = ", ".join(f"{name} {value:.3f}" for name, value in calibration.scales.items())
    loo = f", leave-one-out {calibration.loo_mape:.2f}%" if calibration.loo_mape is not None else ""
    console.print(
        f"calibration on {len(calibration.models)} network(s): overhead {calibration.overhead_ms:.3f} ms, "
        f"scales {scales}; mean absolute error of the fit {calibration.fit_mape:.2f}%{loo}"
    )


# -- show --------------------------------------------------------------------------------------


def _add_show(commands: argparse._SubParsersAction) -> None:
    show = commands.add_parser(
        "show",
        help="describe a table; with --arch or --preset, price an architecture unit by unit",
        description=(
            "Print what a table is (device, backend, space, how and when it was measured, its "
            "calibration). With --arch FILE or --preset NAME, list the units of that architecture with "
            "their entries and the predicted latency."
        ),
        formatter_class=_FORMAT,
        epilog="examples:\n  efnas lut show latency_lut/tables/tiny_onnxruntime-cpu1.json\n  efnas lut show v1.json --preset L1\n  efnas lut show v1.json --arch best.json",
    )
    show.add_argument("lut", type=Path, help="table file")
    which = show.add_mutually_exclusive_group()
    which.add_argument("--arch", type=Path, help="architecture JSON to price")
    which.add_argument("--preset", help="preset of the table's space to price")
    show.add_argument("--no-stale-check", action="store_true",
                      help="do not time the table's reference network to tell whether it describes this machine")
    show.set_defaults(func=_run_show)


def _shown_spec(args: argparse.Namespace, meta: dict):
    """The architecture to price, checked against the table's space first: a hand-written depth
    of 1e9 would otherwise be listed block by block."""
    from latency_lut._table import MAX_BLOCKS

    space_meta = meta["space"]
    if args.preset:
        space = load_space(space_meta.get("source") or space_meta["name"])
        return space.with_num_classes(space_meta.get("num_classes", space.num_classes)).preset(args.preset)
    spec = load_arch(args.arch)
    try:
        space = load_space(space_meta.get("source") or space_meta["name"])
    except EfnasError:
        space = None  # a space file that moved: the table's fingerprint still guards the keys
    if space is not None and space.fingerprint() == space_meta["fingerprint"]:
        return space.with_num_classes(spec.num_classes).validate(spec)
    if sum(spec.depths) > MAX_BLOCKS:
        raise EfnasError(f"architecture {args.arch} has {sum(spec.depths)} blocks; a latency table prices at most {MAX_BLOCKS}")
    return spec


def _print_compute_plan(meta: dict) -> None:
    """Where Core ML placed each unit's operations (``measure-coreml --compute-plan``): the share of
    operations on the Neural Engine, the GPU and the CPU, and of Core ML's estimated time where it
    gives one, the slowest units first."""
    plan = meta.get("compute_plan")
    if not isinstance(plan, dict) or not plan:
        return
    devices = ("neural_engine", "gpu", "cpu")
    table = Table(title="Core ML compute plan: share of each unit's operations (and of its estimated time) per device")
    for column in ("unit", "ms", "ops", "Neural Engine", "GPU", "CPU"):
        table.add_column(column, justify="left" if column == "unit" else "right")

    def share(value) -> str:
        return f"{100 * value:.0f}%" if isinstance(value, (int, float)) else "?"

    def ms(shares) -> float | None:
        value = shares.get("ms")
        return value if isinstance(value, (int, float)) else None

    rows = [(key, shares) for key, shares in plan.items() if isinstance(shares, dict)]  # skip hand-edited junk
    for key, shares in sorted(rows, key=lambda row: ms(row[1]) or -1.0, reverse=True):
        cost = shares.get("cost") if isinstance(shares.get("cost"), dict) else None
        cells = [share(shares.get(device)) + (f" ({share(cost.get(device))})" if cost else "") for device in devices]
        table.add_row(key, f"{ms(shares):.3f}" if ms(shares) is not None else "", str(shares.get("operations", "")), *cells)
    console.print(table)


def _run_show(args: argparse.Namespace) -> int:
    from latency_lut._keys import op_keys
    from latency_lut._table import load_lut

    lut = load_lut(args.lut)
    meta = lut.meta
    console.print(f"[bold]{args.lut}[/]: {lut.describe()}")
    console.print(f"{len(lut.entries)} unit(s), {meta['source']}, entries are the {lut.statistic} of the runs")
    console.print(f"entries and predictions are ms per call on a batch of {lut.batch} image(s)"
                  + (f" (divide by {lut.batch} for the throughput cost of one image)" if lut.batch > 1 else ""))
    prov = meta.get("provenance") or {}
    if prov:
        console.print(f"made {prov.get('date')} on {prov.get('machine', {}).get('hostname')} by: {prov.get('command')}")
    recalibration = meta.get("recalibration")
    if recalibration:
        console.print(f"recalibrated for {meta['device']} on {recalibration['provenance']['date']}; entries measured on "
                      f"{recalibration['entries_measured_on'].get('device')}")
    _print_calibration(lut)
    _print_compute_plan(meta)
    _print_warnings(lut, stale=not args.no_stale_check)
    if not (args.arch or args.preset):
        return 0
    spec = _shown_spec(args, meta)
    table = Table(title=spec.label())
    for column in ("unit", "count", "entry ms", "total ms"):
        table.add_column(column, justify="left" if column == "unit" else "right")
    for key, count in op_keys(spec):
        entry = lut.entries.get(key)
        value = entry.value(lut.statistic) if entry else None
        table.add_row(key, str(count), f"{value:.4f}" if entry else "[red]missing[/]", f"{value * count:.4f}" if entry else "")
    console.print(table)
    per = f" per batch of {lut.batch}" if lut.batch > 1 else ""
    console.print(f"sum {lut.predict_ms(spec, calibrated=False):.3f} ms; predicted (calibrated) {lut.predict_ms(spec):.3f} ms{per}")
    return 0


# -- Core ML -----------------------------------------------------------------------------------


def _add_bundle(commands: argparse._SubParsersAction) -> None:
    bundle = commands.add_parser(
        "coreml-bundle",
        help="convert every block of a space (and calibration networks) to Core ML packages for timing on Apple devices",
        description=(
            "Write one Core ML package (ML Program, fp16, traced with torch.jit.trace and converted "
            "with coremltools) per latency unit of the space, the calibration networks as whole "
            "models, and manifest.json listing every package with its input and output shapes. Time "
            "the packages on the device (efnas lut measure-coreml on a Mac, for the Mac or a connected "
            "iPhone, or an app of your own / Xcode's performance report), then turn the timings into a table with "
            "efnas lut import. Works on any OS; an existing bundle is completed, not rewritten."
        ),
        formatter_class=_FORMAT,
        epilog=(
            "examples:\n"
            "  efnas lut coreml-bundle --space efficientformer-v1 --out bundle-v1/\n"
            "  efnas lut coreml-bundle --space tiny --out bundle-tiny/ --keys stem:w16:r32,head:w64:r1:c37"
        ),
    )
    bundle.add_argument("--space", required=True, help="built-in space name or a space file")
    bundle.add_argument("--out", required=True, type=Path, help="bundle folder")
    bundle.add_argument("--keys", help="comma-separated unit keys to convert instead of the whole space")
    bundle.add_argument("--num-classes", type=int, help="class count of the head and networks (default: the space's)")
    bundle.add_argument("--calibration-samples", type=int, default=12, help="random networks for the calibration (default: %(default)s)")
    bundle.add_argument("--seed", type=int, default=0, help="seed of the calibration networks (default: %(default)s)")
    bundle.set_defaults(func=_run_bundle)


def _run_bundle(args: argparse.Namespace) -> int:
    from latency_lut._coreml import write_bundle

    space = load_space(args.space)
    if args.num_classes:
        space = space.with_num_classes(args.num_classes)
    keys = [key.strip() for key in args.keys.split(",") if key.strip()] if args.keys else None
    manifest = write_bundle(
        space, args.out, keys=keys, calibration_samples=args.calibration_samples, seed=args.seed, space_arg=args.space
    )
    console.print(
        f"{args.out}: {len(manifest['units'])} unit package(s) and {len(manifest['models'])} network(s) in "
        f"{manifest['seconds']:.0f} s; time them on the device, then: efnas lut import --bundle {args.out} "
        "--results RESULTS.csv --device NAME --out TABLE.json"
    )
    return 0


def _add_measure_coreml(commands: argparse._SubParsersAction) -> None:
    from latency_lut._coreml import COMPUTE_UNITS

    measure = commands.add_parser(
        "measure-coreml",
        help="time a Core ML bundle on this Mac or a connected iPhone with coremltools' benchmarker (macOS only)",
        description=(
            "Time every package of a bundle with coremltools' MLModelBenchmarker, on this Mac (--device mac) "
            "or on a connected iPhone (--device iphone, or the device's name): coremltools builds its own "
            "model-runner app with Xcode, installs it on the phone and runs the predictions there. Each "
            "package gets --warmup untimed and --runs timed predictions per compute-unit setting (median, "
            "p10, p90), written to the results CSV that efnas lut import reads, rewritten after every "
            "package: a stopped run continues where it was, packages already in the CSV are not timed "
            "again. --compute-plan also records, per package, the share of its operations that Core ML "
            "places on the Neural Engine, the GPU and the CPU (NAME.compute-plan.json beside the CSV); lut "
            "import puts it into the table and lut show prints it. Needs macOS 14.4 or later; on other "
            "systems this command says so and stops. Written against coremltools 9.0's source; not yet run "
            "on Apple hardware."
        ),
        formatter_class=_FORMAT,
        epilog=(
            "examples:\n"
            "  efnas lut measure-coreml bundle-v1/\n"
            "  efnas lut measure-coreml bundle-v1/ --device iphone --team ABCDE12345 --compute-plan --out iphone.csv\n"
            "  efnas lut measure-coreml bundle-v1/ --device \"Ana's iPhone\" --compute-units ALL,CPU_ONLY\n"
            "  efnas lut measure-coreml bundle-v1/ --compute-units ALL,CPU_ONLY --out m1.csv"
        ),
    )
    measure.add_argument("bundle", type=Path, help="bundle folder written by efnas lut coreml-bundle")
    measure.add_argument("--device", default="mac",
                         help="mac (this Mac, the default), iphone (the one connected iPhone) or a device name as "
                              "'xcrun devicectl list devices' shows it")
    measure.add_argument("--compute-units", default="ALL", help=f"comma-separated, from {', '.join(COMPUTE_UNITS)} (default: %(default)s)")
    measure.add_argument("--runs", type=int, default=50, help="timed predictions per package (default: %(default)s)")
    measure.add_argument("--warmup", type=int, default=5, help="untimed predictions before them (default: %(default)s)")
    measure.add_argument("--compute-plan", action="store_true",
                         help="also record where Core ML places each package's operations (Neural Engine, GPU, CPU)")
    measure.add_argument("--team", help="Apple development team ID that signs coremltools' model-runner app for a phone")
    measure.add_argument("--out", type=Path, help="results CSV (default: BUNDLE/results.csv; resumed if it exists)")
    measure.add_argument("--no-progress", action="store_true", help="no progress bar")
    measure.set_defaults(func=_run_measure_coreml)


def _run_measure_coreml(args: argparse.Namespace) -> int:
    from latency_lut._apple import measure_bundle

    units = [unit.strip() for unit in args.compute_units.split(",") if unit.strip()]
    result = measure_bundle(args.bundle, out=args.out, device=args.device, compute_units=units, runs=args.runs,
                            warmup=args.warmup, compute_plan=args.compute_plan, team=args.team,
                            show_progress=not args.no_progress)
    console.print(f"{result.csv}: timed {result.timed} package(s) on {result.device}, {result.skipped} already there"
                  + (f"; compute plan of {result.planned} in {result.compute_plan}" if result.compute_plan else ""), soft_wrap=True)
    units_flag = f" --compute-units {units[0]}" if len(units) > 1 else ""
    console.print(f"make the table with: efnas lut import --bundle {args.bundle} --results {result.csv} "
                  f"--device '{result.device}'{units_flag} --out TABLE.json", soft_wrap=True)
    return 0


def _add_import(commands: argparse._SubParsersAction) -> None:
    imp = commands.add_parser(
        "import",
        help="turn timings of a Core ML bundle measured on a device into a latency table",
        description=(
            "Read a bundle's manifest and a results CSV (columns name, median_ms and optionally "
            "p10_ms, p90_ms, runs, compute_units; name is a unit key or model:NAME for a calibration "
            "network) and write a latency table for the device. If the CSV times at least two "
            "calibration networks, the table is calibrated on them."
        ),
        formatter_class=_FORMAT,
        epilog="example:\n  efnas lut import --bundle bundle-v1/ --results iphone12.csv --device 'iPhone 12' --out iphone12.json",
    )
    imp.add_argument("--bundle", required=True, type=Path, help="bundle folder (its manifest.json)")
    imp.add_argument("--results", required=True, type=Path, help="results CSV")
    imp.add_argument("--device", required=True, help="device name recorded in the table, e.g. 'iPhone 12'")
    imp.add_argument("--out", required=True, type=Path, help="table file to write")
    imp.add_argument("--compute-units", help="which rows to use when the CSV has several compute units")
    imp.add_argument("--compute-plan", type=Path,
                     help="compute plan of measure-coreml --compute-plan (default: RESULTS.compute-plan.json beside the CSV, if there)")
    imp.set_defaults(func=_run_import)


def _run_import(args: argparse.Namespace) -> int:
    from latency_lut._coreml import compute_plan_path, import_results

    if args.out.exists() and args.out.resolve() == args.results.resolve():
        raise EfnasError("--out must not be the results file")
    plan = args.compute_plan
    if plan is None and compute_plan_path(args.results).exists():
        plan = compute_plan_path(args.results)
    table = import_results(args.bundle, args.results, args.device, args.out, args.compute_units, compute_plan=plan)
    planned = f"; compute plan of {len(table.meta['compute_plan'])} unit(s) from {plan}" if plan is not None else ""
    console.print(f"{args.out}: {len(table.entries)} unit(s) for {args.device}; "
                  f"{'calibrated' if table.calibration else 'not calibrated'}{planned}", soft_wrap=True)
    _print_warnings(table, stale=False)
    return 0
