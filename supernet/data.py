"""Training and validation data: the embedded digit tasks and user image folders.

``load_data(arg, resolution)`` returns a :class:`TaskData`, whose batches are a pure function of
``(seed, epoch, rank, world_size, batch index)``, augmentation included. That is what makes a
resumed run see exactly the batches an uninterrupted one would have seen, and what gives the DDP
ranks disjoint shards of one shared epoch order.

Datasets:

- ``digits-mosaic`` (the default): four of scikit-learn's bundled 8x8 digits in a 2x2 mosaic,
  labelled by their sum (0..36). Fresh mosaics every epoch. Architectures of the ``tiny`` space
  differ clearly on it (``docs/benchmarks/task_separability.md``), unlike on plain digits.
- ``digits``: one bundled digit per image, labelled 0..9. Every tiny architecture reaches ~98% on
  it, so it cannot tell them apart; kept as a sanity check.
- ``imagefolder:PATH``: ``PATH/train/<class>/*.png|jpg`` and ``PATH/val/<class>/...``, read with
  torchvision; random-resized-crop and flip for training, resize and centre crop for validation.

The embedded sets draw their training and validation images from disjoint pools of source digits
(fixed, seeded), so a validation mosaic never shows a digit image seen in training. Nothing is ever
downloaded.
"""

from __future__ import annotations

import functools
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from supernet._digits import DigitTask, EMBEDDED_TASKS, digit_pools, render_digits
from supernet.errors import EfnasError

__all__ = ["DATASET_HELP", "VAL_CROP_FRACTION", "TaskData", "embedded_dataset_names", "load_data"]

Batch = tuple[torch.Tensor, torch.Tensor]

IMAGEFOLDER_PREFIX = "imagefolder:"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# ImageNet statistics: what timm's EfficientFormer checkpoints (``--init-from``) were trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Validation images are resized so that the centre crop keeps this fraction of the shorter side
# (resize to resolution / 0.875, then crop resolution): timm's and the paper's evaluation transform.
VAL_CROP_FRACTION = 0.875


def embedded_dataset_names() -> tuple[str, ...]:
    return tuple(EMBEDDED_TASKS)


DATASET_HELP = (
    "training data: "
    + ", ".join(f"'{name}' ({task.summary})" for name, task in EMBEDDED_TASKS.items())
    + ", or 'imagefolder:PATH' for your own images in PATH/train/<class>/ and PATH/val/<class>/ "
    "(.png/.jpg); nothing is downloaded"
)


# Independent random streams, so that e.g. the epoch order and the epoch's augmentation never share
# a generator state.
_ORDER, _SAMPLES, _VAL_SET, _PIXEL_STATS, _AUGMENT = range(5)


def _mix_seed(stream: int, *parts: int) -> int:
    """One 63-bit seed from a stream id and non-negative integers (numpy's SeedSequence hashing:
    nearby inputs give unrelated outputs)."""
    state = np.random.SeedSequence([stream, *(int(p) for p in parts)]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31 | int(state[1]) >> 1) & ((1 << 63) - 1)


