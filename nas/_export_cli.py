"""``efnas export``: a searched (or preset) subnet out of the supernet, as files a deployment uses."""

from __future__ import annotations

import argparse
import dataclasses

from rich.table import Table

from supernet.cli import DocFormatter
from supernet.io import console

from nas._model_card import human_size
from nas.export import FORMATS, ExportConfig, ExportResult, export_subnet

__all__ = ["register"]

_DEFAULTS = {field.name: field.default for field in dataclasses.fields(ExportConfig)}


def _formats(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    return FORMATS if names == ("all",) else names


def register(subparsers: argparse._SubParsersAction) -> None:
    d = argparse.Namespace(**_DEFAULTS)
    parser = subparsers.add_parser(
        "export",
        help="export a subnet as PyTorch, TorchScript, ONNX and Core ML, each checked, with a model card",
        description=(
            "Extract one architecture from a trained supernet, re-estimate its BatchNorm statistics on "
            "training batches, optionally fine-tune it (distilled from the supernet's largest subnet), "
            "evaluate it, and write the requested formats into --out. Each written file is checked: "
            "model.pt reloads strictly into build_model (and into timm's EfficientFormer when the "
            "architecture is L1, L3 or L7); TorchScript and ONNX (run with onnxruntime) must match "
            "PyTorch within --tolerance; the Core ML package is reopened and its inputs, outputs and "
            "operations checked (and its prediction compared on macOS). The folder also gets arch.json, "
            "export.json (the full record) and model_card.md (accuracy, latency predicted by each "
            "--lut and measured here with onnxruntime, how the export was made).\n\n"
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
            "      --out exports/tiny-2ms --finetune-epochs 2\n"
            "  efnas export --supernet runs/v1 --preset L1 --formats onnx,coreml --coreml-precision fp32 \\\n"
            "      --coreml-input tensor --lut iphone12.json --out exports/l1 --force"
        ),
    )
    source = parser.add_argument_group("what to export (exactly one of --arch, --preset, --study)")
    parser.add_argument("--supernet", required=True, metavar="CKPT", help="supernet checkpoint, or the training run folder holding supernet.pt")
    source.add_argument("--arch", metavar="FILE", help="architecture JSON: a bare spec, or a file with an \"arch\" field (a search's best.json, an export's arch.json)")
    source.add_argument("--preset", metavar="NAME", help="a preset of the supernet's space, e.g. L1 (see `efnas presets`)")
    source.add_argument("--study", metavar="NAME", help="an Optuna study: its best feasible trial (constraints <= 0) is exported")
    source.add_argument("--storage", metavar="URL", help="Optuna storage of --study: a URL (sqlite:///runs/s/study.db, postgresql://...) or an SQLite file path")
    parser.add_argument("--out", required=True, metavar="DIR", help="export folder; must not exist (or be empty) unless --force")
    parser.add_argument("--force", action="store_true", help="replace an existing --out (only once the new export has succeeded)")
    parser.add_argument("--formats", type=_formats, default=d.formats, metavar="LIST",
                        help=f"comma-separated formats out of {', '.join(FORMATS)}, or all (default: all)")
    data = parser.add_argument_group("calibration, evaluation and fine-tuning")
    data.add_argument("--data", metavar="DATA", help="dataset: digits-mosaic, digits or imagefolder:PATH (default: the one the supernet was trained on, from its checkpoint)")
    data.add_argument("--calib-batches", metavar="N", type=int, default=d.calib_batches,
                      help="training batches for BatchNorm recalibration; 0 keeps the supernet's statistics (default: %(default)s)")
    data.add_argument("--batch-size", metavar="N", type=int, default=d.batch_size, help="images per batch (default: %(default)s)")
    data.add_argument("--val-samples", type=int, metavar="N",
                      help="evaluate on a fixed subset of N validation images drawn with --seed (default: all of them)")
    data.add_argument("--seed", metavar="N", type=int, default=d.seed,
                      help="seed of the calibration batches, the fine-tune order, the validation subset and the check inputs (default: %(default)s)")
    data.add_argument("--finetune-epochs", metavar="N", type=int, default=d.finetune_epochs,
                      help="fine-tune the subnet for N epochs, distilled from the largest subnet (AdamW, cosine) (default: %(default)s)")
    data.add_argument("--finetune-lr", metavar="LR", type=float, default=d.finetune_lr, help="peak fine-tune learning rate (default: %(default)s)")
    data.add_argument("--finetune-steps", type=int, metavar="N", help="cap on the fine-tune steps of each epoch, for quick runs")
    data.add_argument("--device", default=d.device, choices=("cpu", "cuda"),
                      help="where calibration, fine-tuning and evaluation run; the checks run on the CPU (default: %(default)s)")
    data.add_argument("--threads", metavar="N", type=int, help="torch intra-op CPU threads (default: torch's choice)")
    fmt = parser.add_argument_group("formats and checks")
    fmt.add_argument("--coreml-precision", default=d.coreml_precision, choices=("fp16", "fp32"),
                     help="compute precision of the Core ML ML Program (default: %(default)s)")
    fmt.add_argument("--coreml-input", default=d.coreml_input, choices=("image", "tensor"),
                     help="image: takes an RGB image, the normalisation built in; tensor: takes the normalised tensor like the other formats (default: %(default)s)")
    fmt.add_argument("--tolerance", metavar="X", type=float, default=d.tolerance,
                     help="largest |Δ| allowed between TorchScript/ONNX and PyTorch logits, fp32 (default: %(default)s)")
    lat = parser.add_argument_group("latency on the model card")
    lat.add_argument("--lut", action="append", default=[], metavar="FILE",
                     help="latency table to predict the latency with (repeatable; default: the shipped onnxruntime CPU table of the space, if any)")
    lat.add_argument("--latency-rounds", metavar="N", type=int, default=d.latency_rounds,
                     help="rounds of 1 warm-up + 3 timed onnxruntime runs (1 thread) measured here; 0 skips it (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    config = ExportConfig(
        supernet=args.supernet,
        out=args.out,
        arch=args.arch,
        preset=args.preset,
        study=args.study,
        storage=args.storage,
        formats=args.formats,
        force=args.force,
        data=args.data,
        calib_batches=args.calib_batches,
        batch_size=args.batch_size,
        val_samples=args.val_samples,
        seed=args.seed,
        finetune_epochs=args.finetune_epochs,
        finetune_lr=args.finetune_lr,
        finetune_steps=args.finetune_steps,
        coreml_precision=args.coreml_precision,
        coreml_input=args.coreml_input,
        luts=tuple(args.lut),
        latency_rounds=args.latency_rounds,
        tolerance=args.tolerance,
        device=args.device,
        threads=args.threads,
    )
    result = export_subnet(config, show_progress=not args.no_progress)
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
