#!/usr/bin/env python3
"""Benchmark: how long `efnas export` takes for EfficientFormer-L1 (v1 space, 224 px, 1000 classes)
and how large each output is.

There is no trained v1 supernet on this machine, so the script first writes one the way
`efnas train --epochs 0` would (initialised weights, same checkpoint format) for an image folder of
generated pictures with 1000 classes (2 training and 1 validation image each). It then runs the
real command, in a fresh process, with the default calibration (8 batches of 128) and every
format, and a second time for a Core ML fp32 tensor-input package only:

    efnas export --supernet CKPT --preset L1 --out OUT --threads T
    efnas export --supernet CKPT --preset L1 --out OUT32 --formats coreml --coreml-precision fp32 \\
        --coreml-input tensor --calib-batches 0 --val-subset 128 --latency-rounds 0 --threads T

The accuracy of random weights on random pictures means nothing; the timings and sizes do.

    python bench/export_l1.py                 # one thread
    python bench/export_l1.py --threads 2

Writes docs/benchmarks/export_l1.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.table import Table  # noqa: E402

from nas._model_card import human_size  # noqa: E402
from supernet import load_space  # noqa: E402
from supernet.checkpoint import save_checkpoint  # noqa: E402
from supernet.data import load_data  # noqa: E402
from supernet.elastic import Supernet  # noqa: E402
from supernet.io import atomic_write_json, atomic_write_text, console, provenance  # noqa: E402
from supernet.train import TrainConfig  # noqa: E402


def write_images(root: Path, classes: int, seed: int) -> None:
    from torchvision.io import write_png

    generator = torch.Generator().manual_seed(seed)
    for split, count in (("train", 2), ("val", 1)):
        for index in range(classes):
            folder = root / split / f"class{index:04d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                image = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8, generator=generator)
                write_png(image, str(folder / f"{i}.png"))


def write_checkpoint(path: Path, images: Path, seed: int) -> None:
    """What `efnas train --space efficientformer-v1 --epochs 0 --data imagefolder:IMAGES` saves."""
    config = TrainConfig(space="efficientformer-v1", data=f"imagefolder:{images}", out=str(path.parent), epochs=0, seed=seed)
    space = load_space(config.space)
    data = load_data(config.data, space.resolution, seed=seed)
    space = space.with_num_classes(data.num_classes)
    torch.manual_seed(seed)
    supernet = Supernet(space)
    save_checkpoint(
        path,
        {
            "model": supernet.state_dict(),
            "step": 0,
            "total_steps": 0,
            "finished": True,
            "space": space.to_dict(),
            "fingerprint": space.fingerprint(),
            "config": dataclasses.asdict(config),
            "data": {**data.describe(), "class_names": list(data.class_names)},
            "metrics": {},
            "provenance": provenance(),
        },
    )


def run_export(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "nas.cli", "export", *argv, "--no-progress"], check=True,
                   env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the export (default: %(default)s)")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="docs/benchmarks/export_l1")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="efnas-bench-export-") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        write_images(work / "images", args.classes, args.seed)
        checkpoint = work / "v1" / "supernet.pt"
        write_checkpoint(checkpoint, work / "images", args.seed)
        setup_s = time.perf_counter() - started
        checkpoint_bytes = checkpoint.stat().st_size
        common = ["--supernet", str(checkpoint), "--preset", "L1", "--threads", str(args.threads)]
        main_cmd = [*common, "--out", str(work / "l1")]
        fp32_cmd = [*common, "--out", str(work / "l1-fp32"), "--formats", "coreml", "--coreml-precision", "fp32",
                    "--coreml-input", "tensor", "--calib-batches", "0", "--val-subset", "128", "--latency-rounds", "0"]
        wall = run_export(main_cmd)
        wall_fp32 = run_export(fp32_cmd)
        record = json.loads((work / "l1" / "export.json").read_text())
        record_fp32 = json.loads((work / "l1-fp32" / "export.json").read_text())
        sizes = {item["name"]: item["size"] for item in record["files"]}
        for name in ("model_card.md", "export.json"):
            sizes[name] = (work / "l1" / name).stat().st_size
        fp32_size = record_fp32["files"][0]["size"]

    result = {
        "goal": "closing numbers of issue 6: export time and output sizes for an L1 export (v1 space, 224 px)",
        "arch": record["arch"],
        "params": record["params"],
        "macs": record["macs"],
        "threads": args.threads,
        "checkpoint_bytes": checkpoint_bytes,
        "setup_seconds": round(setup_s, 1),
        "export_wall_seconds": round(wall, 1),
        "export_seconds": record["seconds"],
        "sizes_bytes": sizes,
        "coreml_fp32_tensor": {"wall_seconds": round(wall_fp32, 1), "seconds": record_fp32["seconds"], "size_bytes": fp32_size},
        "checks": {name: item["checks"] for name, item in record["formats"].items()},
        "latency": record["latency"],
        "commands": {"all formats": "efnas export " + " ".join(main_cmd), "coreml fp32": "efnas export " + " ".join(fp32_cmd)},
        "provenance": provenance(("timm",)),
    }
    out = Path(args.out)
    atomic_write_json(out.with_suffix(".json"), result)

    table = Table(title=f"efnas export --preset L1 (v1, 224 px, {args.classes} classes), {args.threads} thread(s)")
    table.add_column("file")
    table.add_column("size", justify="right")
    for name, size in sizes.items():
        table.add_row(name, human_size(size))
    table.add_row("model.mlpackage (fp32, tensor input)", human_size(fp32_size))
    console.print(table)
    steps = {k: v for k, v in record["seconds"].items() if k != "total"}
    console.print(f"export: {wall:.1f} s wall (command, imports included), {record['seconds']['total']:.1f} s inside export(); steps: {steps}")

    measured = record["latency"]["measured"]
    compare = record["latency"]["cpu_comparison"]
    lines = [
        "# Export time and sizes: EfficientFormer-L1",
        "",
        f"Goal: the closing numbers of issue 6, the time `efnas export` takes for L1 (v1 space, 224 px, "
        f"{args.classes} classes) and the size of every output, on this machine.",
        "",
        "Setup: a v1 supernet checkpoint written as `efnas train --epochs 0` writes it (initialised weights) for an "
        f"image folder of generated pictures ({args.classes} classes, 2 training and 1 validation image each); "
        f"accuracy is therefore meaningless, time and size are not. The checkpoint is {human_size(checkpoint_bytes)} "
        "(the whole v1 supernet; the export reads it and hashes it for the model card).",
        "",
        "## Result",
        "",
        f"- all formats, default calibration ({record['calibration']['batches']} batches of {record['calibration']['batch_size']}), "
        f"evaluation on {record['data']['validation']['images']:,} "
        f"images, latency measured: **{wall:.1f} s** for the command ({record['seconds']['total']:.1f} s inside `export()`)",
        "- time per step (s): " + ", ".join(f"{k} {v:.1f}" for k, v in steps.items()),
        f"- Core ML fp32 with tensor input only (no calibration): {wall_fp32:.1f} s for the command",
        f"- onnxruntime latency of the export here (1 thread): median {measured['median_ms']:.2f} ms, p10 {measured['p10_ms']:.2f} ms"
        + (
            f"; the CPU table `{Path(compare['table']).name}` predicts {compare['predicted_ms']:.2f} ms ({compare['statistic']}), "
            f"measured/predicted {compare['ratio']:.3f}"
            if compare
            else ""
        ),
        "",
        "| file | size |",
        "|---|---|",
        *(f"| `{name}` | {human_size(size)} |" for name, size in sizes.items()),
        f"| `model.mlpackage` (fp32, tensor input) | {human_size(fp32_size)} |",
        "",
        "Checks: " + "; ".join(
            f"{name}: max |Δ| {item['checks']['max_abs_diff']:.1e}" for name, item in record["formats"].items() if "max_abs_diff" in item["checks"]
        ) + f"; Core ML: {record['formats']['coreml']['checks']['operations']} ops, "
        f"{record['formats']['coreml']['checks']['convolutions']} convolutions; timm efficientformer_l1 strict load: "
        f"{record['formats']['pt']['checks']['timm']['checked']}.",
        "",
        "## Machine, versions, date, command",
        "",
        f"- machine: {result['provenance']['machine']['cpu']}, {result['provenance']['machine']['cores']} cores, "
        f"{result['provenance']['machine']['platform']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in result["provenance"]["versions"].items()),
        f"- date: {result['provenance']['date']}",
        f"- command: `python bench/export_l1.py --threads {args.threads}`, which ran the two commands below; on a shared "
        "machine other processes add time, so the seconds are upper bounds",
        f"  - `{result['commands']['all formats']}`",
        f"  - `{result['commands']['coreml fp32']}`",
        "",
    ]
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines))
    console.print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