class TaskData(ABC):
    """A classification task: fixed splits, seeded training batches, a fixed validation order.

    Images come back normalised with :attr:`mean` and :attr:`std` (per channel), shape
    ``(B, 3, resolution, resolution)``, float32; labels are int64 class indices.
    """

    name: str
    num_classes: int
    resolution: int
    class_names: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_train: int
    num_val: int

    def num_train_batches(self, batch_size: int, world_size: int = 1) -> int:
        """Full batches per rank per epoch (the incomplete last global batch is dropped)."""
        _check_batching(batch_size, 0, world_size)
        return self.num_train // (batch_size * world_size)

    def train_batches(
        self,
        epoch: int,
        batch_size: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        start_batch: int = 0,
    ) -> Iterator[Batch]:
        """This rank's training batches of ``epoch``, from batch ``start_batch`` on.

        Global step ``s`` of an epoch covers positions ``[s*B*W, (s+1)*B*W)`` of the epoch's order
        (``B`` = ``batch_size``, ``W`` = ``world_size``); rank ``r`` takes the ``r``-th block of
        ``B`` of them. Order and augmentation depend only on ``seed`` and ``epoch``.
        """
        _check_batching(batch_size, rank, world_size)
        if epoch < 0 or seed < 0:
            raise EfnasError(f"epoch and seed must be >= 0, got epoch {epoch} and seed {seed}")
        steps = self.num_train_batches(batch_size, world_size)
        if not 0 <= start_batch <= steps:
            raise EfnasError(f"start_batch {start_batch} is outside the epoch's 0..{steps} batches")
        positions = torch.arange(start_batch, steps)[:, None] * (batch_size * world_size) + rank * batch_size
        rank_order = self._epoch_order(seed, epoch)[(positions + torch.arange(batch_size)).flatten()]
        return self._train_batches(rank_order, epoch, batch_size, seed)

    def train_batches_at(self, epoch: int, batch_size: int, *, seed: int, indices: Sequence[int]) -> Iterator[Batch]:
        """The training batches numbered ``indices`` (as one process's :meth:`train_batches` numbers
        the batches of ``epoch``), in that order, without reading the others: how DDP ranks share
        out the BatchNorm calibration batches."""
        _check_batching(batch_size, 0, 1)
        if epoch < 0 or seed < 0:
            raise EfnasError(f"epoch and seed must be >= 0, got epoch {epoch} and seed {seed}")
        steps = self.num_train_batches(batch_size)
        wanted = torch.as_tensor(list(indices), dtype=torch.long)
        if wanted.numel() and not (0 <= int(wanted.min()) and int(wanted.max()) < steps):
            raise EfnasError(f"batch indices {list(indices)} are outside the epoch's 0..{steps - 1} batches")
        ids = self._epoch_order(seed, epoch)[(wanted[:, None] * batch_size + torch.arange(batch_size)).flatten()]
        return self._train_batches(ids, epoch, batch_size, seed)

    def _epoch_order(self, seed: int, epoch: int) -> torch.Tensor:
        return torch.randperm(self.num_train, generator=torch.Generator().manual_seed(_mix_seed(_ORDER, seed, epoch)))

    @abstractmethod
    def _train_batches(self, sample_ids: torch.Tensor, epoch: int, batch_size: int, seed: int) -> Iterator[Batch]:
        """Batches of ``batch_size`` of the training samples ``sample_ids``, in that order."""

    def val_batches(
        self, batch_size: int, *, samples: Sequence[int] | None = None, rank: int = 0, world_size: int = 1
    ) -> Iterator[Batch]:
        """Validation samples without augmentation, in batches of ``batch_size`` (the last may be short).

        ``samples``: which validation samples, in this order (default: every one, in the fixed
        validation order). With ``world_size`` > 1 this rank gets batches ``rank``, ``rank + W``, ...
        of that sequence, so the ranks together see each batch exactly once, as one process would.
        """
        _check_batching(batch_size, rank, world_size)
        ids = torch.arange(self.num_val) if samples is None else torch.as_tensor(list(samples), dtype=torch.long)
        if ids.numel() and not (0 <= int(ids.min()) and int(ids.max()) < self.num_val):
            raise EfnasError(f"validation samples must be in 0..{self.num_val - 1}")
        starts = range(rank * batch_size, len(ids), world_size * batch_size)
        return self._val_batches([ids[start : start + batch_size] for start in starts])

    @abstractmethod
    def _val_batches(self, batches: list[torch.Tensor]) -> Iterator[Batch]:
        """One batch per tensor of validation sample ids."""

    def describe(self) -> dict[str, Any]:
        """What a run config or benchmark records about its data."""
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "resolution": self.resolution,
            "num_train": self.num_train,
            "num_val": self.num_val,
            "mean": list(self.mean),
            "std": list(self.std),
        }


