#!/usr/bin/env python3
"""Benchmark: does the embedded training data tell architectures of the tiny space apart?

Trains subnets of a space stand-alone (the smallest, the largest, every preset and seeded random
ones), each with several seeds and one fixed recipe (AdamW, linear warm-up then cosine decay to
zero, label smoothing), and scores each on the task's fixed validation set. Reports, per task:

- spread: the standard deviation across subnets of their seed-mean top-1,
- seed noise: the mean over subnets of the per-subnet standard deviation across seeds,
- their ratio (goal: >= 3) and how accuracy ranks with size (Spearman and Kendall of parameters
  vs accuracy; goal: clearly positive, largest clearly above smallest).

Each training run is single-threaded; ``--workers`` of them run in parallel. Results are written
after every run, and a rerun skips the runs its output already holds, so the study can be run in
chunks (``--minutes``) and resumed. The stored accuracies and subnet specs are the stand-alone
reference of the ``rank_correlation`` benchmark.

    python bench/task_separability.py                           # digits-mosaic, tiny space
    python bench/task_separability.py --minutes 10              # one resumable chunk
    python bench/task_separability.py --data digits --subnets smallest,L1,L3,L7,largest --seeds 2 \\
        --out docs/benchmarks/task_separability_digits           # the plain-digits baseline

Writes docs/benchmarks/task_separability.{json,md}.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import math
import multiprocessing
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn  # noqa: E402
from rich.table import Table  # noqa: E402
from scipy import stats  # noqa: E402

from supernet import ArchSpec, build_model, count_macs, count_params, load_space  # noqa: E402
from supernet.data import TaskData, load_data  # noqa: E402
from supernet.space import load_arch  # noqa: E402
from supernet.io import atomic_write_json, atomic_write_text, console, provenance, provenance_markdown  # noqa: E402

GOAL_RATIO = 3.0


@dataclass(frozen=True)
class Recipe:
    """How every subnet is trained: the same for all, so that accuracy differences are the architecture's."""

    images: int = 120_000  # training images per subnet: the demo's budget (8 epochs of 15,000 mosaics)
    batch_size: int = 64
    lr: float = 2e-3  # AdamW peak learning rate
    weight_decay: float = 0.05  # on weight matrices and conv kernels only (not norms, biases, scales)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_fraction: float = 0.05  # linear warm-up over this share of the steps, then cosine to 0
    label_smoothing: float = 0.1
    threads: int = 1  # torch threads per training run

    @property
    def steps(self) -> int:
        return self.images // self.batch_size


