"""The search: every strategy as trials of one Optuna study, resumable and shared by many workers.

A trial is one architecture (its spec JSON is the trial's ``arch`` user attribute), its predicted
latency on each table (``latency_ms``, and one Optuna constraint per budget: ``latency - limit``,
feasible when <= 0) and its accuracy (the objective; NSGA-II also minimises the latency on the
first table).

Scores are cached per architecture through the storage: a trial whose architecture already has a
complete trial reuses that score (``cached_from``) instead of evaluating again, and two workers that
draw the same architecture at the same time agree on one of them to evaluate it (see
:meth:`_Search._claim`). ``--trials`` counts evaluated architectures, study-wide.

Resume: rerunning the same command continues the study. A RUNNING trial whose process is gone
(same host: the process no longer exists; other hosts: no heartbeat for a minute) is marked FAIL
and its architecture queued again; complete trials are never evaluated again.
"""

from __future__ import annotations

import os
import random
import socket
import sqlite3
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from nas._params import params_from_spec, suggest_spec
from nas._slimming import SlimmingStep, slimming
from nas.budget import Budget, BudgetRequest, resolve_budgets
from nas.evaluator import EvalConfig, Evaluator
from nas.results import TrialRecord, best_record, plot_pareto, storage_url, trials_csv
from supernet.checkpoint import CheckpointInfo, load_supernet
from supernet.errors import EfnasError
from supernet.io import atomic_write_json, atomic_write_text, console, provenance
from supernet.model import count_macs, count_params
from supernet.space import ArchSpec

__all__ = ["DEFAULT_TRIALS", "STRATEGIES", "SearchConfig", "SearchResult", "load_evaluator", "run_search"]

STRATEGIES = ("tpe", "nsga2", "random", "slimming")
DEFAULT_TRIALS = 100  # for the sampler strategies when --trials is not given
FORMAT = "efficientformer-nas/search/1"

_POLL_S = 0.2  # while waiting for another worker's trial
_REAP_EVERY_S = 5.0
_HEARTBEAT_S = 10  # Optuna heartbeat of running trials, for workers on other machines
_GRACE_S = 60  # a trial without heartbeat for this long is failed
_OPEN_ATTEMPTS = 5
_MAX_CACHED_IN_A_ROW = 200  # a sampler that only proposes evaluated architectures has exhausted the space


@dataclass(frozen=True)
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
    device: str = "cpu"  # cpu | cuda | auto
    threads: int | None = None  # intra-op CPU threads
    top: int = 10  # rows of the results table

    def __post_init__(self) -> None:
        object.__setattr__(self, "budgets", tuple(self.budgets))
        if self.strategy not in STRATEGIES:
            raise EfnasError(f"unknown strategy '{self.strategy}': choose one of {', '.join(STRATEGIES)}")
        for name, lowest in (("trials", 1), ("population", 2), ("top", 1), ("threads", 1), ("seed", 0)):
            value = getattr(self, name)
            if value is not None and value < lowest:
                raise EfnasError(f"--{name} must be at least {lowest}, got {value}")
        if self.device not in ("cpu", "cuda", "auto"):
            raise EfnasError(f"--device must be cpu, cuda or auto, got {self.device!r}")
        EvalConfig(self.calib_batches, self.batch_size, self.val_subset, self.eval_seed)  # raises on bad settings

    @property
    def storage_url(self) -> str:
        return storage_url(self.storage or Path(self.out) / "study.db")

    @property
    def study_name(self) -> str:
        return self.study or Path(self.out).resolve().name

    @property
    def eval_config(self) -> EvalConfig:
        return EvalConfig(self.calib_batches, self.batch_size, self.val_subset, self.eval_seed)

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


