"""Small shared plumbing: atomic file writes, provenance records, the console and its progress bars.

Everything the tool writes that a person or a later run relies on (checkpoints, latency tables,
study results, exports) goes through :func:`atomic_write_bytes`, so a killed process leaves either
the old file or the new one, never half of one. A command that owns an output folder checks it with
:func:`check_output_folder` before any work and holds it with :func:`lock_folder` while it writes.
"""

from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import hashlib
import io
import json
import math
import os
import platform
import re
import shlex
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from importlib import metadata
from pathlib import Path
from typing import Any

from rich.align import AlignMethod
from rich.console import Console, ConsoleDimensions
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TaskID, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.rule import Rule
from rich.style import Style
from rich.text import Text, TextType

from supernet.errors import EfnasError

__all__ = [
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "atomic_torch_save",
    "check_output_folder",
    "console",
    "cpu_model",
    "live_progress",
    "lock_folder",
    "mask_passwords",
    "progress_bar",
    "progress_lines",
    "provenance",
    "provenance_markdown",
    "remove_stale_temp_files",
    "tool_version",
    "torch_threads",
]

# Piped output is read in a file or a log viewer, not a terminal window: rich's default of 80
# columns would wrap table cells (architecture labels, budgets) and long lines mid-word.
_PIPED_WIDTH = 10_000


class _Console(Console):
    """rich's Console, with lines as long as they need to be when the output is not a terminal."""

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        return size if self.is_terminal else ConsoleDimensions(_PIPED_WIDTH, size.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)  # type: ignore[attr-defined]

    def rule(self, title: TextType = "", *, characters: str = "─", style: str | Style = "rule.line",
             align: AlignMethod = "center") -> None:
        rule = Rule(title=title, characters=characters, style=style, align=align)
        if self.is_terminal:
            self.print(rule)
            return
        # A rule as wide as the piped console would be 10,000 characters: as wide as its title needs.
        text = self.render_str(title) if isinstance(title, str) else title
        self.print(rule, width=max(80, text.cell_len + 8))


console = _Console(highlight=False)

_lines_only = False  # set by progress_lines(): every progress bar is log lines


@contextmanager
def progress_lines(*, enabled: bool = True) -> Iterator[None]:
    """Within the block, every progress bar of :func:`progress_bar` prints log lines instead of a
    live bar, as it does when the output is not a terminal (``--no-progress``); ``enabled=False``
    leaves the bars as they are."""
    global _lines_only
    previous, _lines_only = _lines_only, _lines_only or bool(enabled)
    try:
        yield
    finally:
        _lines_only = previous


def live_progress() -> bool:
    """Whether progress bars are live (a terminal, not within :func:`progress_lines`)."""
    return console.is_terminal and not _lines_only


def progress_bar(*fields: ProgressColumn | str, show: bool = True, transient: bool = False) -> Progress:
    """The one progress bar of every long command: description, bar, count, elapsed, ETA.

    ``fields`` are extra columns (a string is a :class:`TextColumn` template) shown after the count.
    Without a terminal (piped output, or within :func:`progress_lines`), a log line per stretch of
    a task replaces the live bar: each time its count passes a multiple of the task's field
    ``log_every`` (``progress.add_task(..., log_every=steps_per_epoch)``; default a tenth of its
    total, 10 without one), and once at the end. ``show=False``: neither (the caller logs, or is
    a worker that must stay quiet).
    """
    extra = [TextColumn(f) if isinstance(f, str) else f for f in fields]
    if show and not live_progress():
        return _LogProgress(extra)
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *extra,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
        disable=not show,
    )


