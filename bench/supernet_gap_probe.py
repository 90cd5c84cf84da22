#!/usr/bin/env python3
"""Benchmark: where do inherited subnets lose against stand-alone training?

For every subnet of the stand-alone study (``bench/task_separability.py``) and the given extra
architectures, the subnet is extracted from a trained supernet, its BatchNorm re-estimated, and
then a copy of it is fine-tuned on the training split for a few hundred steps with only one part
trainable (AdamW, labels, BatchNorm on batch statistics) and its BatchNorm re-estimated again:

- ``norm``: the final LayerNorm alone;
- ``head``: the final LayerNorm and both classifier heads;
- ``last stage``: the last stage (with its downsampling), the final norm and the heads;
- ``last two stages``: the same and the stage before it.

If a part's weights are what is wrong (e.g. a head shared by subnets ending in Meta4D and in
Meta3D blocks), tuning it closes the subnet's gap to its stand-alone accuracy; if the gap stays,
the loss lies in the stages before it.

    python bench/supernet_gap_probe.py --supernet runs/demo/supernet/supernet.pt
    python bench/supernet_gap_probe.py --supernet RUN/supernet.pt --extra "demo winner=runs/demo/export/arch.json"

Writes docs/benchmarks/supernet_gap_probe.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from supernet import ArchSpec  # noqa: E402
from supernet.checkpoint import load_supernet  # noqa: E402
from supernet.data import TaskData, load_data  # noqa: E402
from supernet.evaluate import EvalConfig, Scorer  # noqa: E402
from supernet.io import atomic_write_json, atomic_write_text, console, provenance, provenance_markdown  # noqa: E402
from supernet.space import load_arch  # noqa: E402

PARTS = {
    "norm": ("norm.",),
    "head": ("norm.", "head"),
    "last stage": ("norm.", "head", "{last}"),
    "last two stages": ("norm.", "head", "{last}", "{second_last}"),
}


def tuned_accuracy(model: nn.Module, prefixes: tuple[str, ...], data: TaskData, scorer: Scorer, steps: int, lr: float, seed: int) -> float:
    """Top-1 after ``steps`` AdamW steps on the parameters whose names start with ``prefixes``."""
    model = copy.deepcopy(model).train()  # BatchNorm on batch statistics, as in training
    params = []
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith(prefixes))
        if param.requires_grad:
            params.append(param)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    epoch, batches = 0, iter(())
    for _ in range(steps):
        batch = next(batches, None)
        if batch is None:
            batches, epoch = data.train_batches(epoch, 64, seed=seed), epoch + 1
            batch = next(batches)
        images, labels = batch
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    # The tuned weights change what the BatchNorms after them see: re-estimate, as for any subnet.
    return scorer.accuracy(scorer.recalibrate(model))


def probe(supernet: Any, spec: ArchSpec, data: TaskData, scorer: Scorer, steps: int, lr: float, seed: int) -> dict[str, float]:
    model = scorer.recalibrate(supernet.extract(spec))
    row = {"inherited": 100 * scorer.accuracy(model)}
    stages = {"last": f"stages.{spec.num_stages - 1}.", "second_last": f"stages.{spec.num_stages - 2}."}
    for part, prefixes in PARTS.items():
        prefixes = tuple(p.format(**stages) for p in prefixes)
        row[part] = 100 * tuned_accuracy(model, prefixes, data, scorer, steps, lr, seed)
    return row


def report(result: dict[str, Any]) -> str:
    lines = [
        "# Where inherited subnets lose: fine-tuning one part at a time",
        "",
        f"Supernet `{result['supernet']}`. Each subnet is extracted and its BatchNorm re-estimated (8 batches), "
        f"then a copy is fine-tuned for {result['steps']} steps of batch 64 (AdamW at {result['lr']}, labels, BatchNorm "
        "on batch statistics) with only one part trainable and its BatchNorm re-estimated again. 'alone' is the stand-alone seed mean of "
        f"`{result['standalone']}`. A part whose tuning closes the gap holds the loss; a gap that stays "
        "lies in the stages before it.",
        "",
        "| subnet | architecture | Meta3D | alone | inherited | gap | norm tuned | head tuned | last stage tuned | last two stages tuned |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        alone = f"{r['alone']:.1f}" if r["alone"] is not None else "–"
        gap = f"{r['alone'] - r['inherited']:.1f}" if r["alone"] is not None else "–"
        lines.append(
            f"| {r['name']} | {r['label']} | {r['num_meta3d']} | {alone} | {r['inherited']:.1f} | {gap} | "
            f"{r['norm']:.1f} | {r['head']:.1f} | {r['last stage']:.1f} | {r['last two stages']:.1f} |"
        )
    lines += ["", "Mean gain over the inherited top-1, in points:", ""]
    for part in PARTS:
        gains = [r[part] - r["inherited"] for r in result["rows"]]
        lines.append(f"- {part} tuned: mean {statistics.fmean(gains):+.1f}, largest {max(gains):+.1f}")
    return "\n".join([*lines, "", *provenance_markdown(result["provenance"]), ""])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--supernet", required=True, help="a trained supernet checkpoint (supernet.pt)")
    parser.add_argument("--standalone", default="docs/benchmarks/task_separability_12epochs.json",
                        help="stand-alone study whose subnets are probed (default: %(default)s)")
    parser.add_argument("--extra", nargs="*", default=[], help="more subnets as NAME=ARCH.json (e.g. a search's best.json)")
    parser.add_argument("--only", default=None, help="comma-separated names: probe only these subnets")
    parser.add_argument("--steps", type=int, default=200, help="fine-tuning steps per part (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate of the fine-tuning (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=123, help="seed of the fine-tuning batches (default: %(default)s)")
    parser.add_argument("--out", default="docs/benchmarks/supernet_gap_probe", help="output path without suffix")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    supernet, info = load_supernet(args.supernet)
    data = load_data(info.data["name"], info.space.resolution)
    scorer = Scorer(data, EvalConfig(calib_batches=8, batch_size=128, seed=0))
    study = json.loads(Path(args.standalone).read_text())
    subnets = [(s["name"], ArchSpec.from_dict(s["arch"]), statistics.fmean(r["top1"] for r in s["runs"])) for s in study["subnets"] if s["runs"]]
    for item in args.extra:
        name, _, path = item.partition("=")
        subnets.append((name, load_arch(path), None))
    if args.only:
        subnets = [s for s in subnets if s[0] in args.only.split(",")]
    rows = []
    for name, spec, alone in subnets:
        spec = info.space.validate(spec)
        row = {"name": name, "label": spec.label(), "num_meta3d": spec.num_meta3d, "alone": alone,
               **probe(supernet, spec, data, scorer, args.steps, args.lr, args.seed)}
        rows.append(row)
        console.print(f"{name}: inherited {row['inherited']:.1f}, " + ", ".join(f"{p} {row[p]:.1f}" for p in PARTS))
    result = {"supernet": args.supernet, "standalone": args.standalone, "steps": args.steps, "lr": args.lr, "rows": rows,
              "provenance": provenance()}
    out = Path(args.out)
    atomic_write_json(out.with_suffix(".json"), result)
    atomic_write_text(out.with_suffix(".md"), report(result))
    console.print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
