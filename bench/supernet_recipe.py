#!/usr/bin/env python3
"""Benchmark: which supernet training recipe makes inherited accuracy match stand-alone accuracy?

Trains the tiny-space supernet on the embedded task at the demo's image budget once per (recipe
variant, seed), then scores the 12 subnets of the stand-alone study (``bench/task_separability.py``)
with inherited weights (BN recalibrated, whole validation split, as ``efnas export`` reports it).
Per variant it reports the largest / smallest / three random subnets' inherited top-1, the median
gap to stand-alone training, Kendall tau against the stand-alone order, and the cost per step.

Each run is single-threaded and ``--jobs`` of them run side by side; finished runs (their
checkpoints under ``--runs``) and their scores (in the output JSON) are reused, so the study can be
extended one variant at a time and a killed study resumes.

    python bench/supernet_recipe.py                                   # every variant, seeds 0 and 1
    python bench/supernet_recipe.py --variants sandwich,largest-only --seeds 0

Writes docs/benchmarks/supernet_recipe.{json,md}.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scipy import stats  # noqa: E402

from supernet.io import atomic_write_json, atomic_write_text, console, provenance, provenance_markdown  # noqa: E402

# name -> (TrainConfig overrides, what it tests). The demo's budget: 8 epochs of 15,000 mosaics.
VARIANTS: dict[str, tuple[dict[str, Any], str]] = {
    "sandwich": ({}, "the previous default: largest on labels, smallest + 2 random distilled from it, batch 128"),
    "largest-only": ({"num_random": 0, "largest_only_epochs": 8}, "reference: only the largest subnet is trained"),
    "labels-0.5": ({"subnet_label_weight": 0.5}, "the other subnets learn half from the labels, half from the largest"),
    "warmup-largest-2": ({"largest_only_epochs": 2}, "the largest alone for 2 epochs (a trained teacher), then the sandwich"),
    "subnet-weight-0.33": ({"subnet_weight": 1 / 3}, "the other subnets' losses averaged instead of summed"),
    "batch-64": ({"batch_size": 64}, "batch 64: twice the steps for the same images (the stand-alone recipe's batch)"),
    "final-lr-0.05": ({"final_lr_ratio": 0.05}, "BigNAS: the cosine ends at 5% of the peak instead of 0"),
    "labels-0.5-random-4": ({"subnet_label_weight": 0.5, "num_random": 4}, "labels-0.5 with 4 random subnets per step instead of 2"),
    "labels-0.5-batch-64": ({"subnet_label_weight": 0.5, "batch_size": 64}, "labels-0.5 at batch 64 (twice the steps): the new default"),
    "meta4d-largest": ({"meta4d_largest": True}, "the new default plus the largest widths without Meta3D blocks each step"),
    "largest-only-batch-64": ({"num_random": 0, "largest_only_epochs": 8, "batch_size": 64}, "reference at the new default's steps: only the largest subnet is trained"),
    "default-subnet-weight-0.5": ({"subnet_weight": 0.5}, "the new default with each other subnet's loss at half the largest's weight"),
    "default-labels-1.0": ({"subnet_label_weight": 1.0}, "the new default with the other subnets on the labels only (no distillation)"),
    "default-epochs-12": ({"epochs": 12}, "the new default trained 12 epochs instead of 8 (1.5x the demo's image budget)"),
    "default-narrowest-deepest": ({"epochs": 12, "narrowest_deepest": True}, "default-epochs-12 plus the narrowest widths at the greatest depths each step (a 5th subnet)"),
    "default-final-lr-0.05": ({"epochs": 12, "final_lr_ratio": 0.05}, "default-epochs-12 with BigNAS's ending: the cosine stops at 5% of the peak instead of 0"),
    "default-worst-of-3": ({"epochs": 12, "worst_of": 3}, "default-epochs-12 with each random subnet the worst on the batch of 3 like-sized candidates (AttentiveNAS's WorstUp)"),
    "default-lr-4e-3": ({"epochs": 12, "lr": 4e-3}, "default-epochs-12 at twice the peak learning rate (4e-3 instead of 2e-3)"),
    "labels-1.0": ({"subnet_label_weight": 1.0}, "the other subnets learn from the labels only (no distillation)"),
}
# The previous default recipe, which every variant changes one or two things of.
BASE = {"space": "tiny", "data": "digits-mosaic", "epochs": 8, "threads": 1, "checkpoint_every": 200,
        "batch_size": 128, "subnet_label_weight": 0.0}
# Variants named after the current default change it, not BASE.
DEFAULT = {"batch_size": 64, "subnet_label_weight": 0.5}
DEFAULT_BASED = {name: DEFAULT for name in (
    "meta4d-largest", "default-subnet-weight-0.5", "default-labels-1.0", "default-epochs-12", "default-narrowest-deepest",
    "default-final-lr-0.05", "default-worst-of-3", "default-lr-4e-3",
)}
# Stand-alone studies on more images than the demo's 8 epochs (bench/task_separability.py --images).
LONGER_STANDALONE = {12: "docs/benchmarks/task_separability_12epochs.json"}
REPORTED = ("largest = L7", "smallest", "random 1", "random 2", "random 3")


def run_variant(job: dict[str, Any]) -> dict[str, Any]:
    """Train (or resume) one (variant, seed) and score every stand-alone subnet; runs in a worker."""
    import torch

    from supernet import ArchSpec
    from supernet.checkpoint import load_checkpoint, load_supernet
    from supernet.data import load_data
    from supernet.evaluate import evaluate_spec
    from supernet.train import TrainConfig, train

    torch.set_num_threads(1)
    out = Path(job["out"])
    checkpoint = out / "supernet.pt"
    config = TrainConfig(**{**BASE, **job["overrides"], "seed": job["seed"], "out": str(out)})
    started = time.perf_counter()
    if not (checkpoint.exists() and load_checkpoint(checkpoint).get("finished")):
        train(config, resume=checkpoint.exists(), show_progress=False)
    train_seconds = time.perf_counter() - started
    supernet, info = load_supernet(checkpoint)
    data = load_data(info.data["name"], info.space.resolution)
    scores = {}
    for sub in job["subnets"]:
        spec = info.space.validate(ArchSpec.from_dict(sub["arch"]))
        scores[sub["name"]] = round(100 * evaluate_spec(supernet, spec, data, calib_batches=8, seed=0), 2)
    per_step = [r["images_per_s"] for r in _metrics(out / "metrics.jsonl") if "images_per_s" in r]
    return {
        "variant": job["variant"],
        "seed": job["seed"],
        "steps": info.step,
        "train_seconds_this_call": round(train_seconds, 1),
        "median_images_per_s": round(statistics.median(per_step), 1) if per_step else None,
        "batch_size": config.batch_size,
        "epochs": config.epochs,
        "top1": scores,
    }


def _metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def summarise(runs: list[dict[str, Any]], standalone: dict[str, float], budgets: dict[int, dict[str, float]]) -> dict[str, Any]:
    """Per variant: mean over seeds of each reported subnet, median gap, smallest's gap, Kendall tau;
    the same three against stand-alone training on as many images (``budgets``: epochs -> stand-alone
    means), where that study exists."""
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_variant.setdefault(run["variant"], []).append(run)
    summary = {}
    for variant, vruns in by_variant.items():
        per_seed = [_gaps(standalone, run["top1"]) for run in vruns]
        # Cost per step as the ratio of images/s to the sandwich's, both at batch 128 images per step.
        ips = [r["median_images_per_s"] / r["batch_size"] for r in vruns if r["median_images_per_s"]]
        summary[variant] = {
            "seeds": [r["seed"] for r in vruns],
            "top1": {n: [r["top1"][n] for r in vruns] for n in REPORTED},
            "median_gap": [p["median_gap"] for p in per_seed],
            "smallest_gap": [p["smallest_gap"] for p in per_seed],
            "kendall": [p["kendall"] for p in per_seed],
            "seconds_per_step": round(1 / statistics.fmean(ips), 4) if ips else None,
            "steps": vruns[0]["steps"],
        }
        # Runs recorded before "epochs" was: their epochs from steps x batch over 15,000 mosaics per epoch.
        same = budgets.get(vruns[0].get("epochs") or round(vruns[0]["steps"] * vruns[0]["batch_size"] / 15_000))
        if same is not None:
            summary[variant]["same_images"] = [_gaps(same, run["top1"]) for run in vruns]
    return summary


def _gaps(standalone: dict[str, float], inherited: dict[str, float]) -> dict[str, float]:
    """Median gap, smallest's gap and Kendall tau of one run against one stand-alone study."""
    names = list(standalone)
    return {
        "median_gap": round(statistics.median(standalone[n] - inherited[n] for n in names), 2),
        "smallest_gap": round(standalone["smallest"] - inherited["smallest"], 2),
        "kendall": round(float(stats.kendalltau([inherited[n] for n in names], [standalone[n] for n in names]).statistic), 3),
    }


