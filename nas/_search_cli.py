"""``efnas search`` and ``efnas batch``: the search's command line."""

from __future__ import annotations

import argparse
import logging
import textwrap
from pathlib import Path

import optuna
from rich.table import Table

from nas.batch import EXAMPLE_FILE, load_batch, run_batch, summary_table
from nas.budget import BudgetRequest, budget_requests, parse_milliseconds
from nas._storage import safe_url
from nas.evaluator import Evaluator
from nas.results import closest_to_budget, results_table
from nas.study import DEFAULT_TRIALS, STRATEGIES, SearchConfig, SearchResult, load_evaluator, run_search
from supernet.cli import DocFormatter
from supernet.cliconfig import ConfigFlags, Custom, Flag
from supernet.distributed import Distributed, torchrun_world_size
from supernet.errors import ConfigError, EfnasError
from supernet.io import console, progress_lines, torch_threads

__all__ = ["SEARCH_FLAGS", "print_result", "register_batch", "register_search"]

SEARCH_DESCRIPTION = """\
Search a trained supernet for the most accurate architecture under one or more latency budgets.
Every architecture tried is a trial of one Optuna study: its score is the top-1 on the validation
split with weights inherited from the supernet (after BatchNorm recalibration on a few training
batches), its cost the latency predicted by each latency table. An architecture is feasible only
under every budget.

Strategies: tpe (Optuna's TPE, latency as a constraint), nsga2 (accuracy vs latency, a Pareto
front), random (the baseline), slimming (EfficientFormer's greedy search: shrink the largest
network by the action that loses the least accuracy per millisecond saved until it is under
budget, then grow back while budget remains).

Budgets pair up with tables in order: --lut A --budget L1 --lut B --budget-ms 2.5. Without --lut
the table shipped for the supernet's space is used. A preset budget (L1, L3, L7) is the preset's
own predicted latency on that table.

The study lives in --storage (default: OUT/study.db, SQLite). Rerunning the same command continues
it: completed trials are kept, trials of a killed run are retried. Any number of workers on any
machines may run the same command against one PostgreSQL storage (postgresql://user@host/db) and
share the work; give the password through ~/.pgpass or PGPASSFILE, not in the URL (a password in
the URL is masked as *** in everything the search prints or writes). Watch a study with
optuna-dashboard STORAGE.

Under torchrun --nproc-per-node N on one machine it is one search whose every score is shared
over the N processes (one GPU each with --device cuda, gloo on the CPU otherwise): rank 0 runs the
search, prints and writes; the other ranks only score with it.

Exit status: 0 with a feasible architecture, 1 when the search ended without one (the closest
trial and its excess over the budget are printed), 2 for bad input.

Writes OUT/best.json (the best feasible architecture: `efnas export` reads it), OUT/trials.csv and
OUT/pareto.png, and prints the best architectures beside the presets.
"""

SEARCH_EXAMPLES = """\
examples:
  efnas search --supernet runs/tiny --budget L1 --out runs/search-l1
  efnas search --supernet runs/tiny --lut tiny.json --budget-ms 0.08 --strategy slimming --out runs/slim
  efnas search --supernet runs/tiny --strategy nsga2 --trials 200 --budget L3 --out runs/nsga2
  efnas search --supernet runs/v1 --lut cpu.json --budget L1 --lut iphone12.json --budget-ms 1.6
  efnas search --supernet runs/tiny --budget L3 --val-subset 2000 --out runs/quick   # faster scoring
  # two workers (run the same command on each machine):
  efnas search --supernet runs/v1 --budget L3 --storage postgresql://efnas@db-host/efnas --study v1-l3
  # one search, each score shared over the 8 GPUs of this machine:
  torchrun --standalone --nproc-per-node 8 -m nas.cli search --supernet runs/v1 --budget L3 --device cuda --out runs/v1-l3
  optuna-dashboard sqlite:///runs/search-l1/study.db
"""


