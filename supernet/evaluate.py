"""The one scorer of a subnet, shared by training validation, the search and export.

A subnet inherits its weights from the supernet, but the supernet's BatchNorm statistics are a
blend over all the subnets trained through it. Before a subnet is scored its statistics are
re-estimated on a few training batches; this is done on the extracted static model, so the
supernet's own buffers are never touched and no autograd graph is kept (peer tools' BN
calibration is known to leak memory when run through the supernet under autograd).

>>> data = task_data(info)  # the data the supernet was trained on, split as in training  # doctest: +SKIP
>>> scorer = Scorer(data, EvalConfig(calib_batches=8, val_subset=2000))  # doctest: +SKIP
>>> scorer.score(supernet, spec)  # top-1, a fraction  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from supernet.data import TaskData, load_data
from supernet.errors import ConfigError, EfnasError
from supernet.space import ArchSpec

if TYPE_CHECKING:
    from rich.progress import Progress

    from supernet.checkpoint import CheckpointInfo

__all__ = [
    "EvalConfig",
    "Scorer",
    "calibration_batches",
    "evaluate",
    "evaluate_spec",
    "recalibrate_bn",
    "task_data",
]

Batch = tuple[torch.Tensor, torch.Tensor]

# Batches are kept in memory when they fit in this much (the tiny space's default calibration
# takes 12 MiB; 224-pixel ImageNet batches are re-read instead).
_CACHE_LIMIT_BYTES = 512 * 2**20


@dataclass(frozen=True)
class EvalConfig:
    """How a subnet is scored. Scores from different settings are not comparable, so a study
    records these and refuses to continue with other ones."""

    calib_batches: int = 8  # training batches for the BatchNorm re-estimation; 0 keeps the supernet's statistics
    batch_size: int = 128  # images per batch, for calibration and validation
    val_subset: int | None = None  # score on this many validation images (seeded); None: all of them
    seed: int = 0  # which calibration batches and which validation subset

    def __post_init__(self) -> None:
        for name, lowest in (("calib_batches", 0), ("batch_size", 1), ("seed", 0)):
            if getattr(self, name) < lowest:
                raise ConfigError(name, f"must be at least {lowest}, got {getattr(self, name)}")
        if self.val_subset is not None and self.val_subset < 1:
            raise ConfigError("val_subset", f"must be at least 1, got {self.val_subset}")


def task_data(info: CheckpointInfo, data: str | None = None) -> TaskData:
    """The data a supernet is scored on: ``data`` (e.g. an image folder that moved) or else the
    dataset its checkpoint records, split with the training run's seed so that validation images
    are never training images."""
    name = data or info.config.get("data")
    if not name:
        # Guessing a dataset could score on images of another task with the same class count.
        raise EfnasError(f"checkpoint {info.path} does not record the dataset it was trained on; give the dataset (--data)")
    resolution = int(info.data.get("resolution", info.space.resolution))
    loaded = load_data(str(name), resolution, seed=int(info.config.get("seed", 0)))
    if loaded.num_classes != info.space.num_classes:
        raise EfnasError(
            f"dataset '{name}' has {loaded.num_classes} classes but the supernet in {info.path} "
            f"was trained for {info.space.num_classes}"
        )
    return loaded


def recalibrate_bn(model: nn.Module, batches: Iterable[Batch], device: torch.device | str = "cpu") -> nn.Module:
    """Reset every BatchNorm's running statistics and re-estimate them as the plain average over
    ``batches`` (momentum ``None``). Returns the model in eval mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    model.train()
    with torch.no_grad():
        for images, _ in batches:
            model(images.to(device))
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    return model.eval()


def evaluate(model: nn.Module, batches: Iterable[Batch], device: torch.device | str = "cpu") -> float:
    """Top-1 accuracy (a fraction in [0, 1]) of ``model`` in eval mode over ``batches``."""
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for images, labels in batches:
            predictions = model(images.to(device)).argmax(dim=1).cpu()
            correct += int((predictions == labels).sum())
            total += labels.numel()
    if total == 0:
        raise ValueError("evaluate() got no batches")
    return correct / total


def calibration_batches(data: TaskData, num_batches: int, batch_size: int, seed: int) -> Iterator[Batch]:
    """The first ``num_batches`` training batches of epoch 0 for ``seed``: the same for every subnet."""
    return islice(data.train_batches(0, batch_size, seed=seed), num_batches)


