"""Architecture specs and search spaces: the data that flows through every part of the tool.

An :class:`ArchSpec` is one concrete EfficientFormer (what ``build_model`` builds, what the supernet
runs, what the latency table prices and what export writes). A :class:`SearchSpace` says which
values each dimension of a spec may take. Both are frozen, JSON-serialisable dataclasses.

Built-in spaces live as TOML files next to this module (``supernet/spaces/*.toml``); a user space
is the same format in a file of their own.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

from supernet.errors import EfnasError, read_user_data

__all__ = [
    "ArchSpec",
    "SearchSpace",
    "StageChoices",
    "builtin_space_names",
    "load_arch",
    "load_space",
    "stage_resolutions",
]

_SPEC_REQUIRED = ("widths", "depths", "num_meta3d")
_SPEC_OPTIONAL = ("mlp_ratios", "resolution", "num_classes", "attn_heads", "attn_key_dim")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not all(_is_int(v) for v in value):
        raise EfnasError(f"{what} must be a list of integers, got {value!r}")
    return tuple(value)


def conv_out_size(size: int) -> int:
    """Spatial size after a 3x3, stride-2, padding-1 convolution."""
    return (size - 1) // 2 + 1


def stage_resolutions(resolution: int, num_stages: int) -> tuple[int, ...]:
    """Feature-map side length of each stage: the stem divides by 4, every later stage by 2."""
    size = conv_out_size(conv_out_size(resolution))
    sizes = [size]
    for _ in range(num_stages - 1):
        size = conv_out_size(size)
        sizes.append(size)
    return tuple(sizes)


@dataclass(frozen=True)
class ArchSpec:
    """One EfficientFormer architecture, complete enough to build the model.

    ``widths``, ``depths`` and ``mlp_ratios`` have one entry per stage. The last ``num_meta3d``
    blocks of the last stage are Meta3D (attention) blocks; all other blocks are Meta4D (pooling)
    blocks. Lists given for the tuple fields are converted, so a spec read from JSON compares and
    hashes equal to one written in code.
    """

    widths: tuple[int, ...]
    depths: tuple[int, ...]
    num_meta3d: int
    mlp_ratios: tuple[int, ...] = (4, 4, 4, 4)
    resolution: int = 224
    num_classes: int = 1000
    attn_heads: int = 8
    attn_key_dim: int = 32

    def __post_init__(self) -> None:
        for name in ("widths", "depths", "mlp_ratios"):
            object.__setattr__(self, name, _int_tuple(getattr(self, name), f"architecture field '{name}'"))
        problems = self._problems()
        if problems:
            raise EfnasError(f"invalid architecture: {'; '.join(problems)}")

    def _problems(self) -> list[str]:
        problems = []
        n = len(self.widths)
        if n < 2:
            problems.append(f"it needs at least 2 stages, got {n}")
        if len(self.depths) != n or len(self.mlp_ratios) != n:
            problems.append(
                f"widths, depths and mlp_ratios need one entry per stage, got {n}, {len(self.depths)} "
                f"and {len(self.mlp_ratios)}"
            )
        for i, width in enumerate(self.widths, 1):
            if width <= 0 or width % 2:
                problems.append(f"width {width} of stage {i} must be a positive even number")
        for i, depth in enumerate(self.depths, 1):
            if depth < 1:
                problems.append(f"depth {depth} of stage {i} must be at least 1")
        for i, ratio in enumerate(self.mlp_ratios, 1):
            if ratio < 1:
                problems.append(f"MLP ratio {ratio} of stage {i} must be at least 1")
        for name in ("num_meta3d", "resolution", "num_classes", "attn_heads", "attn_key_dim"):
            if not _is_int(getattr(self, name)):
                problems.append(f"{name} must be an integer, got {getattr(self, name)!r}")
        if problems:
            return problems
        if not 0 <= self.num_meta3d <= self.depths[-1]:
            problems.append(
                f"num_meta3d {self.num_meta3d} must be between 0 and the last stage's depth {self.depths[-1]}"
            )
        if self.resolution < 8:
            problems.append(f"resolution {self.resolution} is below the minimum of 8")
        for name in ("num_classes", "attn_heads", "attn_key_dim"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1")
        return problems

    @property
    def num_stages(self) -> int:
        return len(self.widths)

    @property
    def stage_resolutions(self) -> tuple[int, ...]:
        return stage_resolutions(self.resolution, self.num_stages)

    def is_meta3d(self, stage: int, block: int) -> bool:
        """Whether block ``block`` of stage ``stage`` (both 0-based) is an attention block."""
        return stage == self.num_stages - 1 and block >= self.depths[-1] - self.num_meta3d

    def to_dict(self) -> dict[str, Any]:
        return {
            "widths": list(self.widths),
            "depths": list(self.depths),
            "num_meta3d": self.num_meta3d,
            "mlp_ratios": list(self.mlp_ratios),
            "resolution": self.resolution,
            "num_classes": self.num_classes,
            "attn_heads": self.attn_heads,
            "attn_key_dim": self.attn_key_dim,
        }

    def to_json(self) -> str:
        """Canonical JSON: equal specs give equal strings (usable as a cache or dedup key)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ArchSpec:
        if not isinstance(data, Mapping):
            raise EfnasError(f"an architecture must be a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(_SPEC_REQUIRED) - set(_SPEC_OPTIONAL))
        if unknown:
            raise EfnasError(
                f"unknown architecture field(s) {', '.join(unknown)}; "
                f"known fields are {', '.join(_SPEC_REQUIRED + _SPEC_OPTIONAL)}"
            )
        missing = [name for name in _SPEC_REQUIRED if name not in data]
        if missing:
            raise EfnasError(f"architecture is missing field(s) {', '.join(missing)}")
        return cls(**dict(data))

    @classmethod
    def from_json(cls, text: str) -> ArchSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise EfnasError(f"architecture is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    def label(self) -> str:
        """A short readable name, e.g. ``w48-96-224-448 d3-2-6-4 v1 r4``."""
        ratios = set(self.mlp_ratios)
        ratio = str(self.mlp_ratios[0]) if len(ratios) == 1 else "-".join(map(str, self.mlp_ratios))
        return (
            f"w{'-'.join(map(str, self.widths))} d{'-'.join(map(str, self.depths))} "
            f"v{self.num_meta3d} r{ratio}"
        )


def load_arch(path: str | Path) -> ArchSpec:
    """Read an architecture from a JSON file: a bare spec, or an object with an ``arch`` field
    (as in a search's ``best.json`` or an export's ``arch.json``)."""
    path = Path(path)
    data = read_user_data(path, "architecture file", format="json")
    if isinstance(data, dict) and "arch" in data:
        data = data["arch"]
    try:
        return ArchSpec.from_dict(data)
    except EfnasError as exc:
        raise EfnasError(f"{path}: {exc}") from None


def _describe_choices(values: tuple[int, ...]) -> str:
    if len(values) > 4:
        steps = {b - a for a, b in zip(values, values[1:])}
        if len(steps) == 1:
            return f"{values[0]} to {values[-1]} in steps of {steps.pop()}"
    return ", ".join(map(str, values))


@dataclass(frozen=True)
class StageChoices:
    """The values one stage may take."""

    widths: tuple[int, ...]
    depth_min: int
    depth_max: int
    mlp_ratios: tuple[int, ...]

    @property
    def depths(self) -> range:
        return range(self.depth_min, self.depth_max + 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "widths": list(self.widths),
            "depths": [self.depth_min, self.depth_max],
            "mlp_ratios": list(self.mlp_ratios),
        }


@dataclass(frozen=True)
class SearchSpace:
    """Which values each dimension of an :class:`ArchSpec` may take.

    The space also fixes what is not searched: input resolution, number of classes and the
    attention geometry. Its :meth:`fingerprint` identifies the architectures it contains, so that a
    latency table or a checkpoint can say which space it belongs to.
    """

    name: str
    stages: tuple[StageChoices, ...]
    meta3d_min: int
    meta3d_max: int
    resolution: int
    num_classes: int
    attn_heads: int = 8
    attn_key_dim: int = 32
    presets: tuple[tuple[str, ArchSpec], ...] = ()
    description: str = ""

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "space") -> SearchSpace:
        """Build a space from its file format (see ``supernet/spaces/tiny.toml``)."""
        return _parse_space(data, source)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "resolution": self.resolution,
            "num_classes": self.num_classes,
            "attn_heads": self.attn_heads,
            "attn_key_dim": self.attn_key_dim,
            "meta3d": [self.meta3d_min, self.meta3d_max],
            "stages": [stage.to_dict() for stage in self.stages],
            "presets": {
                name: {key: value for key, value in spec.to_dict().items() if key in _PRESET_KEYS}
                for name, spec in self.presets
            },
        }

    def with_num_classes(self, num_classes: int) -> SearchSpace:
        """The same space for a task with a different number of classes (same fingerprint)."""
        return dataclasses.replace(
            self,
            num_classes=num_classes,
            presets=tuple(
                (name, dataclasses.replace(spec, num_classes=num_classes)) for name, spec in self.presets
            ),
        )

    # -- identity -------------------------------------------------------------------------------

    def fingerprint(self) -> str:
        """A stable 12-hex-digit hash of the architectures this space contains.

        Name, description, presets and class count are left out: two files describing the same
        choices share latency tables, and a table measured for 1000 classes still prices the
        blocks of a 10-class model (only the head differs, and it has its own table entry).
        """
        identity = {
            "stages": [stage.to_dict() for stage in self.stages],
            "meta3d": [self.meta3d_min, self.meta3d_max],
            "resolution": self.resolution,
            "attn": [self.attn_heads, self.attn_key_dim],
        }
        blob = json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    @property
    def preset_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.presets)

    def preset(self, name: str) -> ArchSpec:
        for preset_name, spec in self.presets:
            if preset_name.lower() == name.lower():
                return spec
        known = ", ".join(self.preset_names) or "none"
        raise EfnasError(f"space '{self.name}' has no preset '{name}'; its presets are {known}")

    def size(self) -> int:
        """How many distinct architectures the space contains."""
        total = 1
        for stage in self.stages[:-1]:
            total *= len(stage.widths) * len(stage.mlp_ratios) * len(stage.depths)
        last = self.stages[-1]
        return total * len(last.widths) * len(last.mlp_ratios) * len(self.last_stage_choices())

    def meta3d_choices(self, depth: int) -> range:
        """How many of ``depth`` last-stage blocks may be Meta3D: the space's range, capped by the depth."""
        return range(self.meta3d_min, min(self.meta3d_max, depth) + 1)

    def last_stage_choices(self) -> tuple[tuple[int, int], ...]:
        """Every valid (last-stage depth, number of Meta3D blocks) pair, by depth then Meta3D count.

        The two are coupled (the Meta3D blocks are the last ``num_meta3d`` of the last stage's
        blocks), so this is the one place that says which pairs exist.
        """
        return tuple((depth, m) for depth in self.stages[-1].depths for m in self.meta3d_choices(depth))

    # -- membership -----------------------------------------------------------------------------

    def problems(self, spec: ArchSpec) -> list[str]:
        """Every way ``spec`` falls outside this space, each as a short sentence."""
        problems = []
        if spec.num_stages != self.num_stages:
            return [f"it has {spec.num_stages} stages but space '{self.name}' has {self.num_stages}"]
        for i, (stage, width, depth, ratio) in enumerate(
            zip(self.stages, spec.widths, spec.depths, spec.mlp_ratios), 1
        ):
            if width not in stage.widths:
                problems.append(
                    f"width {width} is not a choice of stage {i}: choices are {_describe_choices(stage.widths)}"
                )
            if depth not in stage.depths:
                problems.append(
                    f"depth {depth} is not a choice of stage {i}: choices are "
                    f"{stage.depth_min} to {stage.depth_max}"
                )
            if ratio not in stage.mlp_ratios:
                problems.append(
                    f"MLP ratio {ratio} is not a choice of stage {i}: choices are "
                    f"{_describe_choices(stage.mlp_ratios)}"
                )
        if not self.meta3d_min <= spec.num_meta3d <= self.meta3d_max:
            problems.append(
                f"{spec.num_meta3d} Meta3D blocks is not a choice: choices are "
                f"{self.meta3d_min} to {self.meta3d_max}"
            )
        for name, expected in (
            ("resolution", self.resolution),
            ("num_classes", self.num_classes),
            ("attn_heads", self.attn_heads),
            ("attn_key_dim", self.attn_key_dim),
        ):
            if getattr(spec, name) != expected:
                problems.append(f"{name} {getattr(spec, name)} is not the space's {name} {expected}")
        return problems

    def contains(self, spec: ArchSpec) -> bool:
        return not self.problems(spec)

    def validate(self, spec: ArchSpec) -> ArchSpec:
        """Return ``spec`` unchanged, or raise a one-line :class:`EfnasError` naming every problem."""
        problems = self.problems(spec)
        if problems:
            raise EfnasError(f"architecture is outside space '{self.name}': {'; '.join(problems)}")
        return spec

    # -- making specs ---------------------------------------------------------------------------

    def spec(
        self,
        widths: Iterable[int],
        depths: Iterable[int],
        num_meta3d: int,
        mlp_ratios: Iterable[int] | None = None,
    ) -> ArchSpec:
        """An ArchSpec of this space; MLP ratios default to each stage's largest choice."""
        ratios = tuple(mlp_ratios) if mlp_ratios is not None else tuple(s.mlp_ratios[-1] for s in self.stages)
        return self.validate(
            ArchSpec(
                widths=tuple(widths),
                depths=tuple(depths),
                num_meta3d=num_meta3d,
                mlp_ratios=ratios,
                resolution=self.resolution,
                num_classes=self.num_classes,
                attn_heads=self.attn_heads,
                attn_key_dim=self.attn_key_dim,
            )
        )

    def largest(self) -> ArchSpec:
        """Every dimension at its maximum: the network the supernet holds."""
        return self.spec(
            [s.widths[-1] for s in self.stages],
            [s.depth_max for s in self.stages],
            self.meta3d_max,
            [s.mlp_ratios[-1] for s in self.stages],
        )

    def smallest(self) -> ArchSpec:
        """Every dimension at its minimum (Meta3D blocks cost more than Meta4D ones at equal width)."""
        return self.spec(
            [s.widths[0] for s in self.stages],
            [s.depth_min for s in self.stages],
            self.meta3d_min,
            [s.mlp_ratios[0] for s in self.stages],
        )

    def narrowest_deepest(self) -> ArchSpec:
        """The smallest widths and MLP ratios at every stage's greatest depth: the corner of the
        space that neither the largest nor the smallest subnet trains (deep blocks at low width)."""
        return self.spec(
            [s.widths[0] for s in self.stages],
            [s.depth_max for s in self.stages],
            self.meta3d_min,
            [s.mlp_ratios[0] for s in self.stages],
        )

    def sample(self, rng: random.Random) -> ArchSpec:
        """A uniformly random choice per dimension (the Meta3D count drawn within the last depth)."""
        widths = [rng.choice(s.widths) for s in self.stages]
        depths = [rng.choice(s.depths) for s in self.stages]
        ratios = [rng.choice(s.mlp_ratios) for s in self.stages]
        num_meta3d = rng.choice(self.meta3d_choices(depths[-1]))  # draws as randint(min, max) did
        return self.spec(widths, depths, num_meta3d, ratios)

    def edit(
        self,
        spec: ArchSpec,
        *,
        stage: int | None = None,
        width: int | None = None,
        depth: int | None = None,
        mlp_ratio: int | None = None,
        num_meta3d: int | None = None,
    ) -> ArchSpec:
        """``spec`` with stage ``stage`` (0-based) and/or the Meta3D count changed, validated
        against this space (a one-line :class:`EfnasError` if the result leaves it)."""
        if (width, depth, mlp_ratio) != (None, None, None) and stage is None:
            raise EfnasError("an edit of a width, depth or MLP ratio needs the stage it applies to")
        if stage is not None and not 0 <= stage < self.num_stages:
            raise EfnasError(f"stage index {stage} is outside 0..{self.num_stages - 1} of space '{self.name}'")
        widths, depths, ratios = list(spec.widths), list(spec.depths), list(spec.mlp_ratios)
        for values, value in ((widths, width), (depths, depth), (ratios, mlp_ratio)):
            if value is not None:
                values[stage] = value  # type: ignore[index]
        return self.spec(widths, depths, spec.num_meta3d if num_meta3d is None else num_meta3d, ratios)