class _BudgetAction(argparse.Action):
    """Collects --budget and --budget-ms in the order given, so they pair up with --lut."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values, option_string=None) -> None:
        items = list(getattr(namespace, "budget_items", None) or [])
        items.append(float(values) if self.dest == "budget_ms" else values)
        namespace.budget_items = items


def _milliseconds(text: str) -> float:
    try:
        return parse_milliseconds(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(exc.problem) from None


def _add_budget_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lut", action="append", default=[], metavar="FILE", help="latency table; repeat for several devices (default: the shipped one)")
    parser.add_argument("--budget", action=_BudgetAction, metavar="PRESET", help="budget: this preset's own predicted latency on the table (L1, L3, L7)")
    parser.add_argument("--budget-ms", action=_BudgetAction, type=_milliseconds, metavar="MS", help="budget in milliseconds of predicted latency")
    parser.set_defaults(budget_items=None)


def _budget_argv(budgets: tuple[BudgetRequest, ...]) -> list[str]:
    argv: list[str] = []
    for budget in budgets:
        argv += ["--lut", budget.lut] if budget.lut is not None else []
        argv += ["--budget", budget.preset] if budget.preset is not None else ["--budget-ms", repr(budget.ms)]
    return argv


_BUDGETS = Custom(
    flags="--budget",
    add=_add_budget_flags,
    read=lambda args: budget_requests(args.lut, args.budget_items or []),
    argv=_budget_argv,
)

SEARCH_FLAGS = ConfigFlags(SearchConfig, {
    "supernet": Flag("supernet checkpoint or training run folder (default: %(default)s)"),
    "budgets": _BUDGETS,
    "strategy": Flag("search strategy (default: %(default)s)", choices=STRATEGIES),
    "trials": Flag(f"architectures to evaluate, study-wide (default: {DEFAULT_TRIALS}; slimming: until it ends)"),
    "seed": Flag("sampler seed (default: %(default)s)"),
    "out": Flag("run folder for the study database and the results (default: %(default)s)"),
    "storage": Flag("Optuna storage URL (sqlite:///..., postgresql://...) or an SQLite file (default: OUT/study.db)"),
    "study": Flag("study name (default: the run folder's name)"),
    "data": Flag("dataset argument (default: the one the supernet was trained on)"),
    "calib_batches": Flag("training batches for the BatchNorm recalibration (default: %(default)s)"),
    "batch_size": Flag("batch size of calibration and validation (default: %(default)s)"),
    "val_subset": Flag("score on this many validation images (a fixed, seeded subset; default: all)"),
    "eval_seed": Flag("seed of the calibration batches and the validation subset (default: %(default)s)"),
    "population": Flag("NSGA-II population size (default: %(default)s)"),
    "startup_trials": Flag("TPE: random trials before it models the results (Optuna's n_startup_trials; default: a quarter of --trials, 3 to 10)"),
    "device": Flag("where to evaluate (default: %(default)s)", choices=("cpu", "cuda", "auto")),
    "threads": Flag("intra-op CPU threads (default: torch's choice)"),
    "top": Flag("rows of the results table (default: %(default)s)"),
})
"""The flags of ``efnas search``, one per field of :class:`SearchConfig`."""


def register_search(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "search",
        help="search a trained supernet for the best architecture under latency budgets (TPE, NSGA-II, random, slimming)",
        description=SEARCH_DESCRIPTION,
        formatter_class=DocFormatter,
        epilog=SEARCH_EXAMPLES,
    )
    SEARCH_FLAGS.add_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no live progress bar: a log line per tenth of --trials instead, as when the output is not a terminal")
    parser.set_defaults(func=_run_search)


NOT_FOUND_EXIT = 1  # the search ran but no architecture is under the budget
ERROR_EXIT = 2  # the input was bad: nas.cli.main's status for an EfnasError


def _run_search(args: argparse.Namespace) -> int:
    optuna.logging.set_verbosity(logging.WARNING)
    config, _ = SEARCH_FLAGS.from_args(args)
    if torchrun_world_size() > 1:
        return _run_shared_search(config, args.no_progress)
    return _search_and_print(config, args.no_progress)


def _search_and_print(config: SearchConfig, no_progress: bool, evaluator: Evaluator | None = None) -> int:
    with progress_lines(enabled=no_progress):
        result = run_search(config, evaluator=evaluator)
    print_result(result, top=config.top)
    return 0 if result.best is not None else NOT_FOUND_EXIT


def _run_shared_search(config: SearchConfig, no_progress: bool) -> int:
    """Under torchrun: one search, each architecture scored by every rank together on its own
    device. Rank 0 runs the search as a single process would; the others only score with it,
    print nothing and end with rank 0's exit status."""
    ddp = Distributed(config.device, config.threads)
    evaluator = load_evaluator(config, device=ddp.device)
    if ddp.is_main:
        status = ERROR_EXIT  # what the other ranks end with if the search raises
        try:
            status = _search_and_print(config, no_progress, evaluator)
        finally:
            evaluator.release(status)
    else:
        with torch_threads(config.threads):  # as run_search sets them on rank 0
            status = evaluator.serve()
    ddp.close()
    return status


