"""``efnas`` subcommands that belong to the supernet package: ``presets``, ``space``."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import textwrap

from rich.table import Table

from supernet.cliconfig import ConfigFlags, Flag
from supernet.io import console, progress_lines
from supernet.model import count_macs, count_params
from supernet.space import builtin_space_names, load_space

__all__ = ["DocFormatter", "register", "train_flags"]


class DocFormatter(argparse.RawDescriptionHelpFormatter):
    """Wraps the description's paragraphs to the terminal, keeps the epilog (examples) as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.lstrip().startswith(("example", "examples")):
            return super()._fill_text(text, width, indent)
        paragraphs = [" ".join(p.split()) for p in text.split("\n\n")]
        return "\n\n".join(textwrap.fill(p, width, initial_indent=indent, subsequent_indent=indent) for p in paragraphs)


def register(subparsers: argparse._SubParsersAction) -> None:
    presets = subparsers.add_parser(
        "presets",
        help="table of a space's preset architectures (L1/L3/L7) with parameters and GMACs",
        description=(
            "Show the preset architectures of a search space. For the default space these are the "
            "published EfficientFormer L1, L3 and L7; parameters and GMACs are computed from each "
            "architecture, not copied from the paper."
        ),
        formatter_class=DocFormatter,
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
        formatter_class=DocFormatter,
        epilog="examples:\n  efnas space tiny\n  efnas space my_space.toml --json",
    )
    space.add_argument("space", nargs="?", default="efficientformer-v1", help="built-in space name or a space file (default: %(default)s)")
    space.add_argument("--json", action="store_true", help="print the space in its file format, as JSON")
    space.set_defaults(func=_run_space)

    _register_train(subparsers)


_TRAIN_HELP = {
    "space": "search space: a built-in name (tiny, efficientformer-v1) or a .toml/.json space file",
    "data": "training data: digits-mosaic (embedded default), digits, or imagefolder:PATH with PATH/train/<class>/ and PATH/val/<class>/",
    "out": "run folder; holds supernet.pt (the checkpoint), metrics.jsonl and config.json",
    "epochs": "training epochs (0 writes the initialised supernet, e.g. after --init-from, without training, then validates it unless --no-validate)",
    "steps_per_epoch": "cap on the steps of each epoch, for quick trials",
    "batch_size": "images per step and per process",
    "lr": "peak AdamW learning rate, reached after the warm-up, then cosine decay to zero",
    "weight_decay": "AdamW weight decay on conv and linear weights (not on norms, biases, layer scales)",
    "warmup_epochs": "linear learning-rate warm-up, in epochs (fractions allowed)",
    "label_smoothing": "label smoothing of the largest subnet's loss",
    "num_random": "random subnets trained each step besides the largest and the smallest (sandwich rule)",
    "kd_temperature": "softmax temperature of the in-place distillation",
    "subnet_label_weight": "share of the label loss in the other subnets' loss (the rest is distillation from the largest)",
    "subnet_weight": "weight of each other subnet's loss relative to the largest subnet's",
    "meta4d_largest": "also train the largest widths with the fewest Meta3D blocks each step (the last stage's Meta4D weights at full width)",
    "worst_of": "each random subnet is the worst on the step's batch of this many candidates of about the same size (AttentiveNAS's WorstUp; 1: uniform, as the sandwich rule)",
    "narrowest_deepest": "also train the narrowest widths and MLP ratios at every stage's greatest depth each step (deep blocks at low width)",
    "largest_only_epochs": "epochs that train the largest subnet alone before the sandwich starts (a trained teacher first)",
    "final_lr_ratio": "the cosine decay ends at this fraction of --lr instead of zero",
    "teacher": "state dict of a static EfficientFormer (timm layout) distilled into every subnet instead of the largest subnet's outputs",
    "init_from": "warm start: a timm (or exported) EfficientFormer state dict loaded into the supernet at its own architecture",
    "seed": "seed of the initial weights, the data order and the sampled subnets",
    "checkpoint_every": "steps between checkpoints (always one at the end)",
    "eval_every": "steps between validations of the largest and smallest subnets (0: at the end of every epoch)",
    "skip_validation": "never validate (no BN recalibration, no val top-1 in the checkpoint): the quickest way to a "
                       "checkpoint, e.g. --epochs 0 --init-from on a large validation set",
    "calib_batches": "training batches used to re-estimate BatchNorm statistics before each validation",
    "workers": "data-loading worker processes (image folders only; they stay up between epochs)",
    "channels_last": "channels-last (NHWC) memory layout for the supernet and the batches: faster convolutions on GPUs",
    "compile": "torch.compile each block of the supernet (dynamic shapes, a few graphs for all subnets; the first steps compile)",
    "device": "auto (CUDA when available), cpu or cuda; bf16 autocast on CUDA",
    "threads": "intra-op CPU threads (on a shared or busy machine, fewer threads than cores is much faster)",
}


