"""An architecture's score: top-1 on the validation split with weights inherited from the supernet.

The subnet is extracted from the supernet, its BatchNorm statistics are re-estimated on the same
``calib_batches`` training batches for every architecture, and it is scored on the validation split
or on a fixed, seeded subset of it. Given the settings the score is deterministic, so it is cached
per architecture (here in memory; across processes and runs through the study's storage).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch

from supernet.checkpoint import CheckpointInfo
from supernet.data import TaskData, load_data
from supernet.elastic import Supernet
from supernet.errors import EfnasError
from supernet.evaluate import Batch, calibration_batches, evaluate, recalibrate_bn
from supernet.space import ArchSpec
from supernet.train import params_digest

__all__ = ["EvalConfig", "Evaluator"]

# Calibration batches are kept in memory when they fit in this much (the tiny space's default
# settings take 12 MiB; 224-pixel ImageNet batches are re-read instead).
_CACHE_LIMIT_BYTES = 512 * 2**20


@dataclass(frozen=True)
class EvalConfig:
    """How an architecture is scored. Scores from different settings are not comparable, so a
    study records these and refuses to continue with other ones."""

    calib_batches: int = 8  # training batches for the BatchNorm re-estimation
    batch_size: int = 128  # images per batch, for calibration and validation
    val_subset: int | None = None  # score on this many validation images (seeded), None: all
    seed: int = 0  # which calibration batches and which validation subset

    def __post_init__(self) -> None:
        for name in ("calib_batches", "batch_size"):
            if getattr(self, name) < 1:
                raise EfnasError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.val_subset is not None and self.val_subset < 1:
            raise EfnasError(f"--val-subset must be at least 1, got {self.val_subset}")
        if self.seed < 0:
            raise EfnasError(f"--eval-seed must be >= 0, got {self.seed}")


class Evaluator:
    """Scores architectures of a trained supernet on its own task.

    ``data`` overrides the dataset argument recorded in the checkpoint (e.g. an image folder that
    moved). The train/validation split is the one the supernet was trained with (the checkpoint's
    seed), so validation images are never training images.
    """

    def __init__(
        self,
        supernet: Supernet,
        info: CheckpointInfo,
        config: EvalConfig = EvalConfig(),
        *,
        data: str | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.supernet = supernet
        self.info = info
        self.config = config
        self.device = torch.device(device)
        self.data_arg = data or str(info.config.get("data", "digits-mosaic"))
        resolution = int(info.data.get("resolution", info.space.resolution))
        self.data: TaskData = load_data(self.data_arg, resolution, seed=int(info.config.get("seed", 0)))
        if self.data.num_classes != info.space.num_classes:
            raise EfnasError(
                f"dataset {self.data_arg} has {self.data.num_classes} classes but the supernet in {info.path} "
                f"was trained for {info.space.num_classes}"
            )
        if config.val_subset is not None and config.val_subset > self.data.num_val:
            raise EfnasError(f"--val-subset {config.val_subset} exceeds the {self.data.num_val} validation images of {self.data_arg}")
        self.supernet_digest = params_digest(supernet)  # identifies the weights wherever the file lives
        self._calibration = self._calibration_cache()
        self._val_subset = self._subset() if config.val_subset is not None else None
        self._scores: dict[ArchSpec, float] = {}

    @property
    def num_val(self) -> int:
        """How many validation images a score is measured on."""
        return self.config.val_subset or self.data.num_val

    def describe(self) -> dict[str, Any]:
        """What a study records about how its scores were made."""
        return {
            **asdict(self.config),
            "data": self.data_arg,
            "num_val": self.num_val,
            "split_seed": int(self.info.config.get("seed", 0)),
        }

    def accuracy(self, spec: ArchSpec) -> float:
        """Validation top-1 of ``spec`` (a fraction), from the cache when it was scored before."""
        if spec not in self._scores:
            self._scores[spec] = self._score(spec)
        return self._scores[spec]

    def remember(self, spec: ArchSpec, accuracy: float) -> None:
        """Put a score measured elsewhere (another process of the same study) into the cache."""
        self._scores[spec] = accuracy

    # -- internals ------------------------------------------------------------------------------

    def _score(self, spec: ArchSpec) -> float:
        self.supernet.check(spec)
        model = self.supernet.extract(spec).to(self.device)
        recalibrate_bn(model, self._calibration_batches(), self.device)
        return evaluate(model, self._val_batches(), self.device)

    def _calibration_cache(self) -> list[Batch] | None:
        c = self.config
        size = c.calib_batches * c.batch_size * 3 * self.data.resolution**2 * 4
        if size > _CACHE_LIMIT_BYTES:
            return None
        return list(calibration_batches(self.data, c.calib_batches, c.batch_size, c.seed))

    def _calibration_batches(self) -> Iterator[Batch]:
        if self._calibration is not None:
            return iter(self._calibration)
        c = self.config
        return calibration_batches(self.data, c.calib_batches, c.batch_size, c.seed)

    def _subset(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The seeded validation subset, gathered once into memory."""
        assert self.config.val_subset is not None
        generator = torch.Generator().manual_seed(self.config.seed)
        chosen = torch.zeros(self.data.num_val, dtype=torch.bool)
        chosen[torch.randperm(self.data.num_val, generator=generator)[: self.config.val_subset]] = True
        images, labels, start = [], [], 0
        for batch_images, batch_labels in self.data.val_batches(self.config.batch_size):
            keep = chosen[start : start + len(batch_labels)]
            images.append(batch_images[keep])
            labels.append(batch_labels[keep])
            start += len(batch_labels)
        return torch.cat(images), torch.cat(labels)

    def _val_batches(self) -> Iterator[Batch]:
        if self._val_subset is None:
            yield from self.data.val_batches(self.config.batch_size)
            return
        images, labels = self._val_subset
        for start in range(0, len(labels), self.config.batch_size):
            yield images[start : start + self.config.batch_size], labels[start : start + self.config.batch_size]
