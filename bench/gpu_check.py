#!/usr/bin/env python3
"""GPU check: what this project does on CUDA, measured in one run of under 8 minutes on one GPU.

1. latency table: `torch-cuda` table of the v1 space built, then checked against 40 held-out
   networks measured end to end (within ±5/±10 %, MAPE, Kendall τ);
2. supernet overhead on GPU: training forward+backward images/s at 224 px with bf16 autocast,
   through the supernet at L7 and through the extracted static L7 (their ratio);
3. evaluator: seconds to score one subnet (BN recalibration + validation) on a generated
   ImageFolder of JPEGs, and that time scaled to ImageNet's 50,000 validation images;
4. NCCL DDP: `torchrun --nproc-per-node <all visible GPUs> -m nas.cli train` for a few steps
   (the run itself fails if the ranks' weights differ).

Without a GPU it says so in one line and exits with status 2 (nothing was checked). `--device cpu
--quick` runs every part on the CPU at toy sizes (tiny space, torch backend, gloo), to test the
script itself.

    python bench/gpu_check.py                                 # on a GPU machine
    python bench/gpu_check.py --device cpu --quick --out /tmp/gpu_check

Writes docs/benchmarks/gpu_check.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from input_pipeline import make_image_folder  # noqa: E402
from supernet.io import atomic_write_json, atomic_write_text, console, provenance, provenance_markdown  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
IMAGENET_VAL = 50_000


def check_lut_part(space, work: Path, quick: bool, cuda: bool) -> dict:
    from latency_lut import BuildConfig, CheckConfig, build_lut, check_lut

    backend = "torch-cuda" if cuda else "torch"
    config = BuildConfig(backend=backend, rounds=3 if quick else 15, retries=0 if quick else 1, calibration_samples=3 if quick else 12,
                         calibration_rounds=2 if quick else 8, min_group_seconds=0.0 if quick else 1.0, max_minutes=None if quick else 3.0)
    started = time.perf_counter()
    built = build_lut(space, work / "lut.json", config, show_progress=False)
    build_s = time.perf_counter() - started
    report = check_lut(built.table, space, CheckConfig(samples=3 if quick else 40, rounds=2 if quick else 6, min_group_seconds=0.0 if quick else 1.0,
                                                       max_minutes=None if quick else 1.5))
    held_out = {row["name"] for row in report.rows if row["name"] not in set(space.preset_names)}
    stats = report.stats(names=held_out).to_dict() if len(held_out) >= 2 else None
    return {"backend": backend, "build_complete": built.complete, "build_s": build_s, "units_measured": built.measured,
            "check_complete": report.complete, "check_s": report.seconds, "held_out": len(held_out), "stats": stats}


def _step_seconds(model, x, spec, device) -> float:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        out = model(x, spec) if spec is not None else model(x)
    out.float().logsumexp(dim=1).sum().backward()
    model.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def overhead_part(space, device, quick: bool) -> dict:
    import torch

    from supernet.elastic import Supernet

    torch.manual_seed(0)
    supernet = Supernet(space).to(device).train()
    spec = space.largest()
    static = supernet.extract(spec).to(device).train()
    batch, repeats = (8, 3) if quick else (64, 10)
    x = torch.randn(batch, 3, space.resolution, space.resolution, device=device)
    for _ in range(2):  # warm-up: cuDNN autotuning, allocator
        _step_seconds(supernet, x, spec, device)
        _step_seconds(static, x, None, device)
    times: dict[str, list[float]] = {"supernet": [], "static": []}
    for _ in range(repeats):
        times["supernet"].append(_step_seconds(supernet, x, spec, device))
        times["static"].append(_step_seconds(static, x, None, device))
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {"spec": spec.label(), "batch": batch, "autocast": "bf16" if device.type == "cuda" else "off",
            "supernet_images_per_s": batch / medians["supernet"], "static_images_per_s": batch / medians["static"],
            "ratio": medians["supernet"] / medians["static"]}


def evaluator_part(space, device, folder: Path, classes: int, workers: int, quick: bool) -> dict:
    import torch

    from supernet.data import load_data
    from supernet.elastic import Supernet
    from supernet.evaluate import EvalConfig, Scorer

    data = load_data(f"imagefolder:{folder}", space.resolution, workers=workers, pin_memory=device.type == "cuda")
    torch.manual_seed(0)
    supernet = Supernet(space.with_num_classes(classes)).to(device)
    config = EvalConfig(calib_batches=2 if quick else 8, batch_size=16 if quick else 128)
    scorer = Scorer(data, config, device=device, rank=0, world_size=1)
    spec = supernet.space.preset("L1")
    scorer.score(supernet, spec)  # warm-up: workers start, files enter the page cache
    started = time.perf_counter()
    scorer.score(supernet, spec)
    seconds = time.perf_counter() - started
    return {"subnet": "L1", "val_images": data.num_val, "calib_images": config.calib_batches * config.batch_size, "workers": workers,
            "seconds_per_subnet": seconds, "seconds_per_subnet_at_50k": seconds * IMAGENET_VAL / data.num_val}


def ddp_part(space_name: str, folder: Path, work: Path, device: str, processes: int, quick: bool) -> dict:
    out = work / "ddp"
    steps = 4 if quick else 30
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes), "-m", "nas.cli",
               "train", "--space", space_name, "--data", f"imagefolder:{folder}", "--epochs", "1", "--steps-per-epoch", str(steps),
               "--batch-size", "8" if quick else "64", "--workers", "1" if quick else "4", "--device", device, "--no-validate", "--no-progress",
               "--out", str(out)]
    if device == "cpu":
        command += ["--threads", "1"]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    record = {"processes": processes, "backend": "nccl" if device == "cuda" else "gloo", "steps": steps, "ok": result.returncode == 0,
              "seconds": time.perf_counter() - started}
    if result.returncode:
        record["error"] = (result.stderr.strip().splitlines() or ["?"])[-1][:300]
        return record
    windows = [json.loads(line)["images_per_s"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    record["images_per_s"] = statistics.median(windows[1:] or windows)
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--quick", action="store_true", help="toy sizes (tiny space): tests the script, numbers mean little")
    parser.add_argument("--val-images", type=int, help="generated validation JPEGs (default: 10000, quick: 40)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="data-loading processes")
    parser.add_argument("--out", default="docs/benchmarks/gpu_check")
    args = parser.parse_args()

    import torch

    from supernet import load_space

    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU is visible on this machine; nothing checked (use --device cpu --quick to test the script)")
        return 2
    device = torch.device("cuda" if cuda else "cpu")
    space_name = "tiny" if args.quick else "efficientformer-v1"
    space = load_space(space_name)
    classes = 10 if args.quick else 100
    val_images = args.val_images or (40 if args.quick else 10_000)
    started = time.perf_counter()
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="efnas-gpu-check-") as tmp:
        work = Path(tmp)
        # Training images for the calibration batches and every DDP rank's steps, plus the validation set.
        train_images = 80 if args.quick else 16_000
        folder = make_image_folder(work / "images", images=train_images + val_images, val_images=val_images, size=64 if args.quick else 256,
                                   classes=classes, processes=os.cpu_count() or 1)
        parts = [("lut", lambda: check_lut_part(space, work, args.quick, cuda)),
                 ("overhead", lambda: overhead_part(space, device, args.quick)),
                 ("evaluator", lambda: evaluator_part(space, device, folder, classes, args.workers, args.quick)),
                 ("ddp", lambda: ddp_part(space_name, folder, work, args.device, torch.cuda.device_count() if cuda else 2, args.quick))]
        for name, part in parts:
            console.print(f"{name} ...")
            part_started = time.perf_counter()
            results[name] = part()
            results[name]["part_seconds"] = time.perf_counter() - part_started
            console.print(f"  {json.dumps(results[name], default=str)[:400]}")
    total = time.perf_counter() - started
    gpu = torch.cuda.get_device_name(0) if cuda else "none (CPU run)"
    result = {"benchmark": "gpu_check", "quick": args.quick, "device": args.device, "gpu": gpu, "gpus": torch.cuda.device_count() if cuda else 0,
              "seconds": total, "results": results, "provenance": provenance()}
    out = Path(args.out)
    atomic_write_json(out.with_suffix(".json"), result)
    atomic_write_text(out.with_suffix(".md"), "\n".join(_markdown(result)))
    console.print(f"done in {total:.0f} s; wrote {out.with_suffix('.md')}")
    return 0 if results["ddp"]["ok"] else 1


def _markdown(result: dict) -> list[str]:
    lut, over, ev, ddp = (result["results"][k] for k in ("lut", "overhead", "evaluator", "ddp"))
    stats = lut["stats"] or {}
    lut_line = (f"{lut['held_out']} held-out networks: {stats.get('within_5', float('nan')):.1f}% within ±5%, "
                f"{stats.get('within_10', float('nan')):.1f}% within ±10%, MAPE {stats.get('mape', float('nan')):.2f}%, "
                f"Kendall τ {stats.get('kendall_tau', float('nan')):.3f}") if stats else "fewer than 2 held-out networks measured"
    ddp_line = (f"{ddp['processes']} processes ({ddp['backend']}), {ddp['steps']} steps: {ddp['images_per_s']:.0f} images/s, ranks identical"
                if ddp["ok"] else f"{ddp['processes']} processes ({ddp['backend']}) FAILED: {ddp['error']}")
    return [
        "# GPU check",
        "",
        f"GPU: {result['gpu']} ({result['gpus']} visible); {'quick toy sizes' if result['quick'] else 'full sizes'}; {result['seconds']:.0f} s in all.",
        "",
        "| part | result |",
        "|---|---|",
        f"| `{lut['backend']}` latency table | built in {lut['build_s']:.0f} s ({'complete' if lut['build_complete'] else 'INCOMPLETE: time cap'}), "
        f"checked in {lut['check_s']:.0f} s: {lut_line} |",
        f"| supernet vs static at {over['spec']}, forward+backward, batch {over['batch']}, autocast {over['autocast']} | supernet "
        f"{over['supernet_images_per_s']:.0f} images/s, static {over['static_images_per_s']:.0f} images/s, ratio {over['ratio']:.3f} |",
        f"| evaluator, {ev['subnet']} | {ev['seconds_per_subnet']:.1f} s per subnet on {ev['val_images']} validation images "
        f"(+{ev['calib_images']} calibration); {ev['seconds_per_subnet_at_50k']:.0f} s scaled to 50,000 |",
        f"| DDP | {ddp_line} |",
        "",
        *provenance_markdown(result["provenance"]),
    ]


if __name__ == "__main__":
    sys.exit(main())