# -- file format -------------------------------------------------------------------------------

_SPACE_KEYS = {
    "name",
    "description",
    "resolution",
    "num_classes",
    "attn_heads",
    "attn_key_dim",
    "mlp_ratios",
    "meta3d",
    "stages",
    "presets",
}
_STAGE_KEYS = ("widths", "depths", "mlp_ratios")
_PRESET_KEYS = {"widths", "depths", "num_meta3d", "mlp_ratios"}


def _parse_choices(value: Any, where: str) -> tuple[int, ...]:
    if isinstance(value, Mapping):
        if set(value) != {"min", "max", "step"} or not all(_is_int(v) for v in value.values()):
            raise EfnasError(f"{where} must be a list of integers or {{min, max, step}}, got {dict(value)}")
        if value["step"] < 1 or value["min"] > value["max"]:
            raise EfnasError(f"{where} needs min <= max and step >= 1, got {dict(value)}")
        choices = tuple(range(value["min"], value["max"] + 1, value["step"]))
    else:
        choices = _int_tuple(value, where)
    if not choices or any(c < 1 for c in choices) or len(set(choices)) != len(choices):
        raise EfnasError(f"{where} must be distinct positive integers, got {list(choices)}")
    return tuple(sorted(choices))


def _parse_range(value: Any, where: str, lowest: int) -> tuple[int, int]:
    pair = _int_tuple(value, where)
    if len(pair) != 2 or not lowest <= pair[0] <= pair[1]:
        raise EfnasError(f"{where} must be [min, max] with {lowest} <= min <= max, got {list(pair)}")
    return pair[0], pair[1]