class _LogProgress(Progress):
    """A progress "bar" that prints one log line per stretch of each task's work (see :func:`progress_bar`)."""

    def __init__(self, fields: list[ProgressColumn]) -> None:
        # rich fills an empty column list with its default bar; these columns are never drawn anyway.
        super().__init__(*(fields or [TextColumn("")]), console=console, disable=True)
        self._fields = fields
        self._logged: dict[TaskID, float] = {}

    def add_task(self, description: str, start: bool = True, total: float | None = 100.0, completed: int = 0,
                 visible: bool = True, **fields: Any) -> TaskID:
        task_id = super().add_task(description, start, total, completed, visible, **fields)
        self._logged[task_id] = completed
        return task_id

    def update(self, task_id: TaskID, **changes: Any) -> None:  # type: ignore[override]
        super().update(task_id, **changes)
        self._log_if_due(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._log_if_due(task_id)

    def stop(self) -> None:
        super().stop()
        for task in self.tasks:  # what the last stretch did, if it ended between two lines
            if task.completed != self._logged.get(task.id):
                self._log(task)

    def _log_if_due(self, task_id: TaskID) -> None:
        task = self._tasks[task_id]
        last = self._logged.get(task_id, 0.0)
        every = task.fields.get("log_every") or (math.ceil(task.total / 10) if task.total else 10)
        ended = task.total is not None and task.completed >= task.total > last
        if ended or task.completed // every > last // every or task.completed < last:
            self._log(task)

    def _log(self, task: Task) -> None:
        """``description: done/total fields (elapsed)``, one line however long."""
        self._logged[task.id] = task.completed
        count = f"{int(task.completed)}/{int(task.total)}" if task.total is not None else f"{int(task.completed)}"
        line = Text.assemble(self.console.render_str(task.description), f": {count}")
        for column in self._fields:
            part = column(task)
            if isinstance(part, Text) and part.plain.strip():
                line.append("  ")
                line.append_text(part)
        line.append(f" ({_dt.timedelta(seconds=int(task.elapsed or 0))})")
        self.console.print(line, soft_wrap=True)


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` intra-op threads (None: leave them), then restore the previous count."""
    import torch

    if threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _umask() -> int:
    """The process's umask, read without changing it where Linux allows (``os.umask`` sets it, which
    races with other threads creating files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _host_tag() -> str:
    # Temp names carry the writer's host too: on a shared folder a PID means nothing elsewhere.
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


# .<target>.<pid>-<host tag>.<mkstemp's random part>.tmp
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)-(?P<host>[0-9a-f]{8})\.[A-Za-z0-9_]+\.tmp$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def remove_stale_temp_files(folder: str | os.PathLike[str], *, target: str | None = None) -> list[Path]:
    """Delete the temporary files that killed writers of :func:`atomic_write_bytes` left in ``folder``
    (only those of ``target``, a file name, when given); returns what was removed.

    A temp file names its writer's PID and host: one whose writer runs on this host and is gone is
    stale; a live writer's, or another host's, is never touched.
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    host = _host_tag()
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if not match or match["host"] != host or (target is not None and match["target"] != target):
            continue
        if int(match["pid"]) != os.getpid() and not _pid_alive(int(match["pid"])):
            with _ignoring_missing():
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


@contextmanager
def _ignoring_missing() -> Iterator[None]:
    try:
        yield
    except FileNotFoundError:  # another process cleaned it up first
        pass


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    The file gets the permissions any new file gets (0666 less the umask), not mkstemp's 0600; the
    temporary files of writers killed earlier are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(path.parent, target=path.name)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-{_host_tag()}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def check_output_folder(path: str | os.PathLike[str], *, flag: str = "--out") -> Path:
    """Check, before any work, that ``path`` is a folder this process can create or write in;
    otherwise a one-line :class:`EfnasError` naming ``flag``. Creates nothing.

    The check writes (and removes) a probe file in the folder, or in its nearest existing parent,
    because permission bits do not tell the whole story (read-only mounts, ACLs, root).
    """
    path = Path(path).expanduser()
    probe_in = path
    while not probe_in.exists():
        if probe_in.is_symlink():
            raise EfnasError(f"{flag} {path}: {probe_in} is a broken symbolic link; remove it or choose another folder")
        probe_in = probe_in.parent
    if not probe_in.is_dir():
        where = "is a file" if probe_in == path else f"cannot be created: {probe_in} is a file"
        raise EfnasError(f"{flag} {path} {where}, not a folder; choose another {flag}")
    try:
        fd, probe = tempfile.mkstemp(prefix=".efnas-write-check.", dir=probe_in)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        where = "" if probe_in == path else f" (in {probe_in})"
        raise EfnasError(f"{flag} {path} is not writable{where}: {reason}; choose another {flag}") from None
    os.close(fd)
    os.unlink(probe)
    return path


_LOCK_NAME = ".efnas.lock"
_HELD: dict[Path, int] = {}  # folders this process holds, and how many nested holds


@contextmanager
def lock_folder(folder: str | os.PathLike[str], *, what: str = "run", flag: str = "--out") -> Iterator[Path]:
    """Hold ``folder`` (created if needed) for the block, so that no other process writes into it.

    The lock is an OS lock (``flock``) on ``folder/.efnas.lock``, so it dies with its process: a
    lock file left by a killed process does not block. Another process is refused with a one-line
    :class:`EfnasError` naming the holder's PID and host (``what`` says what the holder is, ``flag``
    which option chooses another folder). Within one process the lock nests (a batch that holds a
    folder may run a command that locks it again). A folder this call created is removed on exit
    if nothing was written into it. Yields the lock file's path.
    """
    folder = Path(folder)
    key, lock_path = folder.resolve(), folder / _LOCK_NAME
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield lock_path
        finally:
            _HELD[key] -= 1
        return
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = _acquire(lock_path, folder, what, flag)
    except OSError as exc:
        raise EfnasError(f"cannot lock {flag} {folder}: {exc.strerror or exc}; choose another {flag}") from None
    _HELD[key] = 1
    try:
        record = {"pid": os.getpid(), "host": socket.gethostname(), "since": _dt.datetime.now().isoformat(timespec="seconds"),
                  "command": _command_line()}
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(record) + "\n").encode())
        yield lock_path
    finally:
        del _HELD[key]
        # Unlinked while still locked: a process that opened the old file finds it replaced and retries.
        with _ignoring_missing():
            lock_path.unlink()
        os.close(fd)
        if created:
            with suppress(OSError):  # not empty: the run wrote something, keep it
                folder.rmdir()


def _acquire(lock_path: Path, folder: Path, what: str, flag: str) -> int:
    for _ in range(100):
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise EfnasError(f"{folder} is in use by another {what} ({_holder(lock_path)}); "
                             f"wait for it to end, or choose another {flag}") from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock_path))
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the file we locked was removed by its previous holder: lock the new one
    raise EfnasError(f"cannot lock {folder}: its lock file keeps changing")


def _holder(lock_path: Path) -> str:
    """Who holds the lock, from what it wrote into the lock file (it may be writing it right now)."""
    for _ in range(20):
        try:
            record = json.loads(lock_path.read_text())
            return f"PID {record['pid']} on host {record['host']}, since {record['since']}"
        except (OSError, ValueError, KeyError, TypeError):
            time.sleep(0.05)
    return "a process that has not said which"


def tool_version() -> str:
    try:
        return metadata.version("efficientformer-nas")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def cpu_model() -> str:
    """The CPU's marketing name (Linux /proc/cpuinfo, else what platform reports)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


_LIBRARIES = ("torch", "torchvision", "onnx", "onnxruntime", "coremltools", "optuna", "numpy")


# scheme://user:PASSWORD@host: the password runs to the last "@" of the word (one typed unquoted
# may itself hold an "@"), and libpq's ...?password=PASSWORD.
_URL_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)\S*(@)")
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&\s]*", re.IGNORECASE)


def mask_passwords(text: str) -> str:
    """``text`` with the password of every URL in it shown as ``***``
    (``postgresql://user:pw@host/db`` -> ``postgresql://user:***@host/db``), for whatever records or
    prints a command line or a message that may hold a storage URL."""
    return _QUERY_PASSWORD.sub(r"\1***", _URL_PASSWORD.sub(r"\1***\2", text))


def _command_line() -> str:
    """This process's command line, as a shell would take it, URL passwords masked."""
    return shlex.join(mask_passwords(arg) for arg in [Path(sys.argv[0]).name, *sys.argv[1:]])


def provenance(extra_libraries: tuple[str, ...] = ()) -> dict[str, Any]:
    """Where, when, with what and by which command an artefact was made."""
    versions = {"efficientformer-nas": tool_version(), "python": platform.python_version()}
    for name in _LIBRARIES + extra_libraries:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return {
        "machine": {
            "hostname": socket.gethostname(),
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "platform": platform.platform(),
        },
        "versions": versions,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": _command_line(),  # every file built from it would carry a --storage password
    }


def provenance_markdown(prov: dict[str, Any]) -> list[str]:
    """The "Machine" section of a benchmark report, as markdown lines, from :func:`provenance`'s record."""
    machine = prov["machine"]
    versions = ", ".join(f"{name} {version}" for name, version in prov["versions"].items())
    return [
        "## Machine",
        "",
        f"{machine['cpu']} ({machine['cores']} cores), {machine['platform']}; {versions}; {prov['date']}.",
        "",
        f"Command: `{prov['command']}`",
        "",
    ]
