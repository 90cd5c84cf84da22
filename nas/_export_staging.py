"""The export folder appears whole or not at all.

Everything is written into a hidden sibling of ``out`` (``.NAME.partial-PID-RANDOM``) that is
renamed to ``out`` only when the export succeeded; ``--force`` swaps an old export out through a
``.NAME.old-PID-RANDOM`` sibling. Siblings left by killed exports (their PID is gone) are removed
by the next export of the same folder.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from supernet.errors import EfnasError

__all__ = ["check_out", "path_size", "staging"]


def _occupied(out: Path) -> bool:
    return out.is_symlink() or out.is_file() or (out.is_dir() and any(out.iterdir()))


def check_out(out: Path, force: bool) -> None:
    """A one-line error unless ``out`` may receive an export (absent, empty, or ``force``) and the
    folder it goes into can be written: checked before any work."""
    if out.exists() and not out.is_dir():
        raise EfnasError(f"--out {out} is a file; give a folder path")
    if _occupied(out) and not force:
        raise EfnasError(f"--out {out} already exists; pass --force to replace it, or choose another folder")
    _check_writable(out.absolute())


def _check_writable(out: Path) -> None:
    """The nearest existing ancestor of ``out`` must be a folder this process may create entries in
    (the export is staged next to ``out`` and parent folders are made as needed)."""
    ancestor = out.parent
    while not ancestor.exists() and not ancestor.is_symlink():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise EfnasError(f"cannot write the export to {out}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise EfnasError(f"cannot write the export to {out}: Permission denied ({ancestor})")


def path_size(path: Path) -> int:
    """Bytes of a file, or of every file below a folder (a Core ML package is a folder)."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _side_folder(out: Path, kind: str) -> Path:
    """A hidden sibling of ``out`` owned by this process: ``.NAME.KIND-PID-RANDOM``."""
    return out.with_name(f".{out.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")


def _remove_stale(out: Path) -> None:
    """Delete side folders of ``out`` left by killed exports (their process is gone)."""
    for kind in ("partial", "old"):
        for folder in out.parent.glob(f".{out.name}.{kind}-*"):
            try:
                os.kill(int(folder.name.rsplit("-", 2)[1]), 0)
            except ProcessLookupError:
                shutil.rmtree(folder, ignore_errors=True)
            except (ValueError, OSError):
                continue


def _remove_created(folders: list[Path]) -> None:
    for folder in folders:  # deepest first
        try:
            folder.rmdir()
        except OSError:
            return


def _move_into_place(staging: Path, out: Path, force: bool) -> None:
    check_out(out, force)  # again: another process may have written out meanwhile
    if _occupied(out):  # --force: swap the old export out, the new one in, then delete the old one
        old = _side_folder(out, "old")
        os.replace(out, old)
        os.replace(staging, out)
        shutil.rmtree(old, ignore_errors=True)
        return
    if out.is_dir():
        out.rmdir()  # an empty folder the user made for the export
    os.replace(staging, out)


@contextmanager
def staging(out: Path, force: bool) -> Iterator[Path]:
    """A hidden folder next to ``out``; renamed to ``out`` if the block succeeds, deleted if not
    (with any parent folders this created)."""
    out = out.absolute()
    created = []
    ancestor = out.parent
    while not ancestor.exists():
        created.append(ancestor)
        ancestor = ancestor.parent
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(out)
        folder = _side_folder(out, "partial")
        folder.mkdir()
    except OSError as exc:
        _remove_created(created)
        raise EfnasError(f"cannot write the export to {out}: {exc.strerror or exc} ({exc.filename or out.parent})") from None
    try:
        yield folder
        _move_into_place(folder, out, force)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        _remove_created(created)
        raise
