"""Small shared plumbing: atomic file writes, provenance records, the console and its progress bars.

Everything the tool writes that a person or a later run relies on (checkpoints, latency tables,
study results, exports) goes through :func:`atomic_write_bytes`, so a killed process leaves either
the old file or the new one, never half of one.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import os
import platform
import shlex
import socket
import sys
import tempfile
from importlib import metadata
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

__all__ = [
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "atomic_torch_save",
    "console",
    "cpu_model",
    "progress_bar",
    "provenance",
    "provenance_markdown",
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


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
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
