"""The one exception type a user of the tool is meant to see.

Anything raised as :class:`EfnasError` is a problem with the user's input (a file, a flag, an
architecture) and its message is a single line that names the problem. The CLI prints it without a
traceback; every other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["EfnasError"]


class EfnasError(Exception):
    """A problem with the user's input, explained in one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))
