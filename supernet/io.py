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

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from supernet.errors import EfnasError

__all__ = [
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "atomic_torch_save",
    "check_output_folder",
    "console",
    "cpu_model",
    "lock_folder",
    "progress_bar",
    "provenance",
    "provenance_markdown",
    "remove_stale_temp_files",
    "tool_version",
    "torch_threads",
]

console = Console(highlight=False)


def progress_bar(*fields: ProgressColumn | str, show: bool = True, transient: bool = False) -> Progress:
    """The one progress bar of every long command: description, bar, count, elapsed, ETA.

    ``fields`` are extra columns (a string is a :class:`TextColumn` template) shown after the count.
    """
    extra = [TextColumn(f) if isinstance(f, str) else f for f in fields]
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
                  "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])}
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
        "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
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