def lr_factor(step: int, steps: int, warmup_fraction: float) -> float:
    """Linear warm-up to 1, then cosine decay to 0 (multiplies the peak learning rate)."""
    warmup = max(1, round(warmup_fraction * steps))
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def evaluate(model: torch.nn.Module, data: TaskData, batch_size: int = 1000) -> float:
    """Top-1 accuracy in percent on the whole validation set."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for images, labels in data.val_batches(batch_size):
            correct += (model(images).argmax(dim=1) == labels).sum().item()
    return 100.0 * correct / data.num_val


_DATA_CACHE: dict[tuple[str, int], TaskData] = {}


def train_standalone(job: dict[str, Any]) -> dict[str, Any]:
    """Train one (spec, seed) from scratch with the recipe and score it; runs in a worker process."""
    recipe = Recipe(**{**job["recipe"], "betas": tuple(job["recipe"]["betas"])})
    torch.set_num_threads(recipe.threads)
    spec = ArchSpec.from_dict(job["arch"])
    key = (job["data"], spec.resolution)
    if key not in _DATA_CACHE:
        _DATA_CACHE[key] = load_data(job["data"], spec.resolution)
    data = _DATA_CACHE[key]
    seed = job["seed"]
    torch.manual_seed(seed)  # weight init: this worker process is ours alone
    model = build_model(spec)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=recipe.lr,
        betas=recipe.betas,
    )
    steps = recipe.steps
    step, epoch, losses = 0, 0, []
    start = time.perf_counter()
    model.train()
    while step < steps:
        for images, labels in data.train_batches(epoch, recipe.batch_size, seed=seed):
            if step == steps:
                break
            for group in optimizer.param_groups:
                group["lr"] = recipe.lr * lr_factor(step, steps, recipe.warmup_fraction)
            loss = F.cross_entropy(model(images), labels, label_smoothing=recipe.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            step += 1
        epoch += 1
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    top1 = evaluate(model, data)
    tail = losses[-max(1, steps // 20) :]
    return {
        **{k: job[k] for k in ("name", "seed")},
        "top1": round(top1, 3),
        "train_s": round(train_s, 1),
        "eval_s": round(time.perf_counter() - start, 1),
        "steps": steps,
        "final_train_loss": round(sum(tail) / len(tail), 4),
    }


def choose_subnets(space, names: list[str], num_random: int, seed: int) -> list[tuple[str, ArchSpec]]:
    """Named subnets (smallest, largest, presets, or ``LABEL=ARCH.json``) plus distinct seeded random ones."""
    chosen: list[tuple[str, ArchSpec]] = []
    for name in names:
        if "=" in name:
            name, path = name.split("=", 1)
            spec = space.validate(load_arch(path))
        else:
            spec = {"smallest": space.smallest, "largest": space.largest}.get(name, lambda n=name: space.preset(n))()
        same = [i for i, (_, earlier) in enumerate(chosen) if earlier == spec]
        if same:  # e.g. the tiny space's L7 is its largest network, as EfficientFormer-L7 is in v1
            chosen[same[0]] = (f"{chosen[same[0]][0]} = {name}", spec)
        else:
            chosen.append((name, spec))
    rng = random.Random(seed)
    seen = {spec for _, spec in chosen}
    named = len(chosen)
    while len(chosen) < named + num_random:
        spec = space.sample(rng)
        if spec not in seen:
            seen.add(spec)
            chosen.append((f"random {len(chosen) - named + 1}", spec))
    return chosen


def summarise(subnets: list[dict[str, Any]]) -> dict[str, Any]:
    """Spread across subnets vs seed noise, and how accuracy ranks with size."""
    complete = [s for s in subnets if len(s["runs"]) >= 2]
    for s in subnets:
        accs = [r["top1"] for r in s["runs"]]
        s["mean"] = round(statistics.fmean(accs), 3) if accs else None
        s["seed_std"] = round(statistics.stdev(accs), 3) if len(accs) >= 2 else None
    if len(complete) < 3:
        return {"complete_subnets": len(complete)}
    means = [s["mean"] for s in complete]
    spread = statistics.stdev(means)
    seed_std = statistics.fmean(s["seed_std"] for s in complete)
    params = [s["params"] for s in complete]
    macs = [s["macs"] for s in complete]
    by_name = {alias: s for s in complete for alias in s["name"].split(" = ")}
    summary = {
        "complete_subnets": len(complete),
        "spread_pts": round(spread, 3),
        "seed_std_pts": round(seed_std, 3),
        "ratio": round(spread / seed_std, 2) if seed_std else None,
        "goal_ratio": GOAL_RATIO,
        "top1_range": [round(min(means), 2), round(max(means), 2)],
        "spearman_params_top1": round(float(stats.spearmanr(params, means).statistic), 3),
        "kendall_params_top1": round(float(stats.kendalltau(params, means).statistic), 3),
        "spearman_macs_top1": round(float(stats.spearmanr(macs, means).statistic), 3),
        "kendall_macs_top1": round(float(stats.kendalltau(macs, means).statistic), 3),
        "rank_order": [s["name"] for s in sorted(complete, key=lambda s: -s["mean"])],
    }
    if "largest" in by_name and "smallest" in by_name:
        gap = by_name["largest"]["mean"] - by_name["smallest"]["mean"]
        summary["largest_minus_smallest_pts"] = round(gap, 2)
        summary["largest_minus_smallest_in_seed_stds"] = round(gap / seed_std, 1) if seed_std else None
    return summary


def _table_row(sub: dict[str, Any], seeds: list[int]) -> str:
    spec = sub["arch"]
    by_seed = {r["seed"]: r for r in sub["runs"]}
    cells = [f"{by_seed[k]['top1']:.2f}" if k in by_seed else "" for k in seeds]
    mean = f"{sub['mean']:.2f}" if sub["mean"] is not None else ""
    std = f"{sub['seed_std']:.2f}" if sub["seed_std"] is not None else ""
    secs = f"{statistics.fmean(r['train_s'] + r['eval_s'] for r in sub['runs']):.0f}" if sub["runs"] else ""
    return (
        f"| {sub['name']} | {'/'.join(map(str, spec['widths']))} | {'/'.join(map(str, spec['depths']))} | "
        f"{spec['num_meta3d']} | {'/'.join(map(str, spec['mlp_ratios']))} | {sub['params']:,} | "
        f"{sub['macs'] / 1e6:.2f} | " + " | ".join(cells) + f" | {mean} | {std} | {secs} |"
    )


def _describe_task(task: dict[str, Any]) -> str:
    rule = "the digit" if task["label_rule"] == "identity" else "the sum of the digits shown"
    text = (
        f"{task['digits_per_image']} digit(s) on a {task['grid']}x{task['grid']} grid, label = {rule}, each digit "
        f"{task['scale']:g} of its cell; training images shifted up to {task['max_shift']:g} cell and rotated up to "
        f"{task['max_rotation']:g} rad (validation images centred and upright)"
    )
    if task["empty_probability"]:
        text += f"; each cell empty with probability {task['empty_probability']:g}"
    if task["train_per_epoch"]:
        text += "; new random mosaics every epoch"
    return text


def write_report(result: dict[str, Any], out: Path) -> None:
    atomic_write_json(out.with_suffix(".json"), result)
    s, recipe, data = result["summary"], result["recipe"], result["data"]
    seeds = result["seeds"]
    lines = [
        f"# Task separability: {data['name']} on the `{result['space']['name']}` space",
        "",
        "**Goal** (issue 3): within the demo's training budget, the spread of validation top-1 across "
        f"stand-alone-trained subnets (std of their seed means) is >= {GOAL_RATIO:g}x the seed noise "
        "(mean per-subnet std across seeds), and bigger subnets are measurably better.",
        "",
    ]
    if "ratio" in s:
        met = "met" if s["ratio"] and s["ratio"] >= GOAL_RATIO else "NOT met"
        lines += [
            f"**Result**: spread {s['spread_pts']:.2f} pts vs seed noise {s['seed_std_pts']:.2f} pts: "
            f"**ratio {s['ratio']:.1f}x** ({met}) over {s['complete_subnets']} subnets x {len(seeds)} seeds; "
            f"top-1 {s['top1_range'][0]:.1f}-{s['top1_range'][1]:.1f}%. "
            f"Parameters vs top-1: Spearman {s['spearman_params_top1']:+.2f}, Kendall {s['kendall_params_top1']:+.2f} "
            f"(MACs: {s['spearman_macs_top1']:+.2f}, {s['kendall_macs_top1']:+.2f}).",
        ]
        if "largest_minus_smallest_pts" in s:
            lines[-1] += (
                f" Largest minus smallest: {s['largest_minus_smallest_pts']:+.1f} pts "
                f"({s['largest_minus_smallest_in_seed_stds']:.1f} seed stds)."
            )
        lines.append("")
    else:
        lines += [f"**Partial**: only {s['complete_subnets']} subnets have >= 2 seeds so far; rerun to resume.", ""]
    header = "| subnet | widths | depths | Meta3D | MLP ratios | params | MMACs | " + " | ".join(f"seed {k}" for k in seeds) + " | mean | std | s/run |"
    lines += [header, "|" + "---|" * (header.count("|") - 1)]
    for sub in sorted(result["subnets"], key=lambda x: -(x["mean"] if x["mean"] is not None else -1)):
        lines.append(_table_row(sub, seeds))
    prov = result["provenance"]
    lines += [
        "",
        "Rows are ordered by mean top-1 (the rank order). `s/run`: wall seconds of one single-threaded "
        f"training + evaluation, {result['workers']} runs in parallel on this machine.",
    ]
    if result.get("compared"):
        lines += [
            "",
            "## Compared with other settings (same script, same recipe unless noted)",
            "",
            "| data | resolution | images/run | lr | subnets x seeds | top-1 range | spread | seed noise | ratio | Spearman params |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for other in result["compared"]:
            o = other["summary"]
            if "ratio" not in o:
                continue
            lines.append(
                f"| `{other['data']['name']}` | {other['data']['resolution']} | {other['recipe']['images']:,} | "
                f"{other['recipe']['lr']:g} | {o['complete_subnets']} x {len(other['seeds'])} | "
                f"{o['top1_range'][0]:.1f}-{o['top1_range'][1]:.1f}% | {o['spread_pts']:.2f} | {o['seed_std_pts']:.2f} | "
                f"{o['ratio']:.1f}x | {o['spearman_params_top1']:+.2f} |"
            )
    lines += [
        "",
        "## Task and recipe",
        "",
        f"- Data: `{data['name']}` at {data['resolution']}x{data['resolution']}, {data['num_classes']} classes, "
        f"{data['num_train']:,} training images per epoch, {data['num_val']:,} fixed validation images"
        + (f": {_describe_task(data['task'])}" if "task" in data else "")
        + ".",
        f"- Recipe: {recipe['images']:,} training images ({recipe['images'] // recipe['batch_size']} steps of batch "
        f"{recipe['batch_size']}), AdamW lr {recipe['lr']:g}, betas {tuple(recipe['betas'])}, weight decay "
        f"{recipe['weight_decay']:g} (matrices and kernels only), linear warm-up over "
        f"{recipe['warmup_fraction']:.0%} of the steps then cosine to 0, label smoothing {recipe['label_smoothing']:g}, "
        f"{recipe['threads']} thread per run.",
        f"- Space `{result['space']['name']}` (fingerprint {result['space']['fingerprint']}); the exact spec of every "
        "subnet is in the JSON file next to this report.",
        "",
        *provenance_markdown(prov),
    ]
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="digits-mosaic", help="dataset, as for `efnas train --data` (default: %(default)s)")
    parser.add_argument("--space", default="tiny", help="search space (default: %(default)s)")
    parser.add_argument("--resolution", type=int, default=None, help="input resolution (default: the space's)")
    parser.add_argument("--subnets", default="smallest,largest,L1,L3,L7", help="named subnets: smallest, largest, presets, or LABEL=ARCH.json (e.g. a search's best.json) (default: %(default)s)")
    parser.add_argument("--random", type=int, default=8, help="seeded random subnets besides the named ones (default: %(default)s)")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per subnet (default: %(default)s)")
    parser.add_argument("--images", type=int, default=Recipe.images, help="training images per run (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=Recipe.lr, help="AdamW peak learning rate (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="single-threaded runs in parallel (default: %(default)s)")
    parser.add_argument("--minutes", type=float, default=None, help="start no new run after this many minutes (resume later)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random subnet choice (default: %(default)s)")
    parser.add_argument("--out", default="docs/benchmarks/task_separability", help="output path without suffix")
    parser.add_argument("--compare", nargs="*", default=[], help="results (JSON) of other runs of this script to summarise beside this one")
    args = parser.parse_args()

    space = load_space(args.space)
    probe = load_data(args.data, args.resolution or space.resolution)
    space = space.with_num_classes(probe.num_classes)
    if args.resolution:
        space = dataclasses.replace(space, resolution=args.resolution)
    recipe = Recipe(images=args.images, lr=args.lr)
    subnets = choose_subnets(space, [n for n in args.subnets.split(",") if n], args.random, args.seed)
    seeds = list(range(args.seeds))
    if args.resolution:
        subnets = [(n, dataclasses.replace(s, resolution=args.resolution)) for n, s in subnets]
    out = Path(args.out)

    # Reuse the runs of an earlier (interrupted) study with the same data, recipe and specs.
    done: dict[tuple[str, int], dict[str, Any]] = {}
    old_path = out.with_suffix(".json")
    if old_path.exists():
        old = json.loads(old_path.read_text())
        if old.get("recipe") == dataclasses.asdict(recipe) | {"betas": list(recipe.betas)} and old.get("data") == probe.describe():
            for sub in old["subnets"]:
                for run in sub["runs"]:
                    done[(ArchSpec.from_dict(sub["arch"]).to_json(), run["seed"])] = run

    recipe_dict = dataclasses.asdict(recipe) | {"betas": list(recipe.betas)}
    records = [
        {"name": name, "arch": spec.to_dict(), "params": count_params(spec), "macs": count_macs(spec), "runs": []}
        for name, spec in subnets
    ]
    jobs = []
    for record, (name, spec) in zip(records, subnets):
        for seed in seeds:
            run = done.get((spec.to_json(), seed))
            if run is not None:
                record["runs"].append({**run, "name": name})
            else:
                jobs.append({"name": name, "arch": spec.to_dict(), "seed": seed, "data": args.data, "recipe": recipe_dict})
    jobs.sort(key=lambda j: -count_macs(ArchSpec.from_dict(j["arch"])))  # longest first: better packing

    compared = []
    for path in args.compare:
        other = json.loads(Path(path).read_text())
        compared.append({key: other[key] for key in ("data", "recipe", "seeds", "summary")} | {"file": path})

    def result() -> dict[str, Any]:
        for record in records:
            record["runs"].sort(key=lambda r: r["seed"])
        return {
            "data": probe.describe(),
            "space": {"name": space.name, "fingerprint": space.fingerprint()},
            "recipe": recipe_dict,
            "seeds": seeds,
            "workers": args.workers,
            "summary": summarise(records),
            "subnets": records,
            "compared": compared,
            "provenance": provenance(("scikit-learn", "scipy")),
        }

    console.print(
        f"{len(records)} subnets x {len(seeds)} seeds on {args.data} at {space.resolution}px: "
        f"{len(jobs)} runs to do, {sum(len(r['runs']) for r in records)} reused"
    )
    started = time.monotonic()
    by_name = {r["name"]: r for r in records}
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(args.workers, mp_context=context) as pool, Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(), console=console
    ) as progress:
        bar = progress.add_task("training subnets", total=len(jobs))
        pending: set[concurrent.futures.Future] = set()
        queue = list(jobs)
        while queue or pending:
            out_of_time = args.minutes is not None and time.monotonic() - started > 60 * args.minutes
            while queue and len(pending) < args.workers and not out_of_time:
                pending.add(pool.submit(train_standalone, queue.pop(0)))
            if not pending:
                break
            finished, pending = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in finished:
                run = future.result()
                by_name[run["name"]]["runs"].append(run)
                progress.console.print(f"  {run['name']:<10} seed {run['seed']}: top-1 {run['top1']:.2f}%  ({run['train_s']:.0f} s)")
                progress.advance(bar)
            write_report(result(), out)
    final = result()
    write_report(final, out)

    s = final["summary"]
    table = Table(title=f"{args.data} on {space.name}: top-1 over {len(seeds)} seeds")
    for column in ("subnet", "params", "mean", "std"):
        table.add_column(column, justify="left" if column == "subnet" else "right")
    for sub in sorted(records, key=lambda r: -(r["mean"] or 0)):
        if sub["runs"]:
            table.add_row(sub["name"], f"{sub['params']:,}", f"{sub['mean']:.2f}", f"{sub['seed_std']:.2f}" if sub["seed_std"] is not None else "")
    console.print(table)
    if "ratio" in s:
        console.print(
            f"spread {s['spread_pts']:.2f} pts / seed noise {s['seed_std_pts']:.2f} pts = ratio {s['ratio']:.2f} "
            f"(goal >= {GOAL_RATIO:g}); Spearman params-top1 {s['spearman_params_top1']:+.2f}"
        )
    remaining = sum(1 for record in records for _ in range(len(seeds) - len(record["runs"])))
    if remaining:
        console.print(f"{remaining} runs not done yet: run the same command again to resume")
    console.print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