@functools.cache
def train_flags() -> ConfigFlags:
    """The flags of ``efnas train``: one per field of :class:`supernet.train.TrainConfig`."""
    from supernet.train import TrainConfig

    spelled = {"skip_validation": "--no-validate"}
    return ConfigFlags(TrainConfig, {
        field.name: Flag(f"{_TRAIN_HELP[field.name]} (default: %(default)s)", metavar=field.name.upper(), flag=spelled.get(field.name))
        for field in dataclasses.fields(TrainConfig)
    })


def _register_train(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a weight-sharing supernet once (sandwich rule + in-place distillation)",
        description=(
            "Train the supernet of a search space: every step trains the largest subnet on the labels, "
            "and the smallest plus --num-random random subnets on the largest one's soft outputs. "
            "Checkpoints are written atomically to OUT/supernet.pt; a killed run continues with the same "
            "command plus --resume and ends with the same weights as an uninterrupted one. Under "
            "`torchrun --nproc-per-node N` the same command trains with DistributedDataParallel "
            "(gloo on CPU, NCCL on GPU)."
        ),
        formatter_class=DocFormatter,
        epilog=(
            "examples:\n"
            "  efnas train --space tiny --out runs/tiny                 # embedded digits-mosaic task\n"
            "  efnas train --space tiny --out runs/tiny --resume        # continue a killed run\n"
            "  efnas train --space efficientformer-v1 --data imagefolder:/data/imagenet \\\n"
            "      --init-from efficientformer_l7.pth --out runs/v1     # warm start from timm's L7\n"
            "  torchrun --nproc-per-node 2 -m nas.cli train --space tiny --out runs/ddp"
        ),
    )
    train_flags().add_arguments(parser)
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no live progress bar: log lines instead, as when the output is not a terminal")
    parser.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from supernet.train import train

    config, given = train_flags().from_args(args)
    with progress_lines(enabled=args.no_progress):
        result = train(config, resume=args.resume, explicit=given)
    if int(os.environ.get("RANK", "0")) == 0:
        metrics = result.metrics
        table = Table(title=f"Supernet of space '{result.space.name}' — {result.checkpoint}")
        table.add_column("subnet")
        table.add_column("architecture")
        table.add_column("params", justify="right")
        table.add_column("val top-1", justify="right")
        for name, spec in (("largest", result.space.largest()), ("smallest", result.space.smallest())):
            top1 = metrics.get(f"val_top1_{name}")
            table.add_row(name, spec.label(), f"{count_params(spec):,}", f"{100 * top1:.2f}%" if top1 is not None else "-")
        console.print(table)
    return 0


def _print_json(data: object) -> int:
    console.print_json(json.dumps(data))
    return 0


def _run_presets(args: argparse.Namespace) -> int:
    space = load_space(args.space)
    if args.json:
        return _print_json({name: spec.to_dict() for name, spec in space.presets})
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
        return _print_json(space.to_dict())
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