class Scorer:
    """Top-1 of subnets on ``data`` under one :class:`EvalConfig`: BatchNorm re-estimated on the
    same training batches for every model, then scored on the validation split or on a fixed,
    seeded subset of it. Given the settings a score is deterministic."""

    def __init__(self, data: TaskData, config: EvalConfig = EvalConfig(), *, device: torch.device | str = "cpu") -> None:
        if config.val_subset is not None and config.val_subset > data.num_val:
            raise EfnasError(f"val_subset {config.val_subset} exceeds the {data.num_val} validation images of '{data.name}'")
        if config.calib_batches and data.num_train_batches(config.batch_size) == 0:
            # Re-estimating on no batch would leave every BatchNorm at mean 0, variance 1.
            raise EfnasError(
                f"dataset '{data.name}' has {data.num_train} training images, not one full batch of {config.batch_size}; "
                "lower the batch size (or calibrate on 0 batches)"
            )
        self.data = data
        self.config = config
        self.device = torch.device(device)
        c = config
        image_bytes = 3 * data.resolution**2 * 4
        self._calibration = _cached(
            lambda: calibration_batches(data, c.calib_batches, c.batch_size, c.seed), c.calib_batches * c.batch_size * image_bytes
        )
        self._validation = _cached(self._subset_batches, self.num_val * image_bytes) if c.val_subset else self._all_val

    @property
    def num_val(self) -> int:
        """How many validation images a score is measured on."""
        return self.config.val_subset or self.data.num_val

    @property
    def num_calib_batches(self) -> int:
        """How many training batches the BatchNorm re-estimation sees (fewer when the set is small)."""
        return min(self.config.calib_batches, self.data.num_train_batches(self.config.batch_size))

    def recalibrate(self, model: nn.Module, *, progress: Progress | None = None, description: str = "recalibrating BatchNorm") -> nn.Module:
        """Re-estimate ``model``'s BatchNorm statistics (nothing with 0 calibration batches); eval mode."""
        if self.config.calib_batches:
            recalibrate_bn(model, _counted(self._calibration(), progress, description, self.num_calib_batches), self.device)
        return model.eval()

    def accuracy(self, model: nn.Module, *, progress: Progress | None = None, description: str = "evaluating") -> float:
        """Validation top-1 of ``model`` as it is (a fraction)."""
        total = -(-self.num_val // self.config.batch_size)
        return evaluate(model, _counted(self._validation(), progress, description, total), self.device)

    def score(self, supernet: Any, spec: ArchSpec) -> float:
        """Validation top-1 of ``spec`` with weights inherited from ``supernet``, after recalibration."""
        model = supernet.extract(supernet.check(spec)).to(self.device)
        return self.accuracy(self.recalibrate(model))

    def val_batches(self) -> Iterator[Batch]:
        """The batches a score is measured on."""
        return self._validation()

    def _all_val(self) -> Iterator[Batch]:
        return self.data.val_batches(self.config.batch_size)

    def _subset_batches(self) -> Iterator[Batch]:
        """The seeded subset, in validation order, in batches of ``batch_size``."""
        size, batch_size = self.data.num_val, self.config.batch_size
        chosen = torch.zeros(size, dtype=torch.bool)
        chosen[torch.randperm(size, generator=torch.Generator().manual_seed(self.config.seed))[: self.config.val_subset]] = True
        images: list[torch.Tensor] = []
        labels: list[torch.Tensor] = []
        held = start = 0
        for batch_images, batch_labels in self.data.val_batches(batch_size):
            keep = chosen[start : start + len(batch_labels)]
            start += len(batch_labels)
            images.append(batch_images[keep])
            labels.append(batch_labels[keep])
            held += int(keep.sum())
            while held >= batch_size:
                all_images, all_labels = torch.cat(images), torch.cat(labels)
                yield all_images[:batch_size], all_labels[:batch_size]
                images, labels = [all_images[batch_size:]], [all_labels[batch_size:]]
                held -= batch_size
        if held:
            yield torch.cat(images), torch.cat(labels)


def _cached(batches: Callable[[], Iterator[Batch]], size: int) -> Callable[[], Iterator[Batch]]:
    """``batches`` read once into memory when they fit, else read again on every call."""
    if size > _CACHE_LIMIT_BYTES:
        return batches
    kept = list(batches())
    return lambda: iter(kept)


def _counted(batches: Iterable[Batch], progress: Progress | None, description: str, total: int) -> Iterator[Batch]:
    if progress is None:
        yield from batches
        return
    task = progress.add_task(description, total=total)
    for batch in batches:
        yield batch
        progress.advance(task)


def evaluate_spec(
    supernet: Any,
    spec: ArchSpec,
    data: TaskData,
    *,
    calib_batches: int = 8,
    batch_size: int = 128,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> float:
    """Validation top-1 of ``spec`` with weights inherited from ``supernet`` after BN recalibration
    (one :class:`Scorer` call; build a Scorer to score many subnets on the same batches)."""
    config = EvalConfig(calib_batches=calib_batches, batch_size=batch_size, seed=seed)
    return Scorer(data, config, device=device).score(supernet, spec)
