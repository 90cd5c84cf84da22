#!/usr/bin/env python3
"""Benchmark: what ``--worst-of K`` costs per training step against the uniform sandwich.

Times a tiny-space training step (forward, backward, AdamW) at batch 64 for K = 1, 2, 3 side by
side, 40 steps each per round, and prints each K's time as a ratio of K = 1's in the same round
(ratios, because this machine class runs slow stretches). Run it on a quiet machine.

    python bench/worst_of_cost.py --threads 2 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from supernet import load_space  # noqa: E402
from supernet.elastic import Supernet  # noqa: E402
from supernet.optim import param_groups  # noqa: E402
from supernet.train import SandwichLoss, TrainConfig, sandwich_specs, worst_up_pools  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40, help="steps per K and round")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    space = load_space("tiny")
    torch.manual_seed(0)
    supernet = Supernet(space).train()
    optimizer = torch.optim.AdamW(param_groups(supernet, 0.05), lr=1e-3)
    images, labels = torch.randn(64, 3, 32, 32), torch.randint(0, space.num_classes, (64,))

    def step(k: int, index: int) -> float:
        loss_module = SandwichLoss(supernet, TrainConfig(worst_of=k))
        specs = sandwich_specs(space, 0, index, 2 if k == 1 else 0)
        pools = worst_up_pools(space, 0, index, 2, k) if k > 1 else []
        started = time.perf_counter()
        loss, _ = loss_module(images, labels, specs, None, pools)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - started

    for index in range(3):  # the first steps allocate and warm the caches
        step(1, -1 - index)
    ratios: dict[int, list[float]] = {2: [], 3: []}
    for round_ in range(args.rounds):
        seconds = {k: sum(step(k, 1000 * round_ + i) for i in range(args.steps)) / args.steps for k in (1, 2, 3)}
        for k in ratios:
            ratios[k].append(seconds[k] / seconds[1])
        print(f"round {round_ + 1}: s/step " + ", ".join(f"K={k} {s:.4f}" for k, s in seconds.items()), flush=True)
    for k, values in ratios.items():
        print(f"--worst-of {k} / uniform: median {statistics.median(values):.3f} (min {min(values):.3f}, max {max(values):.3f})")


if __name__ == "__main__":
    main()
