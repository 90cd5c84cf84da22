"""The search: every strategy as trials of one Optuna study, resumable and shared by many workers.

A trial is one architecture (its spec JSON is the trial's ``arch`` user attribute), its predicted
latency on each table (``latency_ms``, and one Optuna constraint per budget: ``latency - limit``,
feasible when <= 0) and its accuracy (the objective; NSGA-II also minimises the latency on the
first table).

Scores are cached per architecture through the storage: a trial whose architecture already has a
complete trial reuses that score (``cached_from``) instead of evaluating again, and two workers that
draw the same architecture at the same time agree on one of them to evaluate it (see
:meth:`nas._workers.Worker.claim`). ``--trials`` counts evaluated architectures, study-wide.

Resume: rerunning the same command continues the study. A RUNNING trial whose process is gone
(same host: the process no longer exists; other hosts: no heartbeat for a minute) is marked FAIL
and its architecture queued again; complete trials are never evaluated again.
"""

from __future__ import annotations

import logging
import os
import random
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from rich.progress import Progress

from latency_lut import quality_warning, staleness_warning
from nas._params import params_from_spec, suggest_spec
from nas._slimming import SlimmingStep, slimming
from nas._storage import open_storage, safe_url, storage_url
from nas._workers import Worker
from nas.budget import Budget, BudgetRequest, resolve_budgets
from nas.evaluator import EvalConfig, Evaluator
from nas.results import CONSTRAINTS_LIST, TrialRecord, best_record, plot_pareto, trials_csv
from supernet.checkpoint import CheckpointInfo, load_supernet
from supernet.errors import ConfigError, EfnasError
from supernet.io import atomic_write_json, atomic_write_text, check_output_folder, console, progress_bar, provenance, torch_threads
from supernet.model import count_macs, count_params
from supernet.space import ArchSpec

__all__ = ["DEFAULT_TRIALS", "STRATEGIES", "SearchConfig", "SearchResult", "load_evaluator", "run_search"]

STRATEGIES = ("tpe", "nsga2", "random", "slimming")
DEFAULT_TRIALS = 100  # for the sampler strategies when --trials is not given
FORMAT = "efficientformer-nas/search/1"

_MAX_CACHED_IN_A_ROW = 200  # a sampler that only proposes evaluated architectures has exhausted the space