def _require_int(data: Mapping[str, Any], key: str, source: str, default: int | None = None) -> int:
    if key not in data:
        if default is None:
            raise EfnasError(f"{source}: missing key '{key}'")
        return default
    value = data[key]
    if not _is_int(value) or value < 1:
        raise EfnasError(f"{source}: '{key}' must be a positive integer, got {value!r}")
    return value


def _check_table(raw: Any, where: str, *, known: tuple[str, ...], required: tuple[str, ...]) -> None:
    if not isinstance(raw, Mapping):
        raise EfnasError(f"{where} must be a table")
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise EfnasError(f"{where}: unknown key(s) {', '.join(unknown)}; known keys are {', '.join(known)}")
    for key in required:
        if key not in raw:
            raise EfnasError(f"{where}: missing key '{key}'")


def _parse_stage(raw: Any, where: str, default_ratios: tuple[int, ...] | None) -> StageChoices:
    _check_table(raw, where, known=_STAGE_KEYS, required=("widths", "depths"))
    widths = _parse_choices(raw["widths"], f"{where} widths")
    if any(w % 2 for w in widths):
        raise EfnasError(f"{where} widths must be even (the stem's first conv has half the width), got {list(widths)}")
    depth_min, depth_max = _parse_range(raw["depths"], f"{where} depths", 1)
    if "mlp_ratios" in raw:
        ratios = _parse_choices(raw["mlp_ratios"], f"{where} mlp_ratios")
    elif default_ratios is not None:
        ratios = default_ratios
    else:
        raise EfnasError(f"{where}: no mlp_ratios (give them per stage or once at the top level)")
    return StageChoices(widths, depth_min, depth_max, ratios)


