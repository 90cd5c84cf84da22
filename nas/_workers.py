"""Many processes on one study: who they are, which of them is alive, whether there is room for
another evaluation, which one evaluates an architecture that several drew at once, and what
happens to the trials of one that died.

Every decision that two workers could make at once (start a trial while ``--trials`` has room;
evaluate an architecture or wait for the worker that evaluates it) is made under the study's
:class:`nas._storage.StudyLock`, held for milliseconds, never during an evaluation. So the number
of evaluations is exact and no architecture is evaluated twice, however many workers run."""

from __future__ import annotations

import datetime
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from nas._storage import StudyLock, insert_study_system_attr

__all__ = ["Worker"]

_POLL_S = 0.2  # while waiting for another worker's trial
# Same-host deaths are seen through /proc, which costs microseconds; the study is read anyway on
# every poll. So a dead worker's trial is retried within about a second.
_REAP_EVERY_S = 1.0
# A live worker tags its trial with its identity within the sampler's time of creating it (well
# under a second); a RUNNING trial still untagged after this long was made by a process that died
# in between, and nothing else would ever fail it on a host without heartbeats.
_ORPHAN_S = 30.0
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
        self.lock = StudyLock(storage, storage.url, self.study_id)
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

        Called with the study lock held (the caller took it before the trial was created); the
        lock is released before returning and while waiting. Under the lock the decision is
        simple: reuse a complete trial of the architecture; else wait while another RUNNING trial
        evaluates it (``role`` = wait); else evaluate it (``role`` = evaluate). A waiter whose
        evaluator dies (reaped: FAIL) takes over on its next look.
        """
        role = None
        while True:
            self.lock.acquire()
            others = [
                t for t in self.trials((TrialState.RUNNING, TrialState.COMPLETE))
                if t.number != trial.number and t.user_attrs.get("arch") == key
            ]
            done = [t for t in others if t.state == TrialState.COMPLETE and "accuracy" in t.user_attrs]
            if done:
                self.lock.release()
                return done[0]
            if not any(t.state == TrialState.RUNNING and t.user_attrs.get("role") == "evaluate" for t in others):
                trial.set_user_attr("role", "evaluate")
                self.lock.release()
                return None
            if role != "wait":
                role = "wait"
                trial.set_user_attr("role", role)
            self.lock.release()
            self.wait()

    def set_trial_system_attr(self, trial: optuna.Trial, key: str, value: Any) -> None:
        """A system attribute of a running trial (Optuna 5's Trial has no public setter for them)."""
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, trial.number)
        self.storage.set_trial_system_attr(trial_id, key, value)

    def room(self, target: int) -> bool:
        """Whether one more trial may start without more than ``target`` evaluations study-wide:
        the evaluated architectures plus those being evaluated or waited for are fewer than
        ``target``, or a retry of a dead worker's architecture is queued (its slot is its own).
        Meant to be asked with the study lock held, so that two workers cannot both take the last slot."""
        trials = self.trials()
        if any(t.state == TrialState.WAITING for t in trials):
            return True
        evaluated = {t.user_attrs.get("arch") for t in trials if t.state == TrialState.COMPLETE and t.user_attrs.get("evaluated")}
        busy = {t.user_attrs.get("arch") for t in trials
                if t.state == TrialState.RUNNING and t.user_attrs.get("role") in ("evaluate", "wait")}
        return len(evaluated) + len(busy - evaluated) < target

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
        with self.lock.holding():  # two workers reaping at once must not queue one retry each
            self._fail_and_retry()

    def _fail_and_retry(self) -> None:
        for t in self.trials((TrialState.RUNNING,)):
            if self._died_here(t.user_attrs.get("worker")) or _orphaned(t):
                trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, t.number)
                try:
                    self.storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
                except optuna.exceptions.UpdateFinishedTrialError:
                    pass  # another worker failed it first
        trials = self.trials()
        pending = {t.user_attrs.get("arch") for t in trials if t.state in (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)}
        retried = {t.user_attrs.get("retry_of") for t in trials}
        # Not Optuna's RetryHeartbeatStaleTrialCallback (formerly RetryFailedTrialCallback): that
        # one retries only trials failed by a stale heartbeat (other hosts, after 60 s), retries an
        # architecture that another trial has meanwhile scored or queued, and copies every user
        # attribute, the dead worker's identity and role included. Here a death on this host is
        # seen at once, and a retry carries only the architecture (and the slimming's note).
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


def _orphaned(trial: FrozenTrial) -> bool:
    """A RUNNING trial whose creator died before it could tag the trial with its identity."""
    if "worker" in trial.user_attrs or trial.datetime_start is None:
        return False
    return (datetime.datetime.now() - trial.datetime_start).total_seconds() > _ORPHAN_S
