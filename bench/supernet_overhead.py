#!/usr/bin/env python3
"""Benchmark: what running a subnet through the supernet costs over its extracted static model.

For L1/L3/L7 and random architectures of a space, times forward+backward of ``supernet(x, spec)``
and of ``supernet.extract(spec)`` on the same input, interleaved in one process (A, B, A, B, ...)
so that both see the same machine state, and reports the ratio of medians. Goal: <= 1.05.

    python bench/supernet_overhead.py                       # efficientformer-v1, 224px, CPU, batches 2 and 8
    python bench/supernet_overhead.py --space tiny --batch 128 --random 10 --out docs/benchmarks/supernet_overhead_tiny

The slicing costs a fixed few microseconds per layer, so the ratio depends on how much work each
layer does: it is reported per batch size.

Writes docs/benchmarks/supernet_overhead.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.progress import track  # noqa: E402
from rich.table import Table  # noqa: E402

from _load import OtherLoad, load_note  # noqa: E402  (bench/_load.py, beside this script)
from supernet import load_space  # noqa: E402
from supernet.elastic import Supernet  # noqa: E402
from supernet.io import atomic_write_json, atomic_write_text, console, provenance, provenance_markdown  # noqa: E402
from supernet.model import count_macs  # noqa: E402

GOAL = 1.05


def time_step(model, x: torch.Tensor, spec=None) -> float:
    start = time.perf_counter()
    out = model(x, spec) if spec is not None else model(x)
    out.float().logsumexp(dim=1).sum().backward()
    elapsed = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    return elapsed


def _batch_summary(rows: list[dict]) -> dict:
    """Max and median ratio of one batch size's rows, the plain-slicing median, and the verdict."""
    largest = max(r["ratio"] for r in rows)
    return {
        "max_ratio": largest,
        "median_ratio": statistics.median(r["ratio"] for r in rows),
        "median_plain_slicing_ratio": statistics.median(r["plain_slicing_ratio"] for r in rows),
        "met": largest <= GOAL,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="efficientformer-v1")
    parser.add_argument("--batch", type=int, nargs="+", default=[2, 8], help="batch sizes (default: 2 8)")
    parser.add_argument("--random", type=int, default=4, help="random architectures besides the presets")
    parser.add_argument("--repeats", type=int, default=7, help="timed forward+backward passes of each model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="docs/benchmarks/supernet_overhead")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    space = load_space(args.space)
    supernet = Supernet(space).train()
    # The same weights with autograd's plain slice backward (full-size gradient per use), timed beside
    # it: the in-slice gradients' own gain, measured on this machine (it differs between machines).
    plain = Supernet(space).train()
    plain.load_state_dict(supernet.state_dict())
    plain.accumulate_in_slice(False)
    rng = random.Random(args.seed)
    specs = [(name, spec) for name, spec in space.presets] + [(f"random {i + 1}", space.sample(rng)) for i in range(args.random)]
    inputs = {b: torch.randn(b, 3, space.resolution, space.resolution, generator=torch.Generator().manual_seed(args.seed)) for b in args.batch}

    meter = OtherLoad()
    rows = []
    for name, spec in track(specs, description="timing", console=console):
        static = supernet.extract(spec).train()
        for batch, x in inputs.items():
            for _ in range(2):  # warm-up: allocator, oneDNN primitive caches
                time_step(supernet, x, spec)
                time_step(plain, x, spec)
                time_step(static, x)
            super_times, plain_times, static_times = [], [], []
            for _ in range(args.repeats):
                super_times.append(time_step(supernet, x, spec))
                plain_times.append(time_step(plain, x, spec))
                static_times.append(time_step(static, x))
            rows.append(
                {
                    "name": name,
                    "batch": batch,
                    "arch": spec.to_dict(),
                    "gmacs": count_macs(spec) / 1e9,
                    "supernet_ms": 1000 * statistics.median(super_times),
                    "static_ms": 1000 * statistics.median(static_times),
                    "ratio": statistics.median(super_times) / statistics.median(static_times),
                    "plain_slicing_ms": 1000 * statistics.median(plain_times),
                    "plain_slicing_ratio": statistics.median(plain_times) / statistics.median(static_times),
                }
            )

    by_batch = {b: _batch_summary([r for r in rows if r["batch"] == b]) for b in args.batch}
    summary = {"goal": GOAL, "by_batch": by_batch}
    settings = {"space": space.name, "batches": args.batch, "threads": args.threads, "repeats": args.repeats, "seed": args.seed, "resolution": space.resolution}
    result = {"benchmark": "supernet_overhead", "settings": settings, "summary": summary, "rows": rows,
              "other_cores": meter.cores(), "provenance": provenance()}

    table = Table(title=f"Supernet vs extracted static model, forward+backward ({space.name}, {args.threads} threads)")
    for column in ("architecture", "batch", "GMACs", "supernet ms", "static ms", "ratio", "plain slicing ratio"):
        table.add_column(column, justify="left" if column == "architecture" else "right")
    for row in rows:
        table.add_row(row["name"], str(row["batch"]), f"{row['gmacs']:.3g}", f"{row['supernet_ms']:.1f}", f"{row['static_ms']:.1f}",
                      f"{row['ratio']:.3f}", f"{row['plain_slicing_ratio']:.3f}")
    console.print(table)
    verdicts = [f"batch {b}: max {v['max_ratio']:.3f}, median {v['median_ratio']:.3f} ({'met' if v['met'] else 'NOT met'}; "
                f"plain slicing median {v['median_plain_slicing_ratio']:.3f})" for b, v in by_batch.items()]
    console.print(f"goal ratio <= {GOAL}; " + "; ".join(verdicts))

    out = Path(args.out)
    atomic_write_json(out.with_suffix(".json"), result)
    prov = result["provenance"]
    lines = [
        "# Supernet overhead",
        "",
        f"Forward+backward of `supernet(x, spec)` against the extracted static model on the same input, interleaved in one process; median of {args.repeats} passes each after 2 warm-up passes. "
        "The supernet keeps the gradients of its large sliced weights in the used slice; the last column is the same supernet with autograd's plain slice backward (a full-size gradient per use), timed beside them.",
        f"Goal: ratio <= {GOAL}. Result: " + "; ".join(verdicts) + ".",
        "",
        "| architecture | batch | GMACs | supernet ms | static ms | ratio | plain slicing ms | plain slicing ratio |",
        "|---|---|---|---|---|---|---|---|",
        *(f"| {r['name']} | {r['batch']} | {r['gmacs']:.3g} | {r['supernet_ms']:.1f} | {r['static_ms']:.1f} | {r['ratio']:.3f} | "
          f"{r['plain_slicing_ms']:.1f} | {r['plain_slicing_ratio']:.3f} |" for r in rows),
        "",
        f"Space `{space.name}` at {space.resolution}px, {args.threads} threads, seed {args.seed}. "
        + load_note(result["other_cores"], os.cpu_count() or 1),
        "",
        *provenance_markdown(prov),
    ]
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