def _same_images_cell(summary: dict[str, Any]) -> str:
    if "same_images" not in summary:
        return "not measured"
    return "; ".join(
        f"{name} {' / '.join(format(g[key], fmt) for g in summary['same_images'])}"
        for name, key, fmt in (("median", "median_gap", ".1f"), ("smallest", "smallest_gap", ".1f"), ("τ", "kendall", ".2f"))
    )


def report(result: dict[str, Any]) -> str:
    def cell(values: list[float]) -> str:
        return " / ".join(f"{v:.1f}" for v in values)

    lines = [
        "# Supernet training recipe: inherited vs stand-alone accuracy",
        "",
        "Each variant trains the tiny-space supernet on digits-mosaic at the previous demo's image budget (8 epochs of "
        "15,000 mosaics) unless its name says otherwise, single-threaded; each subnet is then scored with inherited "
        "weights (BN recalibrated on 8 batches, the whole 10,000-image validation split). Stand-alone reference: "
        "`docs/benchmarks/task_separability.json` (each subnet trained alone on 120,000 images, mean of 3 seeds); for "
        "a variant trained on more images, the last column compares with stand-alone training on as many images "
        f"(`docs/benchmarks/task_separability_12epochs.json`, mean of {result.get('standalone_seeds', {}).get('12', '?')} seed(s)): "
        "median gap, smallest's gap and Kendall τ against it. Gaps are stand-alone minus inherited, in "
        "points (negative: the supernet's subnet is better). Values per seed, separated by /.",
        "",
        "| variant | what it tests | steps | largest | smallest | random 1 | random 2 | random 3 | median gap (12 subnets) | smallest gap | Kendall τ | s/step | against stand-alone on as many images |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in result["summary"].items():
        t = s["top1"]
        lines.append(
            f"| {name} | {VARIANTS[name][1] if name in VARIANTS else ''} | {s['steps']} | {cell(t['largest = L7'])} | {cell(t['smallest'])} | "
            f"{cell(t['random 1'])} | {cell(t['random 2'])} | {cell(t['random 3'])} | {cell(s['median_gap'])} | "
            f"{cell(s['smallest_gap'])} | {' / '.join(f'{k:.2f}' for k in s['kendall'])} | "
            f"{s['seconds_per_step'] if s['seconds_per_step'] is not None else '-'} | "
            f"{_same_images_cell(s)} |"
        )
    sa = result["standalone"]
    lines += [
        "",
        f"Stand-alone means: largest {sa['largest = L7']:.1f}, smallest {sa['smallest']:.1f}, random 1 {sa['random 1']:.1f}, "
        f"random 2 {sa['random 2']:.1f}, random 3 {sa['random 3']:.1f}.",
        "",
        "s/step is measured while the other runs of the study shared the machine's two cores (one thread each): compare "
        "the variants with each other, not with a quiet machine.",
        "",
        *provenance_markdown(result["provenance"]),
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated variant names (default: all)")
    parser.add_argument("--seeds", default="0,1", help="comma-separated seeds (default: %(default)s)")
    parser.add_argument("--jobs", type=int, default=2, help="runs side by side, one thread each (default: %(default)s)")
    parser.add_argument("--runs", default="runs/recipe", help="folder of the trained supernets (default: %(default)s)")
    parser.add_argument("--standalone", default="docs/benchmarks/task_separability.json")
    parser.add_argument("--out", default="docs/benchmarks/supernet_recipe", help="output path without suffix")
    args = parser.parse_args()
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        sys.exit(f"error: unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    study = json.loads(Path(args.standalone).read_text())
    subnets = [s for s in study["subnets"] if len(s["runs"]) == len(study["seeds"])]
    standalone = {s["name"]: statistics.fmean(r["top1"] for r in s["runs"]) for s in subnets}
    budgets = {8: standalone}  # epochs -> stand-alone means on as many images
    seeds = {8: len(study["seeds"])}
    for epochs, path in LONGER_STANDALONE.items():
        if Path(path).exists():
            longer = [s for s in json.loads(Path(path).read_text())["subnets"] if s["runs"]]
            if {s["name"] for s in longer} == set(standalone):
                budgets[epochs] = {s["name"]: statistics.fmean(r["top1"] for r in s["runs"]) for s in longer}
                seeds[epochs] = min(len(s["runs"]) for s in longer)

    out = Path(args.out)
    previous = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").exists() else {"runs": []}
    done = {(r["variant"], r["seed"]): r for r in previous["runs"]}
    jobs = [
        {"variant": v, "seed": int(seed), "overrides": {**DEFAULT_BASED.get(v, {}), **VARIANTS[v][0]}, "out": f"{args.runs}/{v}-s{seed}", "subnets": subnets}
        for v in variants
        for seed in args.seeds.split(",")
        if (v, int(seed)) not in done
    ]

    def write() -> None:
        runs = sorted(done.values(), key=lambda r: (list(VARIANTS).index(r["variant"]), r["seed"]))
        result = {"summary": summarise(runs, standalone, budgets), "runs": runs, "standalone": standalone,
                  "standalone_by_epochs": {str(k): v for k, v in budgets.items()},
                  "standalone_seeds": {str(k): v for k, v in seeds.items()}, "provenance": provenance(("scipy",))}
        atomic_write_json(out.with_suffix(".json"), result)
        atomic_write_text(out.with_suffix(".md"), report(result))

    with concurrent.futures.ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(run_variant, job): job for job in jobs}
        for future in concurrent.futures.as_completed(futures):
            run = future.result()
            done[(run["variant"], run["seed"])] = run
            console.print(f"{run['variant']} seed {run['seed']}: " + ", ".join(f"{n} {run['top1'][n]:.1f}" for n in REPORTED))
            write()
    write()
    console.print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
