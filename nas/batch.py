"""Batch searches: many searches described in one TOML file, run (or continued) in one command.

The file format is :data:`EXAMPLE_FILE` (also in ``efnas batch --help``). Every other key is a
setting of :class:`nas.study.SearchConfig` (as on the command line, with underscores), checked
by SearchConfig itself. Each search resumes its own study, so a batch run again does only what is
left.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from nas.budget import budget_items, budget_requests, resolve_budgets
from nas.evaluator import Evaluator
from nas.study import SearchConfig, SearchResult, load_evaluator, run_search
from supernet.checkpoint import load_checkpoint
from supernet.cliconfig import check_type
from supernet.errors import ConfigError, EfnasError, read_user_data
from supernet.io import atomic_write_json, atomic_write_text, console, provenance

__all__ = ["EXAMPLE_FILE", "Batch", "BatchEntry", "BatchRow", "load_batch", "run_batch", "summary_table"]

EXAMPLE_FILE = """\
out = "runs/sweep"            # batch folder (default: runs/<file name>)

[defaults]                    # shared by every search unless it sets the key itself
supernet = "runs/supernet"
strategy = "tpe"
trials = 60

[[search]]
name = "l1"                   # folder OUT/l1/, and the study name
budget = "L1"                 # a preset name, or milliseconds: budget = 2.5

