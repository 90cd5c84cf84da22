"""The whole pipeline in one command, on the embedded data: ``efnas demo``.

Train the tiny space's supernet (skipped when a finished one is already in the run folder), take
the shipped latency table of that space on this CPU (or measure one with ``--measure``), search
under a budget with TPE and with the paper's slimming, export the better winner in every format,
and end with one summary. Each step first prints the ``efnas`` command that does the same by hand.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.panel import Panel
from rich.table import Table

from latency_lut import BuildConfig, build_lut, load_lut, predict_ms, shipped_lut
from nas.budget import BudgetRequest
from nas.export import ExportConfig, ExportResult, export_subnet
from nas.study import SearchConfig, SearchResult, load_evaluator, run_search
from supernet.checkpoint import load_checkpoint
from supernet.errors import EfnasError
from supernet.io import console
from supernet.train import TrainConfig, train

__all__ = ["DemoConfig", "DemoResult", "run_demo"]


@dataclass(frozen=True)
class DemoConfig:
    """The demo's settings; the defaults finish in a few minutes on two CPU cores."""

    out: str = "runs/demo"  # everything goes under this folder
    space: str = "tiny"
    data: str = "digits-mosaic"
    # 8 epochs of 15,000 fresh mosaics: ~3.5 min on two cores. This is "the demo's training
    # budget" that docs/benchmarks/task_separability.md gives every stand-alone subnet too.
    epochs: int = 8
    steps_per_epoch: int | None = None  # cap on the steps of each epoch (quick trials)
    budget: str = "L1"  # a preset of the space (its predicted latency) or a number of milliseconds
    trials: int = 40  # architectures evaluated by the TPE search (the slimming runs to its end)
    val_subset: int | None = 2000  # validation images that score an architecture during the search
    measure: bool = False  # measure a latency table here instead of using the shipped one
    seed: int = 0
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise EfnasError(f"--trials must be at least 1, got {self.trials}")

    def budget_request(self, lut: str) -> BudgetRequest:
        try:
            return BudgetRequest(lut=lut, ms=float(self.budget))
        except ValueError:
            return BudgetRequest(lut=lut, preset=self.budget)


@dataclass
class DemoResult:
    supernet: Path
    lut: Path
    searches: dict[str, SearchResult]
    export: ExportResult
    winner: str  # which search found the exported architecture
    commands: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def _step(title: str, command: list[str], commands: list[str]) -> None:
    line = shlex.join(command)
    commands.append(line)
    console.rule(f"[bold]{title}")
    console.print(f"[dim]same as:[/dim] [cyan]{line}[/cyan]")