@dataclass(frozen=True, kw_only=True)
class SearchConfig:
    """One search. The defaults search the run folder of ``efnas train``'s default output."""

    supernet: str = "runs/supernet"  # supernet checkpoint, or the training run folder holding supernet.pt
    budgets: tuple[BudgetRequest, ...] = ()  # one per latency table; feasible means under all of them
    strategy: str = "tpe"  # tpe | nsga2 | random | slimming
    trials: int | None = None  # architectures to evaluate, study-wide; None: DEFAULT_TRIALS, slimming: until done
    seed: int = 0  # seed of the sampler (and of the first worker's; later workers derive theirs)
    out: str = "runs/search"  # run folder: study.db (default storage), best.json, trials.csv, pareto.png
    storage: str | None = None  # Optuna storage URL (e.g. postgresql://...) or SQLite file; default OUT/study.db
    study: str | None = None  # study name; default: the run folder's name
    data: str | None = None  # dataset argument; default: the one the supernet was trained on
    calib_batches: int = 8  # BatchNorm recalibration batches per architecture
    batch_size: int = 128
    val_subset: int | None = None  # score on this many validation images (seeded); None: all of them
    eval_seed: int = 0  # seed of the calibration batches and the validation subset
    population: int = 20  # NSGA-II population size
    startup_trials: int | None = None  # TPE's random trials before it models (Optuna's n_startup_trials); None: see below
    device: str = "cpu"  # cpu | cuda | auto
    threads: int | None = None  # intra-op CPU threads
    top: int = 10  # rows of the results table

    def __post_init__(self) -> None:
        object.__setattr__(self, "budgets", tuple(self.budgets))
        for name in ("supernet", "out", "storage", "data"):  # os.PathLike as well as str
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                object.__setattr__(self, name, os.fspath(value))
        if self.strategy not in STRATEGIES:
            raise ConfigError("strategy", f"must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        for name, lowest in (("trials", 1), ("population", 2), ("top", 1), ("threads", 1), ("seed", 0), ("startup_trials", 1)):
            value = getattr(self, name)
            if value is not None and value < lowest:
                raise ConfigError(name, f"must be at least {lowest}, got {value}")
        if self.device not in ("cpu", "cuda", "auto"):
            raise ConfigError("device", f"must be cpu, cuda or auto, got {self.device!r}")
        try:
            self.eval_config  # raises on bad settings
        except ConfigError as exc:
            raise exc.renamed({"seed": "eval_seed"}) from None

    @property
    def storage_url(self) -> str:
        return storage_url(self.storage or Path(self.out) / "study.db")

    @property
    def study_name(self) -> str:
        return self.study or Path(self.out).resolve().name

    @property
    def eval_config(self) -> EvalConfig:
        return EvalConfig(calib_batches=self.calib_batches, batch_size=self.batch_size, val_subset=self.val_subset, seed=self.eval_seed)

    @property
    def tpe_startup_trials(self) -> int:
        """TPE's random start: a quarter of the trials, at least 3 and at most Optuna's default 10.

        Optuna's fixed 10 makes any TPE search of 10 trials or fewer a random search, and one of 20
        half random; a quarter keeps three quarters of the budget for the model, and 3 is the
        fewest from which its good/bad split (the best ~10%, at least one) says anything."""
        if self.startup_trials is not None:
            return self.startup_trials
        return min(10, max(3, (self.target_trials or DEFAULT_TRIALS) // 4))

    @property
    def target_trials(self) -> int | None:
        """Evaluated architectures after which the search stops (None: slimming runs to its end)."""
        if self.trials is not None:
            return self.trials
        return None if self.strategy == "slimming" else DEFAULT_TRIALS


@dataclass
class SearchResult:
    """What a search (or the part of it this worker saw) produced."""

    study: str
    storage: str
    out: Path
    strategy: str
    budgets: list[dict[str, Any]]
    limits: dict[str, float]  # budget per latency table name
    records: list[TrialRecord]
    best: TrialRecord | None
    presets: dict[str, dict[str, Any]]
    evaluated: int  # architectures evaluated in the study
    added: int  # of which by this run of this worker
    finished: bool
    slimming_path: list[dict[str, Any]] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class _TrialBudgetSpent(Exception):
    """Raised inside the slimming when --trials architectures have been evaluated."""


def _sampler(config: SearchConfig, seed: int) -> optuna.samplers.BaseSampler:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if config.strategy == "tpe":
            # constant_liar: running trials of other workers count as bad, so workers spread out.
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True,
                                              n_startup_trials=config.tpe_startup_trials)
        if config.strategy == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=config.population)
        return optuna.samplers.RandomSampler(seed=seed)


@contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Optuna's INFO line per trial off (from the Python API as well as the CLI), restored after."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(max(level, logging.WARNING))
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


def _worker_seed(seed: int, worker_index: int) -> int:
    """The sampler seed of a worker: the study's own for the first, one derived from it for later ones."""
    return seed if worker_index == 0 else random.Random(f"{seed}:{worker_index}").randrange(2**31)


@contextmanager
def _proposing(study: optuna.Study, params: dict[str, Any]) -> Iterator[None]:
    """Inside the block the study's sampler proposes ``params``; after it the sampler is the study's own again."""
    sampler = study.sampler
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.sampler = optuna.samplers.PartialFixedSampler(params, sampler)
    try:
        yield
    finally:
        study.sampler = sampler


def _identity(config: SearchConfig, info: CheckpointInfo, digest: str, budgets: list[Budget], evaluator: Evaluator) -> dict[str, Any]:
    """What a study is: settings that change what its trials mean. Stored with the study; a rerun
    or another worker must match them."""
    return {
        "format": FORMAT,
        "strategy": config.strategy,
        "seed": config.seed,
        "population": config.population if config.strategy == "nsga2" else None,
        "budgets": [b.to_dict() for b in budgets],
        "evaluator": evaluator.describe(),
        "supernet": {
            "path": str(info.path),
            "step": info.step,
            "fingerprint": info.space.fingerprint(),
            "digest": digest,
        },
        "space": {"name": info.space.name, "fingerprint": info.space.fingerprint()},
        "objectives": ["accuracy"] + (["latency_ms:" + budgets[0].name] if config.strategy == "nsga2" else []),
    }


def _differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    def comparable(record: dict[str, Any]) -> dict[str, Any]:
        return {
            "strategy": record.get("strategy"),
            "seed": record.get("seed"),
            "population": record.get("population"),
            "budgets": [(b.get("lut_digest"), b.get("limit_ms"), b.get("preset")) for b in record.get("budgets", [])],
            "evaluator": {k: v for k, v in record.get("evaluator", {}).items() if k != "data"},
            "supernet": (record.get("supernet", {}).get("fingerprint"), record.get("supernet", {}).get("digest")),
        }

    old, new = comparable(stored), comparable(current)
    return [f"{key}: {old[key]} vs {new[key]}" for key in old if old[key] != new[key]]


@dataclass
class _Search:
    """This worker's part of a study: proposes, evaluates and records trials."""

    config: SearchConfig
    worker: Worker
    budgets: list[Budget]
    evaluator: Evaluator
    progress: Progress
    cached_in_a_row: int = field(default=0, init=False)
    exhausted: bool = field(default=False, init=False)  # the sampler proposes only evaluated architectures

    def __post_init__(self) -> None:
        self.study = self.worker.study
        self.space = self.evaluator.info.space
        self.target = self.config.target_trials
        self.task = self.progress.add_task(self.config.strategy, total=self.target)

    # -- reading the study ----------------------------------------------------------------------

    def trials(self, states: tuple[TrialState, ...] | None = None) -> list[FrozenTrial]:
        return self.worker.trials(states)

    @staticmethod
    def evaluated(trials: list[FrozenTrial]) -> int:
        return sum(1 for t in trials if t.state == TrialState.COMPLETE and t.user_attrs.get("evaluated"))

    @staticmethod
    def known_scores(trials: list[FrozenTrial]) -> dict[str, float]:
        """Accuracy per architecture JSON, from the complete trials."""
        scores: dict[str, float] = {}
        for t in trials:
            if t.state == TrialState.COMPLETE and "accuracy" in t.user_attrs and "arch" in t.user_attrs:
                scores.setdefault(t.user_attrs["arch"], float(t.user_attrs["accuracy"]))
        return scores

    def latency(self, spec: ArchSpec) -> dict[str, float]:
        return {b.name: b.latency_ms(spec) for b in self.budgets}

    # -- one trial ------------------------------------------------------------------------------

    def objective(self, trial: optuna.Trial, notes: Mapping[str, dict[str, Any]] = MappingProxyType({})) -> float | tuple[float, float]:
        """Score the trial's architecture; ``notes`` are what the slimming says of the architectures it asked for.

        Entered with the study lock held (see :meth:`step`); :meth:`Worker.claim` releases it once
        this trial's role is decided, so the evaluation itself runs unlocked."""
        spec = suggest_spec(trial, self.space)
        key = spec.to_json()
        latency = self.latency(spec)
        trial.set_user_attr("worker", self.worker.identity)
        trial.set_user_attr("arch", key)
        trial.set_user_attr("latency_ms", latency)
        for budget in self.budgets:
            trial.set_constraint(budget.constraint, latency[budget.name] - budget.limit_ms)
        # optuna-dashboard (0.21) reads feasibility from the list under "constraints" (the format
        # constraints_func writes), not from Optuna 5's per-key attributes: mirror them there.
        self.worker.set_trial_system_attr(trial, CONSTRAINTS_LIST, [latency[b.name] - b.limit_ms for b in self.budgets])
        if key in notes:
            trial.set_user_attr("note", notes[key])
        done = self.worker.claim(trial, key)
        if done is None:
            accuracy = self.evaluator.accuracy(spec)
            trial.set_user_attr("evaluated", True)
        else:
            accuracy = float(done.user_attrs["accuracy"])
            self.evaluator.remember(spec, accuracy)
            trial.set_user_attr("cached_from", done.number)
        trial.set_user_attr("accuracy", accuracy)
        if self.config.strategy == "nsga2":
            return accuracy, latency[self.budgets[0].name]
        return accuracy

    def step(self, objective: Callable[[optuna.Trial], Any]) -> bool:
        """Run one trial of ``objective`` if ``--trials`` leaves room for it; False (and no trial
        made) if the evaluations left are all taken by running trials."""
        self.worker.reap(throttled=True)
        with self.worker.lock.holding():
            if self.target is not None and not self.worker.room(self.target):
                return False
            self.study.optimize(objective, n_trials=1, callbacks=[self.after_trial], gc_after_trial=False)
        return True

    # -- progress and stopping ------------------------------------------------------------------

    def after_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state == TrialState.COMPLETE:
            self.cached_in_a_row = 0 if trial.user_attrs.get("evaluated") else self.cached_in_a_row + 1
        trials = self.trials()
        self.show(trials)
        self.record_best(trials)
        if self.target is not None and self.evaluated(trials) >= self.target:
            study.stop()
        if self.cached_in_a_row >= _MAX_CACHED_IN_A_ROW:
            self.exhausted = True
            study.stop()

    def record_best(self, trials: list[FrozenTrial]) -> None:
        """The best feasible trial as the study's user attribute ``best_feasible``: optuna-dashboard's
        "Best Trial" of a single-objective study is the highest value, feasible or not."""
        best = best_record(TrialRecord.from_trial(t) for t in trials if t.state == TrialState.COMPLETE)
        if best is None or best.spec is None or self.study.user_attrs.get("best_feasible", {}).get("trial") == best.number:
            return
        self.study.set_user_attr("best_feasible", {"trial": best.number, "accuracy": best.accuracy, "latency_ms": best.latency_ms,
                                                   "label": best.spec.label()})

    def show(self, trials: list[FrozenTrial], phase: str = "") -> None:
        best = best_record(TrialRecord.from_trial(t) for t in trials if t.state == TrialState.COMPLETE)
        what = f"best feasible {100 * best.accuracy:.2f}% at {best.latency_ms[self.budgets[0].name]:.4g} ms" if best else "no feasible trial yet"
        label = f"{self.config.strategy}{' ' + phase if phase else ''}: {what}"
        self.progress.update(self.task, completed=self.evaluated(trials), description=label)

    # -- strategies -----------------------------------------------------------------------------

    def run(self) -> tuple[list[SlimmingStep], bool, list[str]]:
        """Run this worker's part of the strategy: the slimming's decisions (if it is the slimming),
        whether the search is finished, and notes for the person running it."""
        if self.config.strategy == "slimming":
            return self.run_slimming()
        assert self.target is not None  # only the slimming runs without a trial budget
        while not self.exhausted and self.evaluated(self.trials()) < self.target:
            if not self.step(self.objective):
                # Other workers hold the last evaluations: wait for them to finish (or die, then
                # retry theirs) without making trials.
                self.worker.wait()
        if self.exhausted:
            return [], True, [f"the sampler proposed only evaluated architectures {_MAX_CACHED_IN_A_ROW} times in a row; stopped"]
        return [], self.target is not None and self.evaluated(self.trials()) >= self.target, []

    def scores(self, items: list[tuple[ArchSpec, dict[str, Any]]]) -> dict[ArchSpec, float]:
        """Accuracy of each spec: stored scores first, then one trial per missing architecture
        (architectures another worker is evaluating are waited for, not repeated)."""
        wanted = {spec.to_json(): spec for spec, _ in items}
        notes = {spec.to_json(): note for spec, note in items}
        keys = list(wanted)
        shift = self.worker.index % len(keys)  # workers of one study start at different candidates
        keys = keys[shift:] + keys[:shift]
        while True:
            trials = self.trials()
            known = self.known_scores(trials)
            missing = [k for k in keys if k not in known]
            if not missing:
                return {wanted[k]: known[k] for k in keys}
            busy = {t.user_attrs.get("arch") for t in trials if t.state == TrialState.RUNNING}
            free = [k for k in missing if k not in busy]
            if not free:
                self.worker.wait()
                continue
            if self.target is not None and self.evaluated(trials) >= self.target:
                raise _TrialBudgetSpent
            with _proposing(self.study, params_from_spec(self.space, wanted[free[0]])):
                started = self.step(partial(self.objective, notes=notes))
            if not started:
                self.worker.wait()

    def run_slimming(self) -> tuple[list[SlimmingStep], bool, list[str]]:
        """The slimming (or this worker's share of it) until it ends or the trial budget is spent."""
        path: list[SlimmingStep] = []

        def on_step(step: SlimmingStep) -> None:
            path.append(step)
            self.show(self.trials(), phase=f"{step.phase} {step.step}")

        limits = {b.name: b.limit_ms for b in self.budgets}
        try:
            slimming(self.space, self.latency, limits, self.scores, on_step)
            completed = True
        except _TrialBudgetSpent:
            completed = False
        if path:
            self.study.set_user_attr("slimming_path", [step.to_dict() for step in path])
        if completed:
            self.study.set_user_attr("slimming_finished", True)
            return path, True, []
        return path, False, [f"the trial budget ({self.config.trials}) ran out before the slimming ended; the best feasible trial so far is reported"]

    # -- references -----------------------------------------------------------------------------

    def presets(self) -> dict[str, dict[str, Any]]:
        """Each preset of the space scored and priced like a trial (kept with the study, not a trial)."""
        stored = dict(self.study.user_attrs.get("presets", {}))
        known = self.known_scores(self.trials())
        result = {}
        for name, spec in self.space.presets:
            latency = self.latency(spec)
            entry = stored.get(name)
            if entry is None or entry.get("arch") != spec.to_dict():
                accuracy = known.get(spec.to_json())
                entry = {"arch": spec.to_dict(), "accuracy": accuracy if accuracy is not None else self.evaluator.accuracy(spec)}
            result[name] = {**entry, "latency_ms": latency, "feasible": all(latency[b.name] <= b.limit_ms for b in self.budgets)}
        if result != stored:
            self.study.set_user_attr("presets", result)
        return result


def load_evaluator(config: SearchConfig, *, device: torch.device | str | None = None) -> Evaluator:
    """The supernet of ``config`` on ``device`` (default: the config's; under torchrun each rank's
    own, see :class:`supernet.distributed.Distributed`), wrapped in an evaluator with its settings."""
    if device is None:
        device = config.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
    supernet, info = load_supernet(config.supernet, device=device)
    return Evaluator(supernet, info, config.eval_config, data=config.data, device=device)


def _warn_if_unfinished(info: CheckpointInfo) -> None:
    if not info.finished:
        console.print(
            f"[yellow]warning:[/] supernet {info.path} is unfinished (step {info.step} of {info.total_steps}): its "
            "scores rank architectures less reliably; finish it with efnas train --resume", soft_wrap=True)


def _warn_about_tables(budgets: list[Budget], config: SearchConfig) -> None:
    """Repeat what each table knows about its own precision, and whether it was timed on this machine
    (the budget is in its milliseconds: a table of another machine searches under the wrong limit)."""
    for budget in budgets:
        copy = str(Path(config.out) / f"{budget.lut_path.stem}-here.json")
        for warning in (quality_warning(budget.lut), staleness_warning(budget.lut, copy_to=copy)):
            if warning:
                console.print(f"[yellow]warning:[/] {warning}", soft_wrap=True)


def _check_evaluator(evaluator: Evaluator, config: SearchConfig) -> None:
    checkpoint = evaluator.info.path.resolve()
    if Path(config.supernet).resolve() not in (checkpoint, checkpoint.parent):
        raise EfnasError(f"the evaluator scores {checkpoint}, but the search is for {config.supernet}")
    if evaluator.config != config.eval_config or (config.data is not None and config.data != evaluator.data_arg):
        raise EfnasError(f"the evaluator's settings {evaluator.describe()} differ from the search's {config.eval_config}")


def _open_study(config: SearchConfig, storage: optuna.storages.RDBStorage, identity: dict[str, Any]) -> optuna.Study:
    """The study of ``config`` in ``storage``, made if new; refused if it was made with other settings."""
    url = safe_url(config.storage_url)
    directions = ["maximize", "minimize"] if config.strategy == "nsga2" else ["maximize"]
    study = optuna.create_study(storage=storage, study_name=config.study_name, directions=directions, load_if_exists=True)
    stored = study.user_attrs.get("efnas")
    if stored is None:
        if study.get_trials(deepcopy=False):
            raise EfnasError(f"study '{config.study_name}' in {url} was not made by efnas search; choose another --study")
        study.set_user_attr("efnas", identity)
    elif stored.get("format") != FORMAT or (differences := _differences(stored, identity)):
        what = "; ".join(differences) if stored.get("format") == FORMAT else f"format {stored.get('format')}"
        raise EfnasError(
            f"study '{config.study_name}' in {url} was made with other settings ({what}); rerun with the "
            "study's settings to continue it, or choose another --study or --out"
        )
    if study.metric_names != identity["objectives"]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(identity["objectives"])  # the dashboard's and trials_dataframe's column names
    return study


def run_search(config: SearchConfig, *, evaluator: Evaluator | None = None, show_progress: bool = True) -> SearchResult:
    """Run (or continue) a search and write its results into ``config.out``.

    Safe to run from several processes or machines at once with the same storage and study name:
    they share the trials. Returns what the study holds when this worker stops. Searches of one
    supernet with the same scoring settings may share an ``evaluator`` (see :func:`load_evaluator`),
    and with it the scores it has cached.
    """
    check_output_folder(config.out)
    with torch_threads(config.threads), _quiet_optuna():
        if evaluator is None:
            evaluator = load_evaluator(config)
        else:
            _check_evaluator(evaluator, config)
        _warn_if_unfinished(evaluator.info)
        budgets = resolve_budgets(evaluator.info.space, config.budgets)
        _warn_about_tables(budgets, config)
        identity = _identity(config, evaluator.info, evaluator.supernet_digest, budgets, evaluator)
        Path(config.out).mkdir(parents=True, exist_ok=True)
        storage = open_storage(config.storage_url)
        worker = Worker.join(_open_study(config, storage, identity), storage)
        worker.study.sampler = _sampler(config, _worker_seed(config.seed, worker.index))

        with progress_bar(show=show_progress) as progress:
            search = _Search(config, worker, budgets, evaluator, progress)
            worker.reap()
            evaluated_before = search.evaluated(search.trials())
            search.show(search.trials())
            path, finished, notes = search.run()
            presets = search.presets()

        trials = search.trials()
        records = [TrialRecord.from_trial(t) for t in trials]
        result = SearchResult(
            study=config.study_name,
            storage=safe_url(config.storage_url),
            out=Path(config.out),
            strategy=config.strategy,
            budgets=[b.to_dict() for b in budgets],
            limits={b.name: b.limit_ms for b in budgets},
            records=records,
            best=best_record(records),
            presets=presets,
            evaluated=search.evaluated(trials),
            added=search.evaluated(trials) - evaluated_before,
            finished=finished,
            slimming_path=[step.to_dict() for step in path],
            notes=notes,
        )
        _write_results(result, config, evaluator, identity)
    return result


def _write_results(result: SearchResult, config: SearchConfig, evaluator: Evaluator, identity: dict[str, Any]) -> None:
    out = result.out
    names = list(result.limits)
    atomic_write_text(out / "trials.csv", trials_csv(result.records, names))
    result.files.append(out / "trials.csv")
    title = f"{result.study}: {result.strategy}, {result.evaluated} architectures evaluated"
    result.files.append(plot_pareto(result.records, out / "pareto.png", limits=result.limits, presets=result.presets, title=title))
    best_path = out / "best.json"
    if result.best is None:
        best_path.unlink(missing_ok=True)
        return
    best = result.best
    assert best.spec is not None
    atomic_write_json(best_path, {
        "arch": best.spec.to_dict(),
        "label": best.spec.label(),
        "accuracy": best.accuracy,
        "latency_ms": best.latency_ms,
        "trial": best.number,
        "study": result.study,
        "storage": result.storage,
        "supernet": str(evaluator.info.path),
        "strategy": result.strategy,
        "budgets": result.budgets,
        "params": count_params(best.spec),
        "macs": count_macs(best.spec),
        "evaluated": result.evaluated,
        "finished": result.finished,
        "evaluator": evaluator.describe(),
        "presets": result.presets,
        "search": {**asdict(config), "storage": None if config.storage is None else safe_url(config.storage)},
        "slimming_path": result.slimming_path,
        "supernet_digest": identity["supernet"]["digest"],
        "provenance": provenance(),
    })
    result.files.insert(0, best_path)