[[search]]
name = "cpu-and-phone"
lut = ["cpu.json", "iphone12.json"]
budget = [2.0, 1.6]           # pairs up with lut in order
"""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# Every field of SearchConfig is a key, except those the batch sets itself (out, from the file's
# out and the search's name) and budgets, which a batch file writes as lut and budget (read by
# nas.budget, as the command line's --lut/--budget are). Types come from SearchConfig's fields
# (check_type), bounds from SearchConfig itself: nothing of its schema is repeated here.
_BUDGET_KEYS = ("lut", "budget")
_SETTINGS = sorted({f.name for f in dataclasses.fields(SearchConfig)} - {"budgets", "out", "study"} | set(_BUDGET_KEYS))
_SEARCH_ONLY = ["name", "study"]
_TOP_LEVEL = ("out", "defaults", "search")


@dataclass(frozen=True)
class BatchEntry:
    name: str
    config: SearchConfig
    where: str = ""  # how errors name the entry: "FILE: [[search]] #2 ('l1')"


@dataclass(frozen=True)
class Batch:
    path: Path
    out: Path
    entries: tuple[BatchEntry, ...]


@dataclass(frozen=True)
class BatchRow:
    """One line of a batch summary."""

    name: str
    strategy: str
    budget: str
    status: str  # "done"; "partial" (the trial budget ran out, or another worker is still at it); "not found" (no feasible architecture)
    evaluated: int
    added: int
    best_label: str | None
    best_accuracy: float | None
    best_latency_ms: dict[str, float]
    preset: str | None
    preset_accuracy: float | None
    preset_latency_ms: dict[str, float]
    out: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _check_value(key: str, value: Any) -> None:
    """Raise :class:`ConfigError` unless ``value`` fits ``key``: SearchConfig's type for its fields
    (its bounds SearchConfig checks itself), a table or a budget, or a list of them, for lut and budget."""
    if key in _BUDGET_KEYS:
        budget_items(key, value)
    else:
        check_type(SearchConfig, "study" if key == "name" else key, value)


def _check_table(where: str, table: Any, allowed: list[str]) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise EfnasError(f"{where} must be a table")
    for key, value in table.items():
        if key not in allowed:
            raise EfnasError(f"{where}: unknown key '{key}'; known keys are {', '.join(sorted(allowed))}")
        try:
            _check_value(key, value)
        except ConfigError as exc:
            raise EfnasError(f"{where}: key '{key}' {exc.problem}") from None
    return table


def load_batch(path: str | Path) -> Batch:
    """Read and validate a batch file; every problem is a one-line :class:`EfnasError` naming the
    table and the key."""
    path = Path(path)
    data = read_user_data(path, "batch file", format="toml")
    unknown = sorted(set(data) - set(_TOP_LEVEL))
    if unknown:
        raise EfnasError(f"{path}: unknown top-level key '{unknown[0]}'; known keys are out, [defaults] and [[search]]")
    out = data.get("out", f"runs/{path.stem}")
    if not isinstance(out, str) or not out:
        raise EfnasError(f"{path}: key 'out' must be a folder name, got {out!r}")
    defaults = _check_table(f"{path}: [defaults]", data.get("defaults", {}), _SETTINGS)
    searches = data.get("search")
    if not isinstance(searches, list) or not searches:
        raise EfnasError(f"{path}: no searches: add at least one [[search]] table with a name and a budget")
    entries: list[BatchEntry] = []
    for number, raw in enumerate(searches, 1):
        where = f"{path}: [[search]] #{number}"
        if isinstance(raw, dict) and isinstance(raw.get("name"), str):
            where += f" ('{raw['name']}')"
        table = _check_table(where, raw, [*_SETTINGS, *_SEARCH_ONLY])
        name = table.get("name")
        if name is None:
            raise EfnasError(f"{where}: missing key 'name'")
        if not _NAME.match(name):
            raise EfnasError(f"{where}: key 'name' must be a folder name (letters, digits, '.', '_', '-'), got {name!r}")
        if any(entry.name == name for entry in entries):
            raise EfnasError(f"{where}: key 'name' repeats the name of an earlier search ('{name}')")
        settings = {**defaults, **table}
        if "budget" not in settings:
            raise EfnasError(f"{where}: missing key 'budget' (a preset name like \"L1\" or milliseconds), here or in [defaults]")
        entries.append(BatchEntry(name, _search_config(where, settings, Path(out) / name), where))
    return Batch(path, Path(out), tuple(entries))


def _search_config(where: str, settings: dict[str, Any], out: Path) -> SearchConfig:
    """The search of one [[search]] table (with [defaults]), checked by SearchConfig itself."""
    settings = dict(settings)
    name = settings.pop("name")
    try:
        requests = budget_requests(settings.pop("lut", None), settings.pop("budget"))
        return SearchConfig(budgets=requests, out=str(out), study=settings.pop("study", name), **settings)
    except ConfigError as exc:
        raise EfnasError(f"{where}: key '{exc.field}' {exc.problem}") from None
    except EfnasError as exc:
        raise EfnasError(f"{where}: {exc}") from None


def _row(name: str, result: SearchResult) -> BatchRow:
    best = result.best
    preset = next((b["preset"] for b in result.budgets if b["preset"]), None)
    reference = result.presets.get(preset, {}) if preset else {}
    budget = ", ".join(
        (f"{b['preset']} ({b['limit_ms']:.4g} ms)" if b["preset"] else f"{b['limit_ms']:.4g} ms") + f" on {b['lut']}"
        for b in result.budgets
    )
    return BatchRow(
        name=name,
        strategy=result.strategy,
        budget=budget,
        status="not found" if best is None else "done" if result.finished else "partial",
        evaluated=result.evaluated,
        added=result.added,
        best_label=best.spec.label() if best and best.spec else None,
        best_accuracy=best.accuracy if best else None,
        best_latency_ms=best.latency_ms if best else {},
        preset=preset,
        preset_accuracy=reference.get("accuracy"),
        preset_latency_ms=reference.get("latency_ms", {}),
        out=str(result.out),
    )


def run_batch(batch: Batch, *, only: Sequence[str] | None = None, show_progress: bool = True) -> list[BatchRow]:
    """Run (or continue) each search of ``batch``; writes ``summary.json`` and ``summary.csv``
    into the batch folder and returns the summary rows."""
    entries = list(batch.entries)
    if only:
        unknown = sorted(set(only) - {entry.name for entry in entries})
        if unknown:
            raise EfnasError(f"{batch.path} has no search named {', '.join(unknown)}; its searches are {', '.join(e.name for e in entries)}")
        entries = [entry for entry in entries if entry.name in only]
    rows = []
    # Searches of one supernet with the same scoring settings share an evaluator, and so each
    # other's scores: a sweep of budgets evaluates an architecture once.
    evaluators: dict[tuple[Any, ...], Evaluator] = {}
    for entry in entries:
        c = entry.config
        key = (str(Path(c.supernet).resolve()), c.eval_config, c.data, c.device)
        if key not in evaluators:
            evaluators[key] = _named(entry, load_evaluator, c)
    _check_budgets(batch.entries, {k[0]: e.info.space for k, e in evaluators.items()})
    for entry in entries:
        if show_progress:
            console.rule(f"{entry.name}: {entry.config.strategy}")
        c = entry.config
        evaluator = evaluators[(str(Path(c.supernet).resolve()), c.eval_config, c.data, c.device)]
        rows.append(_row(entry.name, run_search(c, evaluator=evaluator, show_progress=show_progress)))
    atomic_write_json(batch.out / "summary.json", {"batch": str(batch.path), "searches": [r.to_dict() for r in rows], "provenance": provenance()})
    atomic_write_text(batch.out / "summary.csv", _summary_csv(rows))
    return rows


def _named(entry: BatchEntry, function: Any, *args: Any) -> Any:
    """``function(*args)``, its one-line error prefixed with the entry it is about."""
    try:
        return function(*args)
    except EfnasError as exc:
        raise EfnasError(f"{entry.where or entry.name}: {exc}") from None


def _check_budgets(entries: Sequence[BatchEntry], spaces: dict[str, Any]) -> None:
    """Every entry's budgets resolved (tables load, presets exist, limits reachable) before the
    first search runs: a typo in the last entry must not surface after hours of the others."""
    for entry in entries:
        supernet = str(Path(entry.config.supernet).resolve())
        if supernet not in spaces:
            spaces[supernet] = _named(entry, lambda path: load_checkpoint(path)["space"], entry.config.supernet)
        _named(entry, resolve_budgets, spaces[supernet], entry.config.budgets)


def _summary_csv(rows: Sequence[BatchRow]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["name", "strategy", "budget", "status", "evaluated", "best_architecture", "best_accuracy",
                     "best_latency_ms", "preset", "preset_accuracy", "preset_latency_ms", "out"])
    for r in rows:
        writer.writerow([
            r.name, r.strategy, r.budget, r.status, r.evaluated, r.best_label or "",
            "" if r.best_accuracy is None else f"{r.best_accuracy:.6f}",
            ";".join(f"{k}={v:.6f}" for k, v in r.best_latency_ms.items()),
            r.preset or "", "" if r.preset_accuracy is None else f"{r.preset_accuracy:.6f}",
            ";".join(f"{k}={v:.6f}" for k, v in r.preset_latency_ms.items()), r.out,
        ])
    return buffer.getvalue()


def summary_table(rows: Sequence[BatchRow], title: str = "") -> Table:
    """A rich table of a batch: budget, best accuracy and latency, and the preset's for preset budgets."""
    table = Table(title=title or None)
    for column in ("search", "strategy", "budget", "status", "trials", "best top-1", "best latency", "preset top-1", "preset latency", "architecture"):
        table.add_column(column, justify="right" if column in ("trials", "best top-1", "preset top-1") else "left")

    def latency(values: dict[str, float]) -> str:
        return ", ".join(f"{v:.4g} ms" for v in values.values()) or "-"

    for r in rows:
        table.add_row(
            r.name,
            r.strategy,
            r.budget,
            r.status,
            f"{r.evaluated} (+{r.added})",
            f"{100 * r.best_accuracy:.2f}%" if r.best_accuracy is not None else "-",
            latency(r.best_latency_ms),
            f"{100 * r.preset_accuracy:.2f}%" if r.preset_accuracy is not None else "-",
            latency(r.preset_latency_ms),
            r.best_label or "-",
        )
    return table