def _parse_preset(space: SearchSpace, raw: Any, where: str) -> ArchSpec:
    _check_table(raw, where, known=tuple(sorted(_PRESET_KEYS)), required=("widths", "depths", "num_meta3d"))
    try:
        return space.spec(raw["widths"], raw["depths"], raw["num_meta3d"], raw.get("mlp_ratios"))
    except EfnasError as exc:
        raise EfnasError(f"{where}: {exc}") from None


def _parse_space(data: Mapping[str, Any], source: str) -> SearchSpace:
    if not isinstance(data, Mapping):
        raise EfnasError(f"{source}: a space must be a table/object")
    unknown = sorted(set(data) - _SPACE_KEYS)
    if unknown:
        raise EfnasError(f"{source}: unknown key(s) {', '.join(unknown)}; known keys are {', '.join(sorted(_SPACE_KEYS))}")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise EfnasError(f"{source}: 'name' must be a non-empty string")
    default_ratios = _parse_choices(data["mlp_ratios"], f"{source}: mlp_ratios") if "mlp_ratios" in data else None
    raw_stages = data.get("stages")
    if not isinstance(raw_stages, list) or len(raw_stages) < 2:
        raise EfnasError(f"{source}: 'stages' must be a list of at least 2 stage tables")
    stages = [_parse_stage(raw, f"{source}: stage {i}", default_ratios) for i, raw in enumerate(raw_stages, 1)]
    meta3d_min, meta3d_max = _parse_range(data.get("meta3d", [0, 0]), f"{source}: meta3d", 0)
    if meta3d_max > stages[-1].depth_max:
        raise EfnasError(f"{source}: meta3d maximum {meta3d_max} exceeds the last stage's maximum depth {stages[-1].depth_max}")
    if meta3d_min > stages[-1].depth_min:
        raise EfnasError(f"{source}: meta3d minimum {meta3d_min} exceeds the last stage's minimum depth {stages[-1].depth_min}")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise EfnasError(f"{source}: 'description' must be a string")
    space = SearchSpace(
        name=name,
        stages=tuple(stages),
        meta3d_min=meta3d_min,
        meta3d_max=meta3d_max,
        resolution=_require_int(data, "resolution", source),
        num_classes=_require_int(data, "num_classes", source),
        attn_heads=_require_int(data, "attn_heads", source, 8),
        attn_key_dim=_require_int(data, "attn_key_dim", source, 32),
        description=description,
    )
    raw_presets = data.get("presets", {})
    if not isinstance(raw_presets, Mapping):
        raise EfnasError(f"{source}: 'presets' must be a table of named architectures")
    presets = tuple((key, _parse_preset(space, raw, f"{source}: preset {key}")) for key, raw in raw_presets.items())
    return dataclasses.replace(space, presets=presets)


def builtin_space_names() -> tuple[str, ...]:
    files = resources.files("supernet") / "spaces"
    return tuple(sorted(p.name[: -len(".toml")] for p in files.iterdir() if p.name.endswith(".toml")))


def load_space(name_or_path: str | Path) -> SearchSpace:
    """A built-in space by name (``efficientformer-v1``, ``tiny``) or a user space from a TOML/JSON file."""
    text_name = str(name_or_path)
    if text_name in builtin_space_names():
        text = (resources.files("supernet") / "spaces" / f"{text_name}.toml").read_text()
        return _parse_space(tomllib.loads(text), f"built-in space {text_name}")
    path = Path(name_or_path)
    if path.suffix not in (".toml", ".json"):
        raise EfnasError(
            f"unknown space '{text_name}': built-in spaces are {', '.join(builtin_space_names())}, "
            "or give the path of a .toml or .json space file"
        )
    data = read_user_data(path, "space file")
    return _parse_space(data, f"space file {path}")