def print_result(result: SearchResult, top: int = 10) -> None:
    """The results table, the slimming's decisions, notes and the files written."""
    budgets = ", ".join(
        f"{b['preset']} = {b['limit_ms']:.4g} ms" if b["preset"] else f"{b['limit_ms']:.4g} ms" for b in result.budgets
    )
    title = f"Study '{result.study}' ({result.strategy}, budget {budgets}): {result.evaluated} architectures evaluated"
    console.print(results_table(result.records, list(result.limits), top=top, presets=result.presets, title=title))
    if result.slimming_path:
        table = Table(title="Slimming decisions")
        for column in ("phase", "step", "action", "architecture", "top-1", *(f"{n} ms" for n in result.limits)):
            table.add_column(column, justify="right" if column in ("step", "top-1") or column.endswith(" ms") else "left")
        for step in result.slimming_path:
            table.add_row(step["phase"], str(step["step"]), step["action"], step["label"], f"{100 * step['accuracy']:.2f}%",
                          *(f"{step['latency_ms'][n]:.4g}" for n in result.limits))
        console.print(table)
    for note in result.notes:
        console.print(f"[yellow]{note}[/]")
    if result.best is None:
        console.print(f"[red]no feasible architecture[/]: {closest_to_budget(result.records, result.limits)}; "
                      "run more trials (--trials) or raise the budget; no best.json written", soft_wrap=True)
    console.print(f"storage: {safe_url(result.storage)} (study '{result.study}')", soft_wrap=True)
    for path in result.files:
        console.print(f"wrote {path}")


# -- batch ---------------------------------------------------------------------------------------

BATCH_DESCRIPTION = """\
Run several searches described in one TOML file: shared settings in [defaults], one [[search]]
table per search (name, lut, budget, strategy, trials, seed, and any other `efnas search`
setting). Each search writes into OUT/NAME/ (OUT is the file's `out`, default runs/FILE-NAME).
Finished searches are skipped, partial ones resumed, so running a batch again only does what is
left. Every search's settings and budgets are checked before the first one runs. Exit status 1
when a search found no feasible architecture (its status is "not found"). Ends with a summary table (also OUT/summary.json and OUT/summary.csv): each search's budget,
best accuracy and latency and, for preset budgets, the preset's own accuracy and latency.

A budget is a preset name (budget = "L1") or milliseconds (budget = 2.5); lut and budget may be
lists that pair up in order. Relative paths are relative to the current folder.
"""

BATCH_EXAMPLES = """\
examples:
  efnas batch examples/budget_sweep.toml
  efnas batch examples/regenerate_l1_l3_l7.toml --only L3-slimming

file format:
""" + textwrap.indent(EXAMPLE_FILE, "  ")


def register_batch(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "batch",
        help="run the searches of a TOML batch file (skips finished ones, resumes partial ones)",
        description=BATCH_DESCRIPTION,
        formatter_class=DocFormatter,
        epilog=BATCH_EXAMPLES,
    )
    parser.add_argument("file", type=Path, help="batch file (TOML)")
    parser.add_argument("--only", action="append", metavar="NAME", help="run only this search (repeatable)")
    parser.add_argument("--no-progress", action="store_true", help="no live progress bars: log lines instead, as when the output is not a terminal")
    parser.set_defaults(func=_run_batch)


def _run_batch(args: argparse.Namespace) -> int:
    if torchrun_world_size() > 1:
        # Each rank would run every search of the batch on its own, all into the same folders.
        raise EfnasError("efnas batch runs as one process, not under torchrun; run it alone, or run its searches one by one under torchrun")
    optuna.logging.set_verbosity(logging.WARNING)
    batch = load_batch(args.file)
    with progress_lines(enabled=args.no_progress):
        rows = run_batch(batch, only=args.only)
    console.print(summary_table(rows, title=f"Batch {args.file}"))
    console.print(f"wrote {batch.out / 'summary.json'} and {batch.out / 'summary.csv'}", soft_wrap=True)
    missing = [row.name for row in rows if row.status == "not found"]
    if missing:
        console.print(f"[red]not found[/]: no feasible architecture in {', '.join(missing)}; raise the budget or run more trials", soft_wrap=True)
        return NOT_FOUND_EXIT
    return 0
