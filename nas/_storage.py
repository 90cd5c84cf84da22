"""Opening an Optuna storage that many workers share: URLs, SQLite settings, retries, and the one
insert-only write that Optuna's API lacks."""

from __future__ import annotations

import json
import sqlite3
import time
import warnings
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.engine
import sqlalchemy.exc

from supernet.errors import EfnasError

__all__ = ["HEARTBEAT_S", "insert_study_system_attr", "open_storage", "safe_url", "storage_url"]

HEARTBEAT_S = 10  # Optuna heartbeat of running trials, for workers on other machines
_GRACE_S = 60  # a trial without heartbeat for this long is failed
_OPEN_ATTEMPTS = 5


def storage_url(storage: str | Path) -> str:
    """An Optuna storage URL; a plain file path means an SQLite database file. A bare
    ``postgresql://`` URL names the PostgreSQL driver that is installed (psycopg2 is the one
    ``pip install 'efficientformer-nas[postgres]'`` brings; SQLAlchemy would assume psycopg 3)."""
    text = str(storage)
    for scheme in ("postgresql://", "postgres://"):
        if text.startswith(scheme) and find_spec("psycopg") is None and find_spec("psycopg2") is not None:
            return "postgresql+psycopg2://" + text[len(scheme):]
    if "://" in text:
        return text
    return f"sqlite:///{Path(text).expanduser().resolve()}"


def safe_url(storage: str | Path) -> str:
    """``storage`` as it may be printed or written to a file: a URL's password is masked as ``***``
    (a plain file path comes back unchanged)."""
    text = str(storage)
    if "://" not in text:
        return text
    try:
        return sqlalchemy.engine.make_url(text).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        # Not a URL SQLAlchemy can parse: mask whatever sits between "user:" and "@".
        scheme, _, rest = text.partition("://")
        credentials, at, host = rest.rpartition("@")
        if not at or ":" not in credentials:
            return text
        return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}"


def _sqlite_connect(path: str) -> sqlite3.Connection:
    # Several workers on one SQLite file wait for each other's writes instead of failing. The
    # write-ahead log lets them read while another writes, and without an fsync per commit a trial's
    # ~30 small writes take milliseconds instead of a third of a second; a killed process still
    # loses nothing it committed (only a power cut can lose the last commits).
    connection = sqlite3.connect(path, timeout=60, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    return connection


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """The storage at ``url`` (made if new), with heartbeats so other hosts can tell a dead worker."""
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
                    url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_S, grace_period=_GRACE_S
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


def insert_study_system_attr(storage: optuna.storages.RDBStorage, study_id: int, key: str, value: Any) -> bool:
    """Add a study system attribute unless the study has one by that name; False if it has.

    ``storage.set_study_system_attr`` overwrites, so of two workers that write one key both would
    think they own it. A plain INSERT meets the table's unique (study, key) constraint instead: on
    SQLite and PostgreSQL alike exactly one of two concurrent inserts succeeds.
    """
    from optuna.storages._rdb.models import StudySystemAttributeModel  # the table behind study system attrs

    row = {"study_id": study_id, "key": key, "value_json": json.dumps(value)}
    try:
        with storage.engine.begin() as connection:
            connection.execute(StudySystemAttributeModel.__table__.insert().values(**row))
    except sqlalchemy.exc.IntegrityError:
        return False
    return True
