"""Many processes on one study: who they are, which of them is alive, which one evaluates an
architecture that several drew at once, and what happens to the trials of one that died."""

from __future__ import annotations

import os
import socket
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from nas._storage import insert_study_system_attr

__all__ = ["Worker"]

_POLL_S = 0.2  # while waiting for another worker's trial
_REAP_EVERY_S = 5.0
_JOINED = "efnas:worker:"  # study system attribute per worker that joined, suffixed by its index


def _process_start(pid: int) -> str:
    """When process ``pid`` started (Linux: clock ticks since boot), to tell it from a reused pid."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return ""
    return "zombie" if fields[0] == "Z" else fields[19]


def _this_process() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _process_start(os.getpid())}


def _alive(process: dict[str, Any]) -> bool:
    """Whether a process of this host (as :func:`_this_process` described it) still exists."""
    try:
        os.kill(int(process["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    start = _process_start(int(process["pid"]))
    return start != "zombie" and (not process.get("start") or not start or start == process["start"])


class Worker:
    """This process as one worker of a shared study. Make it with :meth:`join`."""

    def __init__(self, study: optuna.Study, storage: optuna.storages.RDBStorage, index: int) -> None:
        self.study = study
        self.storage = storage
        self.study_id = storage.get_study_id_from_name(study.study_name)
        self.identity = _this_process()  # written on each trial, for reaping
        self.index = index  # 0 for the first worker that joined the study, then 1, 2, ...
        self._last_reap = 0.0

    @classmethod
    def join(cls, study: optuna.Study, storage: optuna.storages.RDBStorage) -> Worker:
        """Register with the study under the lowest index no worker holds yet.

        A counter read and then written would give two workers that start together one index (and
        one sampler seed); instead each worker inserts a row only one of them can own.
        """
        study_id = storage.get_study_id_from_name(study.study_name)
        joined = sum(1 for key in storage.get_study_system_attrs(study_id) if key.startswith(_JOINED))
        index = max(joined, int(study.user_attrs.get("workers", 0)))  # earlier versions counted there
        while not insert_study_system_attr(storage, study_id, f"{_JOINED}{index}", _this_process()):
            index += 1
        return cls(study, storage, index)

    def trials(self, states: tuple[TrialState, ...] | None = None) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False, states=states)

    def claim(self, trial: optuna.Trial, key: str) -> FrozenTrial | None:
        """A complete trial of architecture ``key`` to reuse, or None: this trial evaluates it.

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
            self.wait()

    def wait(self) -> None:
        """Let other workers progress for a moment (and notice if one of them died)."""
        time.sleep(_POLL_S)
        self.reap(throttled=True)

    def reap(self, throttled: bool = False) -> None:
        """Fail the RUNNING trials of dead workers and queue their architectures again."""
        now = time.monotonic()
        if throttled and now - self._last_reap < _REAP_EVERY_S:
            return
        self._last_reap = now
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(self.study)  # other hosts: by heartbeat
        for t in self.trials((TrialState.RUNNING,)):
            if self._died_here(t.user_attrs.get("worker")):
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
                carried = {"note": t.user_attrs["note"]} if "note" in t.user_attrs else {}  # the slimming's reason for it
                self.study.enqueue_trial(t.params, user_attrs={"retry_of": t.number, "arch": key, **carried})
                pending.add(key)

    def _died_here(self, process: dict[str, Any] | None) -> bool:
        """Whether ``process`` (a trial's ``worker``) ran on this host, is not this one, and is gone."""
        if not process or process.get("host") != self.identity["host"] or process.get("pid") == self.identity["pid"]:
            return False
        return not _alive(process)