def _process_start(pid: int) -> str:
    """When process ``pid`` started (Linux: clock ticks since boot), to tell it from a reused pid."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return ""
    return "zombie" if fields[0] == "Z" else fields[19]


def _worker_identity() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _process_start(os.getpid())}


def _alive(worker: dict[str, Any]) -> bool:
    """Whether the process that ran a trial on this host still exists."""
    try:
        os.kill(int(worker["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    start = _process_start(int(worker["pid"]))
    return start != "zombie" and (not worker.get("start") or not start or start == worker["start"])


def _sqlite_connect(path: str) -> sqlite3.Connection:
    # Several workers on one SQLite file wait for each other's writes instead of failing. The
    # write-ahead log lets them read while another writes, and without an fsync per commit a trial's
    # ~30 small writes take milliseconds instead of a third of a second; a killed process still
    # loses nothing it committed (only a power cut can lose the last commits).
    connection = sqlite3.connect(path, timeout=60, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    return connection


def _open_storage(url: str) -> optuna.storages.RDBStorage:
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):]
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs["creator"] = lambda: _sqlite_connect(path)
    attempt = 0
    while True:
        attempt += 1
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url, engine_kwargs=engine_kwargs, heartbeat_interval=_HEARTBEAT_S, grace_period=_GRACE_S
                )
        except ImportError:
            raise EfnasError(f"storage {url} needs a database driver that is not installed (for PostgreSQL: pip install psycopg2-binary, or this project's [postgres] extra)") from None
        except Exception as exc:  # noqa: BLE001 - SQLAlchemy raises many kinds; all mean "cannot open"
            # Workers that start together on a new database race to create its tables; the loser
            # finds them made on its next attempt.
            if attempt < _OPEN_ATTEMPTS:
                time.sleep(0.25 * attempt)
                continue
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise EfnasError(f"cannot open storage {url}: {reason[:200]}") from None


def _sampler(strategy: str, seed: int, population: int) -> optuna.samplers.BaseSampler:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if strategy == "tpe":
            # constant_liar: running trials of other workers count as bad, so workers spread out.
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)
        if strategy == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=population)
        return optuna.samplers.RandomSampler(seed=seed)


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


class _Search:
    """One worker of a study: proposes, claims, evaluates and records trials."""

    def __init__(
        self,
        config: SearchConfig,
        study: optuna.Study,
        storage: optuna.storages.RDBStorage,
        budgets: list[Budget],
        evaluator: Evaluator,
        worker_index: int,
        progress: Progress,
    ) -> None:
        self.config = config
        self.study = study
        self.storage = storage
        self.study_id = storage.get_study_id_from_name(study.study_name)
        self.space = evaluator.info.space
        self.budgets = budgets
        self.evaluator = evaluator
        self.worker_index = worker_index
        self.identity = _worker_identity()
        self.target = config.target_trials
        self.base_sampler = study.sampler
        self.notes: dict[str, dict[str, Any]] = {}
        self.cached_in_a_row = 0
        self.exhausted = False
        self.last_reap = 0.0
        self.progress = progress
        self.task = progress.add_task(config.strategy, total=self.target)

    # -- reading the study ----------------------------------------------------------------------

    def trials(self, states: tuple[TrialState, ...] | None = None) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False, states=states)

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

    # -- one trial ------------------------------------------------------------------------------

    def objective(self, trial: optuna.Trial) -> float | tuple[float, float]:
        if self.config.strategy != "slimming" and self.target is not None:
            trials = self.trials()
            busy = sum(1 for t in trials if t.state == TrialState.RUNNING and t.number != trial.number and "arch" in t.user_attrs)
            if self.evaluated(trials) + busy >= self.target:
                raise optuna.TrialPruned("the trial budget is used up by other workers")
        return self.run_trial(trial, suggest_spec(trial, self.space))

    def run_trial(self, trial: optuna.Trial, spec: ArchSpec) -> float | tuple[float, float]:
        key = spec.to_json()
        latency = {b.name: b.latency_ms(spec) for b in self.budgets}
        trial.set_user_attr("worker", self.identity)
        trial.set_user_attr("arch", key)
        trial.set_user_attr("latency_ms", latency)
        for budget in self.budgets:
            trial.set_constraint(budget.constraint, latency[budget.name] - budget.limit_ms)
        if key in self.notes:
            trial.set_user_attr("note", self.notes[key])
        done = self._claim(trial, key)
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

    def _claim(self, trial: optuna.Trial, key: str) -> FrozenTrial | None:
        """A complete trial of the same architecture to reuse, or None: this trial evaluates it.

        Every trial writes its ``arch`` before it reads the others, so of two concurrent trials of
        one architecture the later reader sees the earlier one. A trial that sees a lower-numbered
        one waits (``role`` = wait). A trial that sees only higher-numbered ones evaluates once all of
        them have decided to wait, and waits if one of them decided to evaluate (it read too early to
        see this one). So exactly one of them evaluates; the others reuse its score, or take over if
        its process dies.
        """
        role = None
        while True:
            others = [
                t for t in self.trials((TrialState.RUNNING, TrialState.COMPLETE))
                if t.number != trial.number and t.user_attrs.get("arch") == key
            ]
            done = [t for t in others if t.state == TrialState.COMPLETE and "accuracy" in t.user_attrs]
            if done:
                return done[0]
            lower = [t for t in others if t.number < trial.number]
            higher = [t for t in others if t.number > trial.number]
            if not lower and all(t.user_attrs.get("role") == "wait" for t in higher):
                trial.set_user_attr("role", "evaluate")
                return None
            if (lower or any(t.user_attrs.get("role") == "evaluate" for t in higher)) and role != "wait":
                role = "wait"
                trial.set_user_attr("role", role)
            time.sleep(_POLL_S)
            self.reap(throttled=True)

    # -- killed workers -------------------------------------------------------------------------

    def reap(self, throttled: bool = False) -> None:
        """Fail the RUNNING trials of dead workers and queue their architectures again."""
        now = time.monotonic()
        if throttled and now - self.last_reap < _REAP_EVERY_S:
            return
        self.last_reap = now
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(self.study)  # other hosts: by heartbeat
        for t in self.trials((TrialState.RUNNING,)):
            worker = t.user_attrs.get("worker")
            if worker and worker.get("host") == self.identity["host"] and worker.get("pid") != self.identity["pid"] and not _alive(worker):
                trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, t.number)
                try:
                    self.storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
                except optuna.exceptions.UpdateFinishedTrialError:
                    pass  # another worker failed it first
        trials = self.trials()
        pending = {t.user_attrs.get("arch") for t in trials if t.state in (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)}
        retried = {t.user_attrs.get("retry_of") for t in trials}
        for t in trials:
            key = t.user_attrs.get("arch")
            if t.state == TrialState.FAIL and key and key not in pending and t.number not in retried:
                self.study.enqueue_trial(t.params, user_attrs={"retry_of": t.number, "arch": key})
                pending.add(key)

    # -- progress and stopping ------------------------------------------------------------------

    def after_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state == TrialState.COMPLETE:
            self.cached_in_a_row = 0 if trial.user_attrs.get("evaluated") else self.cached_in_a_row + 1
        trials = self.trials()
        self.show(trials)
        if self.target is not None and self.evaluated(trials) >= self.target:
            study.stop()
        if self.cached_in_a_row >= _MAX_CACHED_IN_A_ROW:
            self.exhausted = True
            study.stop()

    def show(self, trials: list[FrozenTrial], phase: str = "") -> None:
        best = best_record(TrialRecord.from_trial(t) for t in trials if t.state == TrialState.COMPLETE)
        what = f"best feasible {100 * best.accuracy:.2f}% at {best.latency_ms[self.budgets[0].name]:.4g} ms" if best else "no feasible trial yet"
        label = f"{self.config.strategy}{' ' + phase if phase else ''}: {what}"
        self.progress.update(self.task, completed=self.evaluated(trials), description=label)

    # -- strategies -----------------------------------------------------------------------------

    def run_sampler(self) -> None:
        if self.target is not None and self.evaluated(self.trials()) >= self.target:
            return
        self.study.optimize(self.objective, callbacks=[self.after_trial], gc_after_trial=False)

    def scores(self, items: list[tuple[ArchSpec, dict[str, Any]]]) -> dict[ArchSpec, float]:
        """Accuracy of each spec: stored scores first, then one trial per missing architecture
        (architectures another worker is evaluating are waited for, not repeated)."""
        wanted = {spec.to_json(): (spec, note) for spec, note in items}
        keys = list(wanted)
        shift = self.worker_index % len(keys)  # workers of one study start at different candidates
        keys = keys[shift:] + keys[:shift]
        while True:
            trials = self.trials()
            known = self.known_scores(trials)
            missing = [k for k in keys if k not in known]
            if not missing:
                return {wanted[k][0]: known[k] for k in keys}
            busy = {t.user_attrs.get("arch") for t in trials if t.state == TrialState.RUNNING}
            free = [k for k in missing if k not in busy]
            if not free:
                time.sleep(_POLL_S)
                self.reap(throttled=True)
                continue
            if self.target is not None and self.evaluated(trials) >= self.target:
                raise _TrialBudgetSpent
            spec, note = wanted[free[0]]
            self.notes[free[0]] = note
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self.study.sampler = optuna.samplers.PartialFixedSampler(params_from_spec(self.space, spec), self.base_sampler)
            self.study.optimize(self.objective, n_trials=1, callbacks=[self.after_trial], gc_after_trial=False)

    def run_slimming(self) -> tuple[list[SlimmingStep], bool]:
        """The slimming's decisions so far, and whether it ran to its end."""
        path: list[SlimmingStep] = []

        def on_step(step: SlimmingStep) -> None:
            path.append(step)
            self.show(self.trials(), phase=f"{step.phase} {step.step}")

        def latency(spec: ArchSpec) -> dict[str, float]:
            return {b.name: b.latency_ms(spec) for b in self.budgets}

        limits = {b.name: b.limit_ms for b in self.budgets}
        try:
            slimming(self.space, latency, limits, self.scores, on_step)
        except _TrialBudgetSpent:
            return path, False
        return path, True

    # -- references -----------------------------------------------------------------------------

    def presets(self) -> dict[str, dict[str, Any]]:
        """Each preset of the space scored and priced like a trial (kept with the study, not a trial)."""
        stored = dict(self.study.user_attrs.get("presets", {}))
        known = self.known_scores(self.trials())
        result = {}
        for name, spec in self.space.presets:
            latency = {b.name: b.latency_ms(spec) for b in self.budgets}
            entry = stored.get(name)
            if entry is None or entry.get("arch") != spec.to_dict():
                accuracy = known.get(spec.to_json())
                entry = {"arch": spec.to_dict(), "accuracy": accuracy if accuracy is not None else self.evaluator.accuracy(spec)}
            result[name] = {**entry, "latency_ms": latency, "feasible": all(latency[b.name] <= b.limit_ms for b in self.budgets)}
        if result != stored:
            self.study.set_user_attr("presets", result)
        return result


