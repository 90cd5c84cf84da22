"""Optional fine-tuning of an extracted subnet, distilled from the supernet's largest subnet.

The subnet's weights are already trained inside the supernet; a few epochs on its own, against the
same soft targets it was trained on (the largest subnet's, as in the in-place distillation of
supernet training), recover what sharing weights with every other subnet cost it. AdamW with a
cosine decay from ``lr`` to zero; the batches are a pure function of the seed, so a fine-tune
repeats exactly.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from itertools import islice
from typing import Any

import torch
from rich.progress import Progress
from torch import nn

from supernet.errors import EfnasError
from supernet.optim import distillation_loss, param_groups, warmup_cosine

__all__ = ["FinetuneConfig", "FinetuneReport", "finetune", "finetune_steps"]


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig:
    epochs: int = 0
    lr: float = 5e-4  # peak AdamW learning rate; a quarter of supernet training's default
    weight_decay: float = 0.05  # on conv and linear weights only
    temperature: float = 1.0  # softmax temperature of the distillation
    steps_per_epoch: int | None = None  # cap on the steps of each epoch, for quick runs
    batch_size: int = 128

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise EfnasError(f"--finetune-epochs must not be negative, got {self.epochs}")
        if self.lr <= 0 or self.temperature <= 0 or self.weight_decay < 0:
            raise EfnasError(
                f"fine-tuning needs lr > 0, temperature > 0 and weight decay >= 0, got {self.lr}, "
                f"{self.temperature} and {self.weight_decay}"
            )
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise EfnasError(f"--finetune-steps must be at least 1, got {self.steps_per_epoch}")
        if self.batch_size < 1:
            raise EfnasError(f"--batch-size must be at least 1, got {self.batch_size}")


@dataclass(frozen=True)
class FinetuneReport:
    """How the fine-tune went: steps taken and the distillation loss at its start and end."""

    config: FinetuneConfig
    seed: int
    steps: int
    first_loss: float
    last_loss: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self.config), "seed": self.seed, "steps": self.steps, "first_loss": self.first_loss,
                "last_loss": self.last_loss, "seconds": round(self.seconds, 2)}


def finetune_steps(data: Any, config: FinetuneConfig) -> int:
    """Steps of each fine-tune epoch on ``data``, or a one-line error when there is not one full batch."""
    steps = data.num_train_batches(config.batch_size)
    if steps == 0:
        raise EfnasError(
            f"dataset '{data.name}' has {data.num_train} training images, not one full batch of {config.batch_size} "
            "to fine-tune on; lower --batch-size"
        )
    return steps if config.steps_per_epoch is None else min(steps, config.steps_per_epoch)


def finetune(
    student: nn.Module,
    teacher: nn.Module,
    data: Any,
    config: FinetuneConfig,
    *,
    seed: int,
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
) -> FinetuneReport:
    """Train ``student`` in place on ``teacher``'s soft outputs (the teacher stays in eval mode).

    ``data`` is a :class:`supernet.data.TaskData`; epoch ``e`` uses its training batches for
    ``(seed, e)``. Returns with the student in eval mode.
    """
    steps_per_epoch = finetune_steps(data, config)
    total = config.epochs * steps_per_epoch
    optimizer = torch.optim.AdamW(param_groups(student, config.weight_decay), lr=config.lr)
    teacher.eval().requires_grad_(False)
    student.train()
    task = progress.add_task("fine-tuning (distillation)", total=total) if progress is not None else None
    losses: list[float] = []
    step = 0
    started = time.perf_counter()
    for epoch in range(config.epochs):
        for images, _ in islice(data.train_batches(epoch, config.batch_size, seed=seed), steps_per_epoch):
            images = images.to(device)
            for group in optimizer.param_groups:
                group["lr"] = warmup_cosine(step, total, 0, config.lr)
            with torch.no_grad():
                target = teacher(images)
            loss = distillation_loss(student(images), target, config.temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.detach().item())
            step += 1
            if progress is not None and task is not None:
                progress.update(task, advance=1, description=f"fine-tuning (distillation) loss {losses[-1]:.3f}")
    student.eval()
    return FinetuneReport(config, seed, step, losses[0] if losses else float("nan"),
                          losses[-1] if losses else float("nan"), time.perf_counter() - started)
