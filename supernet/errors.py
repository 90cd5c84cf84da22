"""The one exception type a user of the tool is meant to see.

Anything raised as :class:`EfnasError` is a problem with the user's input (a file, a flag, an
architecture) and its message is a single line that names the problem. The CLI prints it without a
traceback; every other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

__all__ = ["ConfigError", "EfnasError", "read_user_data", "read_user_file"]


class EfnasError(Exception):
    """A problem with the user's input, explained in one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


class ConfigError(EfnasError):
    """A bad value of one field of a config dataclass, in the library's words: ``field`` names the
    field, ``problem`` says what is wrong ("must be at least 1, got 0").

    The library does not know how a field is spelled where the user wrote it; whoever read the
    value presents it: the CLI as its flag (``--eval-seed must ...``, see
    :meth:`supernet.cliconfig.ConfigFlags.from_args`), a batch file as its key.
    """

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = " ".join(problem.split())
        super().__init__(f"{field} {self.problem}")

    def renamed(self, names: dict[str, str]) -> ConfigError:
        """The same error for a config that holds this one under other field names."""
        return ConfigError(names.get(self.field, self.field), self.problem)


def read_user_file(path: Path, what: str) -> str:
    """The text of a file the user named, or a one-line :class:`EfnasError` saying why it cannot be
    read (``what`` names the kind of file, e.g. "batch file")."""
    try:
        return path.read_text()
    except FileNotFoundError:
        raise EfnasError(f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise EfnasError(f"cannot read {what} {path}: {getattr(exc, 'strerror', None) or exc}") from None


def read_user_data(path: Path, what: str, *, format: str | None = None) -> Any:
    """The parsed contents of a JSON or TOML file the user named (``format`` "json"/"toml";
    default: from the suffix, JSON unless ``.toml``), or a one-line :class:`EfnasError`."""
    text = read_user_file(path, what)
    format = format or ("toml" if path.suffix == ".toml" else "json")
    try:
        return tomllib.loads(text) if format == "toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise EfnasError(f"{what} {path} is not valid {format.upper()}: {exc}") from None
