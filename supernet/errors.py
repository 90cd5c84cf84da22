"""The one exception type a user of the tool is meant to see.

Anything raised as :class:`EfnasError` is a problem with the user's input (a file, a flag, an
architecture) and its message is a single line that names the problem. The CLI prints it without a
traceback; every other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["EfnasError", "read_user_file"]


class EfnasError(Exception):
    """A problem with the user's input, explained in one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


def read_user_file(path: Path, what: str) -> str:
    """The text of a file the user named, or a one-line :class:`EfnasError` saying why it cannot be
    read (``what`` names the kind of file, e.g. "batch file")."""
    try:
        return path.read_text()
    except FileNotFoundError:
        raise EfnasError(f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise EfnasError(f"cannot read {what} {path}: {getattr(exc, 'strerror', None) or exc}") from None
