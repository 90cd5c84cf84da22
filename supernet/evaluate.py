"""The one scorer of a subnet, shared by training validation, the search and export.

A subnet inherits its weights from the supernet, but the supernet's BatchNorm statistics are a
blend over all the subnets trained through it. Before a subnet is scored its statistics are
re-estimated on a few training batches; this is done on the extracted static model, so the
supernet's own buffers are never touched and no autograd graph is kept (peer tools' BN
calibration is known to leak memory when run through the supernet under autograd).

Under ``torchrun`` (an initialised ``torch.distributed`` process group) the work is shared: each
rank re-estimates BatchNorm on its share of the calibration batches and scores its share of the
validation batches, and the statistics and counts are summed over the ranks, so every rank gets
the score one process would compute. Every rank must then score the same subnets in the same order.

>>> data = task_data(info)  # the data the supernet was trained on, split as in training  # doctest: +SKIP
>>> scorer = Scorer(data, EvalConfig(calib_batches=8, val_subset=2000))  # doctest: +SKIP
>>> scorer.score(supernet, spec)  # top-1, a fraction  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
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
    "batchnorm_momentum",
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


@dataclass(frozen=True, kw_only=True)
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


@contextmanager
def batchnorm_momentum(model: nn.Module, momentum: float) -> Iterator[None]:
    """Every BatchNorm of ``model`` updates its running statistics with ``momentum`` (0: leaves
    them alone while still normalising with batch statistics in training mode) until the block ends."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    kept = [norm.momentum for norm in norms]
    for norm in norms:
        norm.momentum = momentum
    try:
        yield
    finally:
        for norm, value in zip(norms, kept):
            norm.momentum = value