def _check_batching(batch_size: int, rank: int, world_size: int) -> None:
    if batch_size < 1:
        raise EfnasError(f"batch size must be at least 1, got {batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise EfnasError(f"rank {rank} is not within world size {world_size}")


# -- embedded digit tasks ----------------------------------------------------------------------


class _DigitTaskData(TaskData):
    """An embedded task rendered from the bundled digits, entirely in memory, a batch at a time."""

    def __init__(self, task: DigitTask, resolution: int, seed: int) -> None:
        self.task = task
        self.name = task.name
        self.num_classes = task.num_classes
        self.class_names = task.class_names
        self.resolution = resolution
        self.seed = seed
        self._train_pool, self._val_pool = digit_pools(seed)
        self.num_train = task.train_size(len(self._train_pool.labels))
        self.num_val = task.val_size(len(self._val_pool.labels))
        # The validation set is fixed by the split seed alone: every run is scored on the same images.
        self._val_slots = task.draw_slots(self._val_pool, self.num_val, torch.Generator().manual_seed(_mix_seed(_VAL_SET, seed)), val=True)
        self._val_cache: tuple[torch.Tensor, torch.Tensor] | None = None
        mean, std = self._pixel_stats()
        self.mean = (mean,) * 3
        self.std = (std,) * 3

    def _pixel_stats(self) -> tuple[float, float]:
        # Measured on a fixed sample of training images (never the validation set), rounded so the
        # numbers read well in an exported model's preprocessing.
        slots = self.task.draw_slots(self._train_pool, 2048, torch.Generator().manual_seed(_mix_seed(_PIXEL_STATS, self.seed)), val=False)
        pixels = render_digits(self._train_pool.images, slots, self.task, self.resolution)
        return round(pixels.mean().item(), 4), round(pixels.std().item(), 4)

    def _render(self, pool_images: torch.Tensor, slots: dict[str, torch.Tensor]) -> torch.Tensor:
        pixels = render_digits(pool_images, slots, self.task, self.resolution)  # (B, 1, R, R)
        # Grey digits on three identical channels: the models take RGB, like any user's images.
        return ((pixels - self.mean[0]) / self.std[0]).expand(-1, 3, -1, -1).contiguous()

    def _train_batches(self, sample_ids: torch.Tensor, epoch: int, batch_size: int, seed: int) -> Iterator[Batch]:
        # An epoch's samples (which digits, and their augmentation) are drawn in one go from the
        # (seed, epoch) generator, then sliced: a batch depends on its position, not on the past.
        generator = torch.Generator().manual_seed(_mix_seed(_SAMPLES, seed, epoch))
        slots = self.task.draw_slots(self._train_pool, self.num_train, generator, val=False)
        for start in range(0, len(sample_ids), batch_size):
            ids = sample_ids[start : start + batch_size]
            batch = {key: value[ids] for key, value in slots.items()}
            yield self._render(self._train_pool.images, batch), self.task.labels(self._train_pool.labels, batch)

    def _val_batches(self, batches: list[torch.Tensor]) -> Iterator[Batch]:
        if self._val_cache is None:
            # Rendered once per process: periodic validation during training costs forwards only.
            pixels = render_digits(self._val_pool.images, self._val_slots, self.task, self.resolution)
            labels = self.task.labels(self._val_pool.labels, self._val_slots)
            self._val_cache = ((pixels - self.mean[0]) / self.std[0], labels)
        images, labels = self._val_cache
        for ids in batches:
            yield images[ids].expand(-1, 3, -1, -1).contiguous(), labels[ids]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "task": self.task.to_dict(), "split_seed": self.seed}


# -- image folders -----------------------------------------------------------------------------