def run_demo(config: DemoConfig, *, show_progress: bool = True) -> DemoResult:
    """Run the pipeline; every artefact lands under ``config.out``."""
    out = Path(config.out)
    commands: list[str] = []
    seconds: dict[str, float] = {}
    threads = [] if config.threads is None else ["--threads", str(config.threads)]

    # 1. The supernet, trained once: a finished checkpoint is reused, a killed run resumed.
    started = time.perf_counter()
    run_dir = out / "supernet"
    train_config = TrainConfig(
        space=config.space,
        data=config.data,
        out=str(run_dir),
        seed=config.seed,
        threads=config.threads,
        epochs=config.epochs,
        **({"steps_per_epoch": config.steps_per_epoch} if config.steps_per_epoch is not None else {}),
    )
    command = ["efnas", "train", "--space", config.space, "--data", config.data, "--epochs", str(config.epochs), "--out", str(run_dir), *threads]
    if config.steps_per_epoch is not None:
        command += ["--steps-per-epoch", str(config.steps_per_epoch)]
    _step("1/4 train the supernet once", command, commands)
    checkpoint = run_dir / "supernet.pt"
    if checkpoint.exists() and load_checkpoint(checkpoint).get("finished"):
        console.print(f"a finished supernet is already in {checkpoint}: training skipped (delete the folder to retrain)")
    else:
        resume = checkpoint.exists()
        if resume:
            console.print(f"continuing the interrupted training in {run_dir}")
        train(train_config, resume=resume, explicit=_given(config), show_progress=show_progress)
    info = load_checkpoint(checkpoint)
    space = info["space"]
    seconds["train"] = time.perf_counter() - started

    # 2. The latency table.
    started = time.perf_counter()
    if config.measure:
        lut_path = out / f"{space.name}_lut.json"
        _step("2/4 measure a latency table on this machine", ["efnas", "lut", "build", "--space", config.space, "--out", str(lut_path)], commands)
        build_lut(space, lut_path, BuildConfig(), space_arg=config.space)
    else:
        shipped = shipped_lut(space)
        if shipped is None:
            raise EfnasError(f"no latency table is shipped for space '{space.name}'; run the demo with --measure to build one here")
        lut_path = shipped
        _step("2/4 use the shipped latency table", ["efnas", "lut", "show", str(lut_path)], commands)
        lut = load_lut(lut_path)
        console.print(f"{lut_path.name}: measured on {lut.meta.get('device')} with {lut.meta.get('backend')}, {lut.meta.get('threads')} thread(s)")
    seconds["lut"] = time.perf_counter() - started

    # 3. Search under the budget with TPE and with slimming; one evaluator scores both (shared cache).
    started = time.perf_counter()
    searches: dict[str, SearchResult] = {}
    evaluator = None
    for strategy in ("tpe", "slimming"):
        search_out = out / f"search-{strategy}"
        # Slimming runs to its end: stopped early it is still above the budget with nothing to show.
        trials = config.trials if strategy == "tpe" else None
        search = SearchConfig(
            supernet=str(checkpoint),
            budgets=(config.budget_request(str(lut_path)),),
            strategy=strategy,
            trials=trials,
            seed=config.seed,
            out=str(search_out),
            val_subset=config.val_subset,
            threads=config.threads,
            top=5,
        )
        budget_flag = ["--budget-ms", config.budget] if search.budgets[0].ms is not None else ["--budget", config.budget]
        command = ["efnas", "search", "--supernet", str(checkpoint), "--lut", str(lut_path), *budget_flag,
                   "--strategy", strategy, *(["--trials", str(trials)] if trials else []), "--out", str(search_out), *threads]
        if config.val_subset is not None:
            command += ["--val-subset", str(config.val_subset)]
        _step(f"3/4 search under the budget: {strategy}", command, commands)
        if evaluator is None:
            evaluator = load_evaluator(search)
        searches[strategy] = run_search(search, evaluator=evaluator, show_progress=show_progress)
    seconds["search"] = time.perf_counter() - started

    found = {name: result.best for name, result in searches.items() if result.best is not None}
    if not found:
        raise EfnasError(f"no architecture under the budget {config.budget} was found; raise --budget or --trials")
    winner = max(found, key=lambda name: (found[name].accuracy, -min(found[name].latency_ms.values())))

    # 4. Export the winner in every format, checked against the supernet.
    started = time.perf_counter()
    export_out = out / "export"
    best_json = out / f"search-{winner}" / "best.json"
    _step("4/4 export the winner", ["efnas", "export", "--supernet", str(checkpoint), "--arch", str(best_json), "--out", str(export_out), "--force", *threads], commands)
    exported = export_subnet(
        ExportConfig(supernet=str(checkpoint), out=str(export_out), arch=str(best_json), force=True, luts=(str(lut_path),), seed=config.seed, threads=config.threads),
        show_progress=show_progress,
    )
    seconds["export"] = time.perf_counter() - started

    result = DemoResult(checkpoint, Path(lut_path), searches, exported, winner, commands, seconds)
    _print_summary(result, info, config)
    return result


def _given(config: DemoConfig) -> set[str]:
    return {"epochs"} | ({"steps_per_epoch"} if config.steps_per_epoch is not None else set())


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _print_summary(result: DemoResult, info: dict[str, Any], config: DemoConfig) -> None:
    metrics = info.get("metrics", {})
    space = info["space"]
    lut = load_lut(result.lut)
    record = result.export.record
    winner = result.searches[result.winner].best
    comparison = record["latency"].get("cpu_comparison") or {}
    onnx = record["formats"].get("onnx", {}).get("checks", {})

    table = Table(title="efnas demo — summary", show_header=False, title_style="bold")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("supernet", f"{result.supernet} ({info['step']} steps on {info['data'].get('name')})")
    table.add_row("  largest subnet", f"{space.largest().label()}: val top-1 {_percent(metrics.get('val_top1_largest'))}")
    table.add_row("  smallest subnet", f"{space.smallest().label()}: val top-1 {_percent(metrics.get('val_top1_smallest'))}")
    limit = next(iter(result.searches[result.winner].limits.values()))
    table.add_row("latency table", f"{result.lut} ({lut.meta.get('backend')}, {lut.meta.get('threads')} thread, {lut.meta.get('device')})")
    table.add_row("budget", f"{config.budget} = {limit:.3f} ms predicted")
    for name, search in result.searches.items():
        best = search.best
        text = "nothing feasible" if best is None else f"{best.spec.label()}: {_percent(best.accuracy)}, {min(best.latency_ms.values()):.3f} ms ({search.evaluated} architectures evaluated)"
        table.add_row(f"  best by {name}", text)
    table.add_row("winner", f"{winner.spec.label()} (from {result.winner})")
    table.add_row("  accuracy", f"{_percent(record['metrics'].get('val_top1'))} on the full validation split after BN recalibration")
    table.add_row("  latency", f"predicted {predict_ms(winner.spec, lut):.3f} ms; measured here {comparison.get('measured_ms', float('nan')):.3f} ms "
                  f"(onnxruntime, 1 thread; ratio {comparison.get('ratio', float('nan')):.3f})")
    table.add_row("  ONNX check", f"max |Δ| vs PyTorch {onnx.get('max_abs_diff', float('nan')):.1e}; extraction vs supernet {record['supernet']['extraction_max_abs_diff']:.1e}")
    table.add_row("files", ", ".join(f"{f.name}" for f in result.export.files) + f" in {result.export.out}")
    table.add_row("time", ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items()))
    console.print(table)
    console.print(Panel("\n".join(result.commands), title="to go on by hand", expand=False))
