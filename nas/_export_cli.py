"""``efnas export``: a searched (or preset) subnet out of the supernet, as files a deployment uses."""

from __future__ import annotations

import argparse

from rich.table import Table

from supernet.cli import DocFormatter
from supernet.cliconfig import ConfigFlags, Flag
from supernet.io import console, progress_lines

from nas._model_card import human_size
from nas.export import FORMATS, ExportConfig, ExportResult, export_subnet

__all__ = ["EXPORT_FLAGS", "print_summary", "register"]


def _formats(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    return FORMATS if names == ("all",) else names


_SOURCE = "what to export (exactly one of --arch, --preset, --study)"
_DATA = "calibration, evaluation and fine-tuning"
_FORMATS = "formats and checks"
_LATENCY = "latency on the model card"
_CARD = "model card"

# In the order of `efnas export --help`.
EXPORT_FLAGS = ConfigFlags(ExportConfig, {
    "supernet": Flag("supernet checkpoint, or the training run folder holding supernet.pt", metavar="CKPT"),
    "arch": Flag("architecture JSON: a bare spec, or a file with an \"arch\" field (a search's best.json, an export's arch.json)",
                 metavar="FILE", group=_SOURCE),
    "preset": Flag("a preset of the supernet's space, e.g. L1 (see `efnas presets`)", metavar="NAME", group=_SOURCE),
    "study": Flag("an Optuna study: its best feasible trial (constraints <= 0) is exported", metavar="NAME", group=_SOURCE),
    "storage": Flag("Optuna storage of --study: a URL (sqlite:///runs/s/study.db, postgresql://...) or an SQLite file path",
                    metavar="URL", group=_SOURCE),
    "out": Flag("export folder; must not exist (or be empty) unless --force", metavar="DIR"),
    "force": Flag("replace an existing --out (only once the new export has succeeded)"),
    "formats": Flag(f"comma-separated formats out of {', '.join(FORMATS)}, or all (default: all)", metavar="LIST",
                    parse=_formats, text=",".join),
    "data": Flag("dataset: digits-mosaic, digits or imagefolder:PATH (default: the one the supernet was trained on, from its checkpoint)",
                 metavar="DATA", group=_DATA),
    "calib_batches": Flag("training batches for BatchNorm recalibration; 0 keeps the supernet's statistics (default: %(default)s)",
                          metavar="N", group=_DATA),
    "batch_size": Flag("images per batch (default: %(default)s)", metavar="N", group=_DATA),
    "val_subset": Flag("evaluate on a fixed subset of N validation images drawn with --seed, as a search scores (default: all of them)",
                        metavar="N", group=_DATA),
    "seed": Flag("seed of the calibration batches, the fine-tune order, the validation subset and the check inputs (default: %(default)s)",
                 metavar="N", group=_DATA),
    "finetune_epochs": Flag("fine-tune the subnet for N epochs, distilled from the largest subnet (AdamW, cosine) (default: %(default)s)",
                            metavar="N", group=_DATA),
    "finetune_lr": Flag("peak fine-tune learning rate (default: %(default)s)", metavar="LR", group=_DATA),
    "finetune_steps": Flag("cap on the fine-tune steps of each epoch, for quick runs", metavar="N", group=_DATA),
    "device": Flag("where calibration, fine-tuning and evaluation run; the checks run on the CPU (default: %(default)s)",
                   choices=("cpu", "cuda"), group=_DATA),
    "threads": Flag("torch intra-op CPU threads (default: torch's choice)", metavar="N", group=_DATA),
    "coreml_precision": Flag("compute precision of the Core ML ML Program (default: %(default)s)", choices=("fp16", "fp32"), group=_FORMATS),
    "coreml_input": Flag("image: takes an RGB image, the normalisation built in; tensor: takes the normalised tensor like the "
                         "other formats (default: %(default)s)", choices=("image", "tensor"), group=_FORMATS),
    "tolerance": Flag("largest |Δ| allowed between TorchScript/ONNX and PyTorch logits, fp32 (default: %(default)s)",
                      metavar="X", group=_FORMATS),
    "luts": Flag("latency table to predict the latency with (repeatable; default: the search's own tables for --study, "
                 "else the shipped onnxruntime CPU table of the space, if any)",
                 flag="--lut", metavar="FILE", group=_LATENCY),
    "latency_rounds": Flag("rounds of 1 warm-up + 3 timed onnxruntime runs (1 thread) measured here; 0 skips it (default: %(default)s)",
                           metavar="N", group=_LATENCY),
    "author": Flag("who made the model, on the model card", metavar="NAME", group=_CARD),
    "license": Flag("Hugging Face license id of the weights (apache-2.0, mit, cc-by-4.0, other, ...): the card's front matter "
                    "and config.json", metavar="ID", group=_CARD),
})
"""The flags of ``efnas export``, one per field of :class:`ExportConfig`."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a subnet as PyTorch, safetensors (timm/hub), TorchScript, ONNX and Core ML, each checked, with a model card",
        description=(
            "Extract one architecture from a trained supernet, re-estimate its BatchNorm statistics on "
            "training batches, optionally fine-tune it (distilled from the supernet's largest subnet), "
            "evaluate it, and write the requested formats into --out. Each written file is checked: "
            "model.pt reloads strictly into build_model (and into timm's EfficientFormer whenever timm "
            "can build the shape); model.safetensors with a hub-style config.json loads with "
            "timm.create_model('local-dir:OUT', pretrained=True); TorchScript and ONNX (run with onnxruntime) must match "
            "PyTorch within --tolerance; the Core ML package is reopened and its inputs, outputs and "
            "operations checked (and its prediction compared on macOS); it is a classifier when the class "
            "names are known. The folder also gets arch.json (with the eval transform in timm's "
            "pretrained_cfg form), export.json (the full record) and model_card.md (Hugging Face front "
            "matter; accuracy, latency predicted by each table and measured here with onnxruntime, how "
            "the export was made).\n\n"
            "Everything is written to a hidden folder next to --out and renamed to --out only when all "
            "of it succeeded: an error leaves nothing behind, and an existing --out is replaced only "
            "with --force. See docs/export.md for loading the outputs in timm, onnxruntime and Xcode."
        ),
        formatter_class=DocFormatter,
        epilog=(
            "examples:\n"
            "  efnas export --supernet runs/tiny --preset L1 --out exports/tiny-l1\n"
            "  efnas export --supernet runs/tiny --arch runs/search/best.json --out exports/best\n"
            "  efnas export --supernet runs/tiny --study tiny-2ms --storage sqlite:///runs/search/study.db \\\n"
            "      --out exports/tiny-2ms --finetune-epochs 2 --author 'Jane Doe' --license apache-2.0\n"
            "  efnas export --supernet runs/v1 --preset L1 --formats onnx,coreml --coreml-precision fp32 \\\n"
            "      --coreml-input tensor --lut iphone12.json --out exports/l1 --force"
        ),
    )
    EXPORT_FLAGS.add_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no live progress bar: log lines instead, as when the output is not a terminal")
    parser.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    config, _ = EXPORT_FLAGS.from_args(args)
    with progress_lines(enabled=args.no_progress):
        result = export_subnet(config)
    print_summary(result)
    return 0


def print_summary(result: ExportResult) -> None:
    """The rich table of what was written, with sizes and checks, and the headline numbers."""
    record = result.record
    table = Table(title=f"Export of {result.spec.label()} -> {result.out}")
    table.add_column("file")
    table.add_column("size", justify="right")
    table.add_column("check")
    for item in result.files:
        table.add_row(item.name, human_size(item.size), item.check)
    console.print(table)
    metrics = record["metrics"]
    line = f"params {record['params']:,}, {record['macs'] / 1e6:,.1f} M MACs; val top-1 {100 * metrics['val_top1']:.2f}%"
    if record["finetune"]:
        line += f" (inherited {100 * metrics['val_top1_inherited']:.2f}%)"
    console.print(line)
    latency = record["latency"]
    if latency["measured"]:
        measured = latency["measured"]
        console.print(f"latency here (onnxruntime, 1 thread): median {measured['median_ms']:.3f} ms, p10 {measured['p10_ms']:.3f} ms")
    for row in latency["predicted"]:
        if row.get("predicted_ms") is not None:
            console.print(f"predicted by {row['path']} ({row['device']}, {row['backend']}): {row['predicted_ms']:.3f} ms")
    console.print(f"exported in {result.seconds:.1f} s; model card: {result.out / 'model_card.md'}")