def _scan_split(root: Path, split: str) -> tuple[tuple[str, ...], list[tuple[Path, int]]]:
    folder = root / split
    classes = tuple(sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")))
    if not classes:
        raise EfnasError(f"{folder} has no class subfolders (expected {folder}/<class>/*.png|jpg)")
    samples = []
    for index, name in enumerate(classes):
        files = sorted(p for p in (folder / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        samples.extend((path, index) for path in files)
    if not samples:
        raise EfnasError(f"{folder} holds no .png or .jpg images in its class folders")
    return classes, samples


def _read_rgb(path: Path) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_image

    try:
        return decode_image(str(path), mode=ImageReadMode.RGB)  # (3, H, W) uint8
    except RuntimeError as exc:
        # torchvision starts its messages with the C++ function and source line: not for the user.
        reason = re.sub(r"^\w+, \S+:\d+, ", "", (str(exc).strip().splitlines() or [type(exc).__name__])[0])
        raise EfnasError(f"cannot read image {path}: {reason}") from None


def _random_resized_crop_box(height: int, width: int, generator: torch.Generator) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box (scale 0.25..1, ratio 3/4..4/3), drawn from ``generator``."""
    area = height * width
    log_ratio = (math.log(3 / 4), math.log(4 / 3))
    for _ in range(10):
        u = torch.rand(3, generator=generator).tolist()
        target = area * (0.25 + 0.75 * u[0])
        ratio = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[1])
        w = round(math.sqrt(target * ratio))
        h = round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return top, left, h, w
    side = min(height, width)  # fall back to a centre crop, as torchvision does
    return (height - side) // 2, (width - side) // 2, side, side


# A sample to read: (split, sample id, augmentation seed, epoch); seed -1 means the validation transform.
_Key = tuple[int, int, int, int]
_TRAIN, _VAL = 0, 1


class _FolderReader(torch.utils.data.Dataset):
    """Reads and transforms samples of both splits by key, so that one loader (and its worker
    processes) serves every epoch, the calibration batches and the validation.

    It holds only the file lists and the transform settings: that is what a worker receives.
    """

    def __init__(self, splits: tuple[list[tuple[Path, int]], list[tuple[Path, int]]], resolution: int,
                 mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.splits = splits
        self.resolution = resolution
        self.mean, self.std = list(mean), list(std)

    def __len__(self) -> int:
        return sum(len(samples) for samples in self.splits)

    def __getitem__(self, key: _Key) -> tuple[torch.Tensor, int]:
        from torchvision.transforms.v2 import functional as TF

        split, sample_id, seed, epoch = key
        path, label = self.splits[split][sample_id]
        image = _read_rgb(path)
        size = self.resolution
        if seed < 0:
            image = TF.resize(image, [round(size / VAL_CROP_FRACTION)], antialias=True)
            image = TF.center_crop(image, [size, size])
        else:
            generator = torch.Generator().manual_seed(_mix_seed(_AUGMENT, seed, epoch, sample_id))
            top, left, h, w = _random_resized_crop_box(image.shape[1], image.shape[2], generator)
            image = TF.resized_crop(image, top, left, h, w, [size, size], antialias=True)
            if torch.rand(1, generator=generator).item() < 0.5:
                image = TF.horizontal_flip(image)
        pixels = image.float().div_(255)
        return TF.normalize(pixels, self.mean, self.std), label


class _Batches(torch.utils.data.Sampler):
    """The batches of keys of a loader's next pass, set just before the pass starts."""

    def __init__(self) -> None:
        self.batches: list[list[_Key]] = []

    def __iter__(self) -> Iterator[list[_Key]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class _ImageFolderTaskData(TaskData):
    def __init__(self, root: Path, resolution: int, workers: int, pin_memory: bool = False) -> None:
        if not root.is_dir():
            raise EfnasError(f"image folder {root} does not exist")
        for split in ("train", "val"):
            if not (root / split).is_dir():
                raise EfnasError(f"image folder {root} has no {split}/ subfolder (expected {root}/{split}/<class>/*.png|jpg)")
        classes, self._train = _scan_split(root, "train")
        val_classes, self._val = _scan_split(root, "val")
        if classes != val_classes:
            only_train = sorted(set(classes) - set(val_classes))
            only_val = sorted(set(val_classes) - set(classes))
            raise EfnasError(
                f"class folders of {root}/train and {root}/val differ: only in train: "
                f"{', '.join(only_train) or 'none'}; only in val: {', '.join(only_val) or 'none'}"
            )
        if len(classes) < 2:
            # One class is always predicted right: training would "reach" 100% and mean nothing.
            raise EfnasError(f"image folder {root} has one class ({classes[0]}); a classifier needs at least two class folders")
        self.root = root
        self.name = f"{IMAGEFOLDER_PREFIX}{root}"
        self.class_names = classes
        self.num_classes = len(classes)
        self.resolution = resolution
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        self.num_train, self.num_val = len(self._train), len(self._val)
        self.workers = workers
        self.pin_memory = pin_memory
        self._reader = _FolderReader((self._train, self._val), resolution, self.mean, self.std)
        self._persistent: tuple[torch.utils.data.DataLoader, _Batches] | None = None
        self._persistent_busy = False

    def _new_loader(self, persistent: bool) -> tuple[torch.utils.data.DataLoader, _Batches]:
        batches = _Batches()
        # Its own generator: a DataLoader draws its workers' base seed from the global RNG otherwise
        # (the samples' augmentation is seeded per sample, so the workers' seeds do not matter).
        loader = torch.utils.data.DataLoader(
            self._reader, batch_sampler=batches, num_workers=self.workers, pin_memory=self.pin_memory,
            persistent_workers=persistent, generator=torch.Generator().manual_seed(0),
        )
        return loader, batches

    def _read(self, keys: list[list[_Key]]) -> Iterator[Batch]:
        """The batches ``keys`` through the persistent loader, or through a loader of their own
        when it is in the middle of another pass (validation in the middle of an epoch)."""
        persistent = self.workers > 0 and not self._persistent_busy
        if persistent and self._persistent is None:
            # Worker processes stay up between passes: an epoch does not pay their start-up again.
            self._persistent = self._new_loader(persistent=True)
        loader, batches = self._persistent if persistent and self._persistent else self._new_loader(persistent=False)
        batches.batches = keys
        self._persistent_busy |= persistent
        try:
            for images, labels in loader:
                yield images, labels.long()
        except EfnasError as exc:
            raise EfnasError(_worker_message(str(exc))) from None
        finally:
            if persistent:
                self._persistent_busy = False

    def _train_batches(self, sample_ids: torch.Tensor, epoch: int, batch_size: int, seed: int) -> Iterator[Batch]:
        ids = sample_ids.tolist()
        keys = [[(_TRAIN, i, seed, epoch) for i in ids[start : start + batch_size]] for start in range(0, len(ids) - batch_size + 1, batch_size)]
        return self._read(keys)

    def _val_batches(self, batches: list[torch.Tensor]) -> Iterator[Batch]:
        return self._read([[(_VAL, int(i), -1, 0) for i in ids] for ids in batches])

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "root": str(self.root), "class_names": list(self.class_names)}

    def __getstate__(self) -> dict[str, Any]:
        # A loader's worker processes cannot travel (e.g. in a spawned process's arguments).
        return {**self.__dict__, "_persistent": None, "_persistent_busy": False}


def _worker_message(message: str) -> str:
    """The one line a data-loading worker raised, without the worker's traceback that the
    DataLoader puts in front of it ("Caught EfnasError in DataLoader worker process 0. Original
    Traceback ... supernet.errors.EfnasError: cannot read image ...")."""
    marker = f"{EfnasError.__module__}.{EfnasError.__name__}: "
    return message.rsplit(marker, 1)[-1] if "DataLoader worker" in message else message


@functools.lru_cache(maxsize=8)
def _embedded(name: str, resolution: int, seed: int) -> _DigitTaskData:
    # One instance per process and setting: its validation images are rendered only once.
    return _DigitTaskData(EMBEDDED_TASKS[name], resolution, seed)


def load_data(arg: str, resolution: int, *, seed: int = 0, workers: int = 0, pin_memory: bool = False) -> TaskData:
    """The dataset named by ``arg`` (see :data:`DATASET_HELP`) at ``resolution`` x ``resolution``.

    ``seed`` picks the fixed train/validation split of the embedded sets (keep it at 0 to compare
    runs); the training order is seeded separately, per call of :meth:`TaskData.train_batches`.
    ``workers`` is the number of DataLoader processes reading an image folder (kept up between
    epochs); ``pin_memory`` puts its batches in page-locked memory, for fast copies to a GPU.
    """
    if not isinstance(resolution, int) or resolution < 8:
        raise EfnasError(f"resolution must be an integer of at least 8, got {resolution!r}")
    if workers < 0:
        raise EfnasError(f"workers must be >= 0, got {workers}")
    if arg.startswith(IMAGEFOLDER_PREFIX):
        path = arg[len(IMAGEFOLDER_PREFIX) :]
        if not path:
            raise EfnasError("imagefolder: needs a path, e.g. imagefolder:/data/my_images")
        return _ImageFolderTaskData(Path(path).expanduser(), resolution, workers, pin_memory)
    if arg in EMBEDDED_TASKS:
        return _embedded(arg, resolution, seed)
    raise EfnasError(
        f"unknown dataset '{arg}': known datasets are {', '.join(EMBEDDED_TASKS)}, or imagefolder:PATH"
    )