def load_evaluator(config: SearchConfig) -> Evaluator:
    """The supernet of ``config`` on its device, wrapped in an evaluator with its settings."""
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    device = config.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    supernet, info = load_supernet(config.supernet, device=device)
    return Evaluator(supernet, info, config.eval_config, data=config.data, device=device)


def _check_evaluator(evaluator: Evaluator, config: SearchConfig) -> None:
    checkpoint = evaluator.info.path.resolve()
    if Path(config.supernet).resolve() not in (checkpoint, checkpoint.parent):
        raise EfnasError(f"the evaluator scores {checkpoint}, but the search is for {config.supernet}")
    if evaluator.config != config.eval_config or (config.data is not None and config.data != evaluator.data_arg):
        raise EfnasError(f"the evaluator's settings {evaluator.describe()} differ from the search's {config.eval_config}")


def run_search(config: SearchConfig, *, evaluator: Evaluator | None = None, show_progress: bool = True) -> SearchResult:
    """Run (or continue) a search and write its results into ``config.out``.

    Safe to run from several processes or machines at once with the same storage and study name:
    they share the trials. Returns what the study holds when this worker stops. Searches of one
    supernet with the same scoring settings may share an ``evaluator`` (see :func:`load_evaluator`),
    and with it the scores it has cached.
    """
    if evaluator is None:
        evaluator = load_evaluator(config)
    else:
        _check_evaluator(evaluator, config)
        if config.threads is not None:
            torch.set_num_threads(config.threads)
    info = evaluator.info
    budgets = resolve_budgets(info.space, config.budgets)
    identity = _identity(config, info, evaluator.supernet_digest, budgets, evaluator)

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    url = config.storage_url
    storage = _open_storage(url)
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
    worker_index = int(study.user_attrs.get("workers", 0))
    study.set_user_attr("workers", worker_index + 1)
    seed = config.seed if worker_index == 0 else random.Random(f"{config.seed}:{worker_index}").randrange(2**31)
    study.sampler = _sampler(config.strategy, seed, config.population)

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    notes = []
    with Progress(*columns, console=console, disable=not show_progress) as progress:
        search = _Search(config, study, storage, budgets, evaluator, worker_index, progress)
        search.reap()
        evaluated_before = search.evaluated(search.trials())
        search.show(search.trials())
        path: list[SlimmingStep] = []
        if config.strategy == "slimming":
            path, completed = search.run_slimming()
            finished = completed
            if not completed:
                notes.append(f"the trial budget ({config.trials}) ran out before the slimming ended; the best feasible trial so far is reported")
            if path:
                study.set_user_attr("slimming_path", [step.to_dict() for step in path])
            if completed:
                study.set_user_attr("slimming_finished", True)
        else:
            search.run_sampler()
            finished = search.target is not None and search.evaluated(search.trials()) >= search.target
            if search.exhausted:
                finished = True
                notes.append(f"the sampler proposed only evaluated architectures {_MAX_CACHED_IN_A_ROW} times in a row; stopped")
        presets = search.presets()

    trials = search.trials()
    records = [TrialRecord.from_trial(t) for t in trials]
    result = SearchResult(
        study=config.study_name,
        storage=url,
        out=out,
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
    _write_results(result, config, info, evaluator, identity)
    return result


def _write_results(result: SearchResult, config: SearchConfig, info: CheckpointInfo, evaluator: Evaluator, identity: dict[str, Any]) -> None:
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
        "supernet": str(info.path),
        "strategy": result.strategy,
        "budgets": result.budgets,
        "params": count_params(best.spec),
        "macs": count_macs(best.spec),
        "evaluated": result.evaluated,
        "finished": result.finished,
        "evaluator": evaluator.describe(),
        "presets": result.presets,
        "search": asdict(config),
        "slimming_path": result.slimming_path,
        "supernet_digest": identity["supernet"]["digest"],
        "provenance": provenance(),
    })
    result.files.insert(0, best_path)
