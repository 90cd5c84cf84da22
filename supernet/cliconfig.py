"""Config dataclasses on the command line, described once per command.

A command lists every field of its config in a :class:`ConfigFlags` (help text, and where the
flag differs from the field: its name, metavar, choices, group); types, defaults and whether a
flag is required come from the dataclass itself. From that one description:

- :meth:`ConfigFlags.add_arguments` adds the argparse arguments,
- :meth:`ConfigFlags.from_args` reads a Namespace back into the config, with the set of fields
  the user gave, and presents the config's :class:`ConfigError` in terms of the flag,
- :meth:`ConfigFlags.to_argv` gives the flags that reproduce a config (only the non-default ones),
- :func:`check_type` checks a value from a file (a batch file) against the field's type.

Flags default to None in argparse, so "not given" is visible; the help shows the dataclass's
default wherever the text says ``%(default)s``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import types
import typing
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from supernet.errors import ConfigError, EfnasError

__all__ = ["ConfigFlags", "Custom", "Flag", "check_type"]

C = TypeVar("C")

_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false", Path: "a path"}


@dataclass(frozen=True)
class Flag:
    """How one field appears on the command line."""

    help: str
    flag: str | None = None  # default: --field-name
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    parse: Callable[[str], Any] | None = None  # one word -> the field's value (default: from its type)
    text: Callable[[Any], str] | None = None  # the field's value -> the word that parse reads back
    group: str | None = None  # title of the argument group it is listed under


@dataclass(frozen=True)
class Custom:
    """A field with flags of its own (e.g. a search's budgets: --lut, --budget, --budget-ms)."""

    flags: str  # how an error about the field names it, e.g. "--budget"
    add: Callable[[Any], None]  # adds the arguments to a parser
    read: Callable[[argparse.Namespace], Any]  # the field's value, None when not given
    argv: Callable[[Any], list[str]]  # the words that give the value


def _base(hint: Any) -> tuple[Any, bool]:
    """The type a field holds without ``None``, and whether it is a homogeneous tuple/list
    (``str | os.PathLike[str]``, a path the Python API may give as a Path, reads as ``str``)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in args if typing.get_origin(a) is not os.PathLike and a is not os.PathLike] if str in args else args
        if len(args) == 1:
            hint = args[0]
    if typing.get_origin(hint) in (tuple, list):
        return typing.get_args(hint)[0], True
    return hint, False


def _fields(cls: type) -> dict[str, tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(cls) if f.init}


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def check_type(cls: type, name: str, value: Any) -> None:
    """Raise :class:`ConfigError` unless ``value`` (read from a file) fits field ``name`` of ``cls``."""
    field, hint = _fields(cls)[name]
    kind, many = _base(hint)
    items = value if many and isinstance(value, list) else [value]
    for item in items:
        if item is None and _default(field) is None:
            continue
        ok = isinstance(item, kind) and (kind is bool or not isinstance(item, bool))
        if kind is float and isinstance(item, int) and not isinstance(item, bool):
            ok = True
        if not ok or (kind is str and not item):
            raise ConfigError(name, f"must be {_WORDS.get(kind, kind.__name__)}, got {value!r}")
        if isinstance(item, float) and not math.isfinite(item):  # TOML and JSON readers accept nan and inf
            raise ConfigError(name, f"must be a finite number, got {value!r}")


class ConfigFlags(Generic[C]):
    """The command-line description of config class ``cls``: one entry per field, ``None`` for a
    field that has no flag (it keeps its default, or is given by the command itself)."""

    def __init__(self, cls: type[C], flags: Mapping[str, Flag | Custom | None]) -> None:
        self.cls = cls
        self._fields = _fields(cls)
        missing = sorted(set(self._fields) - set(flags))
        unknown = sorted(set(flags) - set(self._fields))
        if missing or unknown:
            # A programming error, caught by any test that builds the parser.
            raise TypeError(f"{cls.__name__}'s flags: no entry for {missing}, entries for non-fields {unknown}")
        self.flags = dict(flags)

    def flag(self, name: str) -> str:
        """How the command line spells field ``name``."""
        spec = self.flags.get(name)
        if isinstance(spec, Custom):
            return spec.flags
        return (spec.flag if spec and spec.flag else None) or "--" + name.replace("_", "-")

    def add_arguments(self, parser: argparse.ArgumentParser, names: Collection[str] | None = None) -> None:
        """Add the flags (only those of fields ``names``, when given: a command that puts flags of
        its own between them adds the rest in a second call)."""
        groups: dict[str, Any] = {}
        parser.set_defaults(config_flags=self)  # which description reads the Namespace back
        for name, spec in self.flags.items():
            if spec is None or (names is not None and name not in names):
                continue
            if isinstance(spec, Custom):
                spec.add(parser)
                continue
            target = parser if spec.group is None else groups.setdefault(spec.group, parser.add_argument_group(spec.group))
            field, hint = self._fields[name]
            target.add_argument(self.flag(name), dest=name, default=None, **self._kwargs(field, hint, spec))

    def _kwargs(self, field: dataclasses.Field, hint: Any, spec: Flag) -> dict[str, Any]:
        default = _default(field)
        text = spec.text(default) if spec.text and default not in (None, dataclasses.MISSING) else str(default)
        kwargs: dict[str, Any] = {"help": spec.help.replace("%(default)s", text)}
        if default is dataclasses.MISSING:
            kwargs["required"] = True
        kind, many = _base(hint)
        if kind is bool:
            return {**kwargs, "action": "store_true"}
        if many and spec.parse is None:
            kwargs["action"] = "append"
        kwargs["type"] = spec.parse or kind
        for key in ("metavar", "choices"):
            if getattr(spec, key) is not None:
                kwargs[key] = getattr(spec, key)
        return kwargs

    def from_args(self, args: argparse.Namespace, **fixed: Any) -> tuple[C, set[str]]:
        """The config the command line asks for (``fixed``: fields the command sets itself), and
        the names of the fields the user gave."""
        given: dict[str, Any] = {}
        for name, spec in self.flags.items():
            value = spec.read(args) if isinstance(spec, Custom) else getattr(args, name, None) if spec else None
            if value is not None:
                given[name] = tuple(value) if isinstance(value, list) else value
                self._check_finite(name, given[name])
        with self.speaking_flags():
            return self.cls(**given, **fixed), set(given)

    def _check_finite(self, name: str, value: Any) -> None:
        # argparse's float() reads "nan" and "inf"; no setting of ours means either.
        for item in value if isinstance(value, tuple) else (value,):
            if isinstance(item, float) and not math.isfinite(item):
                raise EfnasError(f"{self.flag(name)} must be a finite number, got {item}")

    @contextlib.contextmanager
    def speaking_flags(self) -> Iterator[None]:
        """A context in which a :class:`ConfigError` about a field with a flag becomes an error
        naming the flag (``eval_seed must ...`` -> ``--eval-seed must ...``)."""
        try:
            yield
        except ConfigError as exc:
            if self.flags.get(exc.field) is None:
                raise
            raise EfnasError(f"{self.flag(exc.field)} {exc.problem}") from None

    def to_argv(self, config: C, *, always: Collection[str] = ()) -> list[str]:
        """The flags that make :meth:`from_args` return ``config``: fields at their default are
        left out, except those named in ``always`` (to show a reader what can be changed)."""
        argv: list[str] = []
        for name, spec in self.flags.items():
            field, hint = self._fields[name]
            value, default = getattr(config, name), _default(field)
            if value == default and (name not in always or value is None or value is False):
                continue
            if spec is None or value is None:
                raise EfnasError(f"{self.cls.__name__}.{name} = {value!r} cannot be given on the command line")
            if isinstance(spec, Custom):
                argv += spec.argv(value)
            elif _base(hint)[0] is bool:
                if not value:
                    raise EfnasError(f"{self.cls.__name__}.{name} = False cannot be given on the command line")
                argv.append(self.flag(name))
            elif _base(hint)[1] and spec.parse is None:
                for item in value:
                    argv += [self.flag(name), str(item)]
            else:
                argv += [self.flag(name), (spec.text or str)(value)]
        return argv