def recalibrate_bn(
    model: nn.Module, batches: Iterable[Batch], device: torch.device | str = "cpu", *, distributed: bool = False
) -> nn.Module:
    """Reset every BatchNorm's running statistics and re-estimate them as the plain average, over
    ``batches``, of each batch's mean and variance. Returns the model in eval mode.

    With ``distributed`` every rank of the initialised process group passes its share of the
    batches, and the average is taken over all of them: the statistics one process would get.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for norm in norms:
        norm.reset_running_stats()
    # Summed in float64, so that the order of the sum (which rank holds which batch) does not show.
    sums = [torch.zeros(2, norm.num_features, dtype=torch.float64, device=norm.running_mean.device) for norm in norms]
    count = 0
    model.train()
    # Momentum 1: after each forward the running statistics are that batch's own.
    with torch.no_grad(), batchnorm_momentum(model, 1.0):
        for images, _ in batches:
            model(images.to(device))
            count += 1
            for norm, total in zip(norms, sums):
                total[0] += norm.running_mean
                total[1] += norm.running_var
    if distributed:
        flat = _all_reduce(torch.cat([torch.tensor([float(count)], dtype=torch.float64), *(t.flatten().cpu() for t in sums)]))
        count = int(flat[0])
        sums = [part.view(2, -1) for part in flat[1:].split([t.numel() for t in sums])]
    for norm, total in zip(norms, sums):
        if count:
            norm.running_mean.copy_(total[0] / count)
            norm.running_var.copy_(total[1] / count)
            norm.num_batches_tracked.fill_(count)
        else:
            norm.reset_running_stats()
    return model.eval()


def evaluate(
    model: nn.Module, batches: Iterable[Batch], device: torch.device | str = "cpu", *, distributed: bool = False
) -> float:
    """Top-1 accuracy (a fraction in [0, 1]) of ``model`` in eval mode over ``batches`` (with
    ``distributed``: over every rank's batches together)."""
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for images, labels in batches:
            predictions = model(images.to(device)).argmax(dim=1).cpu()
            correct += int((predictions == labels).sum())
            total += labels.numel()
    if distributed:
        correct, total = (int(n) for n in _all_reduce(torch.tensor([correct, total], dtype=torch.float64)))
    if total == 0:
        raise ValueError("evaluate() got no batches")
    return correct / total


def _all_reduce(values: torch.Tensor) -> torch.Tensor:
    """``values`` (on the CPU) summed over the ranks; NCCL reduces on this rank's GPU."""
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    values = values.to(device)
    dist.all_reduce(values)
    return values.cpu()


def calibration_batches(
    data: TaskData, num_batches: int, batch_size: int, seed: int, *, rank: int = 0, world_size: int = 1
) -> Iterator[Batch]:
    """The first ``num_batches`` training batches of epoch 0 for ``seed``: the same for every subnet
    (rank ``r`` of ``world_size`` gets batches ``r``, ``r + world_size``, ... of them)."""
    available = min(num_batches, data.num_train_batches(batch_size))
    return data.train_batches_at(0, batch_size, seed=seed, indices=range(rank, available, world_size))


def _process_group(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Which share of the work this process does: as given, or torch.distributed's when initialised."""
    initialised = dist.is_available() and dist.is_initialized()
    if rank is None and world_size is None:
        return (dist.get_rank(), dist.get_world_size()) if initialised else (0, 1)
    if rank is None or world_size is None:
        raise EfnasError("give both rank and world_size, or neither (then torch.distributed's are used)")
    if world_size < 1 or not 0 <= rank < world_size:
        raise EfnasError(f"rank {rank} is not within world size {world_size}")
    if world_size > 1 and not (initialised and (dist.get_rank(), dist.get_world_size()) == (rank, world_size)):
        raise EfnasError(
            f"scoring as rank {rank} of {world_size} needs an initialised torch.distributed process group of that "
            "size (run under torchrun), or world_size 1 to score alone"
        )
    return rank, world_size


class Scorer:
    """Top-1 of subnets on ``data`` under one :class:`EvalConfig`: BatchNorm re-estimated on the
    same training batches for every model, then scored on the validation split or on a fixed,
    seeded subset of it. Given the settings a score is deterministic.

    ``rank`` and ``world_size`` (default: torch.distributed's when initialised, else one process)
    share the work out over the processes of a torchrun job; ``world_size=1`` scores alone in each.
    """

    def __init__(
        self,
        data: TaskData,
        config: EvalConfig = EvalConfig(),
        *,
        device: torch.device | str = "cpu",
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
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
        self.rank, self.world_size = _process_group(rank, world_size)
        c, share = config, 1 / self.world_size
        image_bytes = 3 * data.resolution**2 * 4
        self._calibration = _cached(
            lambda: calibration_batches(data, c.calib_batches, c.batch_size, c.seed, rank=self.rank, world_size=self.world_size),
            c.calib_batches * c.batch_size * image_bytes * share,
        )
        self._samples = self._subset() if c.val_subset else None
        self._validation = _cached(self._val_share, self.num_val * image_bytes * share) if c.val_subset else self._val_share

    @property
    def num_val(self) -> int:
        """How many validation images a score is measured on."""
        return self.config.val_subset or self.data.num_val

    @property
    def num_calib_batches(self) -> int:
        """How many training batches the BatchNorm re-estimation sees (fewer when the set is small)."""
        return min(self.config.calib_batches, self.data.num_train_batches(self.config.batch_size))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def recalibrate(self, model: nn.Module, *, progress: Progress | None = None, description: str = "recalibrating BatchNorm") -> nn.Module:
        """Re-estimate ``model``'s BatchNorm statistics (nothing with 0 calibration batches); eval mode."""
        if self.config.calib_batches:
            share = len(range(self.rank, self.num_calib_batches, self.world_size))
            batches = _counted(self._calibration(), progress, description, share)
            recalibrate_bn(model, batches, self.device, distributed=self.distributed)
        return model.eval()

    def accuracy(self, model: nn.Module, *, progress: Progress | None = None, description: str = "evaluating") -> float:
        """Validation top-1 of ``model`` as it is (a fraction)."""
        share = len(range(self.rank, -(-self.num_val // self.config.batch_size), self.world_size))
        return evaluate(model, _counted(self._validation(), progress, description, share), self.device, distributed=self.distributed)

    def score(self, supernet: Any, spec: ArchSpec) -> float:
        """Validation top-1 of ``spec`` with weights inherited from ``supernet``, after recalibration."""
        model = supernet.extract(supernet.check(spec)).to(self.device)
        return self.accuracy(self.recalibrate(model))

    def val_batches(self) -> Iterator[Batch]:
        """The batches a score is measured on (this rank's share of them)."""
        return self._validation()

    def _val_share(self) -> Iterator[Batch]:
        return self.data.val_batches(self.config.batch_size, samples=self._samples, rank=self.rank, world_size=self.world_size)

    def _subset(self) -> list[int]:
        """The seeded subset of validation samples, in validation order (only these are read)."""
        size = self.data.num_val
        chosen = torch.randperm(size, generator=torch.Generator().manual_seed(self.config.seed))[: self.config.val_subset]
        return sorted(chosen.tolist())


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
    rank: int | None = None,
    world_size: int | None = None,
) -> float:
    """Validation top-1 of ``spec`` with weights inherited from ``supernet`` after BN recalibration
    (one :class:`Scorer` call; build a Scorer to score many subnets on the same batches)."""
    config = EvalConfig(calib_batches=calib_batches, batch_size=batch_size, seed=seed)
    return Scorer(data, config, device=device, rank=rank, world_size=world_size).score(supernet, spec)
