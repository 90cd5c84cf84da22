#!/usr/bin/env python3
"""Benchmark: is training bound by the image loader or by the model?

Generates an ImageFolder of JPEGs (made here from seeded noise with numpy and PIL, never
downloaded; kept between runs), then measures in one run, with the same settings:

- loading alone: images/s of the training batches as ``efnas train`` reads them (decode, random
  resized crop, flip, normalise) with ``--workers`` processes, nothing else;
- training: images/s of ``efnas train`` itself on that folder (the sandwich step; validation is
  off and excluded).

If loading alone is not clearly faster than training, more workers (or faster storage) will speed
training up; otherwise the model is the bottleneck.

    python bench/input_pipeline.py                                  # 20,000 JPEGs at 256 px, v1 at 224 px
    python bench/input_pipeline.py --images 200 --size 64 --space tiny --out /tmp/pipeline   # a quick proof

Writes docs/benchmarks/input_pipeline.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from itertools import islice
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from supernet.io import atomic_write_json, atomic_write_text, console, provenance, provenance_markdown  # noqa: E402

VAL_SHARE = 0.1  # of the images, in the val/ split


def _write_images(job: tuple[str, int, int, int]) -> None:
    folder, first, count, size = job
    from PIL import Image

    for index in range(first, first + count):
        rng = np.random.default_rng(index)
        # Smooth noise upsampled from a coarse grid: JPEG-sized like photos, unlike white noise.
        coarse = rng.integers(0, 256, size=(size // 16 + 1, size // 16 + 1, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((size + size // 4, size), Image.BILINEAR)
        image.save(Path(folder) / f"{index:06d}.jpg", quality=90)


def make_image_folder(root: Path, *, images: int, size: int, classes: int, val_images: int | None = None, processes: int = 2) -> Path:
    """``root`` holding ``images`` JPEGs (``size`` px high, 5:4) in train/ and val/ (``val_images``
    of them, default a tenth), ``classes`` classes; reused when a finished one with the same
    settings is there."""
    num_val = val_images if val_images is not None else max(classes, round(images * VAL_SHARE))
    marker = root / "done.json"
    settings = {"images": images, "val_images": num_val, "size": size, "classes": classes}
    if marker.exists() and json.loads(marker.read_text()) == settings:
        return root
    jobs = []
    for split, count in (("train", images - num_val), ("val", num_val)):
        per_class = -(-count // classes)
        for c in range(classes):
            folder = root / split / f"class{c:04d}"
            folder.mkdir(parents=True, exist_ok=True)
            first = (0 if split == "train" else images) + c * per_class
            jobs += [(str(folder), start, min(500, first + per_class - start), size) for start in range(first, first + per_class, 500)]
    with ProcessPoolExecutor(processes) as pool:
        list(pool.map(_write_images, jobs))
    marker.write_text(json.dumps(settings))
    return root


def loading_rate(data_arg: str, resolution: int, *, batch_size: int, workers: int, steps: int, pin_memory: bool) -> float:
    """Images/s of reading ``steps`` training batches (after one batch of warm-up)."""
    from supernet.data import load_data

    data = load_data(data_arg, resolution, workers=workers, pin_memory=pin_memory)
    batches = data.train_batches(0, batch_size, seed=0)
    next(batches)  # workers start, first files open
    start = time.perf_counter()
    seen = sum(len(labels) for _, labels in islice(batches, steps))
    return seen / (time.perf_counter() - start)


def training_rate(data_arg: str, out: Path, args: argparse.Namespace) -> float:
    """Images/s of ``efnas train`` (median of its 10-step windows after the first)."""
    from supernet.train import TrainConfig, train

    config = TrainConfig(
        space=args.space, data=data_arg, out=str(out), epochs=1, steps_per_epoch=args.steps, batch_size=args.batch,
        workers=args.workers, skip_validation=True, threads=args.threads, device=args.device,
        channels_last=args.channels_last, compile=args.compile,
    )
    train(config, show_progress=False)
    windows = [json.loads(line)["images_per_s"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(windows[1:] or windows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20_000, help="JPEGs to generate (default: %(default)s)")
    parser.add_argument("--size", type=int, default=256, help="image height in pixels (default: %(default)s)")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--folder", type=Path, help="where the generated folder lives (default: a folder in the temp dir, reused)")
    parser.add_argument("--space", default="efficientformer-v1")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=40, help="training steps (and loader batches) timed")
    parser.add_argument("--workers", type=int, default=2, help="data-loading processes")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads of the training process")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--out", default="docs/benchmarks/input_pipeline")
    args = parser.parse_args()

    import torch

    from supernet import load_space

    space = load_space(args.space)
    folder = args.folder or Path(tempfile.gettempdir()) / f"efnas-imagefolder-{args.images}-{args.size}px-{args.classes}"
    started = time.perf_counter()
    make_image_folder(folder, images=args.images, size=args.size, classes=args.classes)
    console.print(f"image folder {folder} ready ({time.perf_counter() - started:.0f} s)")
    num_train = args.images - max(args.classes, round(args.images * VAL_SHARE))
    steps = min(args.steps, num_train // args.batch - 1)
    if steps < 2:
        console.print(f"[red]{num_train} training images make fewer than 3 batches of {args.batch}: lower --batch or raise --images")
        return 2
    args.steps = steps
    data_arg = f"imagefolder:{folder}"
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    loading = loading_rate(data_arg, space.resolution, batch_size=args.batch, workers=args.workers, steps=steps - 1, pin_memory=cuda)
    with tempfile.TemporaryDirectory() as work:
        training = training_rate(data_arg, Path(work) / "run", args)
    bound = "the loader" if loading < 1.2 * training else "the model"
    verdict = f"loading alone {loading:.0f} images/s, training {training:.0f} images/s: {bound} is the bottleneck"
    console.print(verdict)

    settings = {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()}
    settings.update(resolution=space.resolution, device_used="cuda" if cuda else "cpu")
    result = {"benchmark": "input_pipeline", "settings": settings, "loading_images_per_s": loading,
              "training_images_per_s": training, "ratio": loading / training, "bottleneck": bound, "provenance": provenance()}
    out = Path(args.out)
    atomic_write_json(out.with_suffix(".json"), result)
    lines = [
        "# Input pipeline: loader or model?",
        "",
        f"{args.images} generated JPEGs ({args.size} px, {args.classes} classes), read at {space.resolution} px with "
        f"{args.workers} worker processes, batch {args.batch}, {steps} batches; training: `efnas train --space {space.name}` "
        f"on the same folder, validation off, {'cuda' if cuda else 'cpu'}"
        f"{', channels_last' if args.channels_last else ''}{', torch.compile' if args.compile else ''}.",
        "",
        "| loading alone | training | loading / training |",
        "|---|---|---|",
        f"| {loading:.0f} images/s | {training:.0f} images/s | {loading / training:.2f} |",
        "",
        f"Result: {verdict}.",
        "",
        *provenance_markdown(result["provenance"]),
    ]
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
