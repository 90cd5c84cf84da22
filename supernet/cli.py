"""``efnas`` subcommands that belong to the supernet package: ``presets``, ``space``."""

from __future__ import annotations

import argparse
import json

from rich.table import Table

from supernet.io import console
from supernet.model import count_macs, count_params
from supernet.space import builtin_space_names, load_space

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    presets = subparsers.add_parser(
        "presets",
        help="table of a space's preset architectures (L1/L3/L7) with parameters and GMACs",
        description=(
            "Show the preset architectures of a search space. For the default space these are the "
            "published EfficientFormer L1, L3 and L7; parameters and GMACs are computed from each "
            "architecture, not copied from the paper."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  efnas presets\n  efnas presets --space tiny --json",
    )
    presets.add_argument("--space", default="efficientformer-v1", help="built-in space name or a space file (default: %(default)s)")
    presets.add_argument("--json", action="store_true", help="print the presets as JSON architectures instead of a table")
    presets.set_defaults(func=_run_presets)

    space = subparsers.add_parser(
        "space",
        help="describe a search space (choices per stage, size, fingerprint)",
        description=(
            "Describe a search space: the width, depth and MLP-ratio choices of every stage, the "
            "number of Meta3D blocks, its size and its fingerprint. Built-in spaces: "
            f"{', '.join(builtin_space_names())}. A user space is a TOML or JSON file in the same "
            "format as supernet/spaces/tiny.toml."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  efnas space tiny\n  efnas space my_space.toml --json",
    )
    space.add_argument("space", nargs="?", default="efficientformer-v1", help="built-in space name or a space file (default: %(default)s)")
    space.add_argument("--json", action="store_true", help="print the space in its file format, as JSON")
    space.set_defaults(func=_run_space)


def _run_presets(args: argparse.Namespace) -> int:
    space = load_space(args.space)
    if args.json:
        console.print_json(json.dumps({name: spec.to_dict() for name, spec in space.presets}))
        return 0
    table = Table(title=f"Presets of space '{space.name}' ({space.resolution}x{space.resolution}, {space.num_classes} classes)")
    for column in ("preset", "widths", "depths", "Meta3D", "MLP ratios", "params", "GMACs"):
        table.add_column(column, justify="right" if column in ("params", "GMACs", "Meta3D") else "left")
    for name, spec in space.presets:
        table.add_row(
            name,
            " / ".join(map(str, spec.widths)),
            " / ".join(map(str, spec.depths)),
            str(spec.num_meta3d),
            " / ".join(map(str, spec.mlp_ratios)),
            f"{count_params(spec):,}",
            f"{count_macs(spec) / 1e9:.3f}",
        )
    console.print(table)
    return 0


def _run_space(args: argparse.Namespace) -> int:
    space = load_space(args.space)
    if args.json:
        console.print_json(json.dumps(space.to_dict()))
        return 0
    table = Table(title=f"Space '{space.name}' — {space.description}" if space.description else f"Space '{space.name}'")
    for column in ("stage", "resolution", "widths", "depths", "MLP ratios"):
        table.add_column(column)
    for i, (stage, res) in enumerate(zip(space.stages, space.largest().stage_resolutions), 1):
        table.add_row(
            str(i),
            f"{res}x{res}",
            ", ".join(map(str, stage.widths)),
            f"{stage.depth_min}–{stage.depth_max}",
            ", ".join(map(str, stage.mlp_ratios)),
        )
    console.print(table)
    console.print(
        f"Meta3D blocks at the end of stage {space.num_stages}: {space.meta3d_min}–{space.meta3d_max}; "
        f"input {space.resolution}x{space.resolution}, {space.num_classes} classes, attention "
        f"{space.attn_heads} heads x key dim {space.attn_key_dim}"
    )
    console.print(f"{space.size():,} architectures; fingerprint {space.fingerprint()}; presets: {', '.join(space.preset_names) or 'none'}")
    console.print(f"largest:  {space.largest().label()}  ({count_params(space.largest()):,} params)")
    console.print(f"smallest: {space.smallest().label()}  ({count_params(space.smallest()):,} params)")
    return 0
