"""The embedded tasks: images rendered from scikit-learn's bundled 8x8 digits (no download).

A task places ``digits_per_image`` source digits on a ``grid`` x ``grid`` canvas, each in its own
cell, scaled, shifted and rotated a little at random for training (centred and upright for
validation), and labels the image by its digits. Rendering is one ``affine_grid`` +
``grid_sample`` over the whole batch, at any output resolution.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

__all__ = ["DigitPool", "DigitTask", "EMBEDDED_TASKS", "digit_pools", "render_digits"]

# A third of each class goes to the validation pool (599 of the 1,797 bundled digits).
VAL_FRACTION = 1 / 3


@dataclass(frozen=True)
class DigitPool:
    images: torch.Tensor  # (N, 8, 8) float32 in [0, 1]
    labels: torch.Tensor  # (N,) int64
    source_index: torch.Tensor  # (N,) int64: row in sklearn's load_digits()


@functools.lru_cache(maxsize=4)
def digit_pools(seed: int) -> tuple[DigitPool, DigitPool]:
    """The bundled digits split per class into disjoint (train, val) pools, fixed by ``seed``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.int64)
    generator = torch.Generator().manual_seed(seed)
    train, val = [], []
    for digit in range(10):
        members = (labels == digit).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        num_val = round(len(members) * VAL_FRACTION)
        val.append(members[:num_val])
        train.append(members[num_val:])
    pools = []
    for parts in (train, val):
        index = torch.cat(parts).sort().values
        pools.append(DigitPool(images[index], labels[index], index))
    return pools[0], pools[1]


@dataclass(frozen=True)
class DigitTask:
    """How an embedded task builds an image and its label from source digits."""

    name: str
    summary: str
    grid: int  # cells per side of the canvas
    digits_per_image: int  # filled cells, in reading order
    label_rule: str  # "identity" (one digit) or "sum"
    scale: float  # a digit's side as a fraction of its cell's side
    max_shift: float  # random shift of a digit, as a fraction of its cell's side (training only)
    max_rotation: float  # random rotation in radians (training only)
    empty_probability: float  # chance that a cell stays empty (and counts 0), training and validation
    train_per_epoch: int | None  # images per training epoch; None: each pool digit once
    val_images: int | None  # validation images; None: each pool digit once

    @property
    def num_classes(self) -> int:
        return 10 if self.label_rule == "identity" else 9 * self.digits_per_image + 1

    @property
    def class_names(self) -> tuple[str, ...]:
        if self.label_rule == "identity":
            return tuple(str(d) for d in range(10))
        return tuple(f"sum {s}" for s in range(self.num_classes))

    def train_size(self, pool_size: int) -> int:
        return self.train_per_epoch or pool_size

    def val_size(self, pool_size: int) -> int:
        return self.val_images or pool_size

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def labels(self, pool_labels: torch.Tensor, slots: dict[str, torch.Tensor]) -> torch.Tensor:
        """Class index of each image of ``slots``, (B,): its digit, or the sum of its shown digits."""
        digits = pool_labels[slots["digit"]] * slots["shown"]  # (B, k); an empty cell counts 0
        if self.label_rule == "identity":
            return digits[:, 0]
        return digits.sum(dim=1)

    def draw_slots(self, pool: DigitPool, count: int, generator: torch.Generator, *, val: bool) -> dict[str, torch.Tensor]:
        """Which pool digits fill each image's cells and how they are placed, for ``count`` images.

        Single-digit tasks take every pool digit once, in pool order (the caller shuffles); mosaics
        draw digits independently with replacement, so every epoch sees new combinations.
        """
        k = self.digits_per_image
        if k == 1 and count == len(pool.labels):
            digit = torch.arange(count)[:, None]
        else:
            digit = torch.randint(len(pool.labels), (count, k), generator=generator)
        shown = torch.rand(count, k, generator=generator) >= self.empty_probability
        if val:
            shift = torch.zeros(count, k, 2)
            angle = torch.zeros(count, k)
        else:
            shift = (torch.rand(count, k, 2, generator=generator) * 2 - 1) * self.max_shift
            angle = (torch.rand(count, k, generator=generator) * 2 - 1) * self.max_rotation
        return {"digit": digit, "shown": shown, "shift": shift, "angle": angle}


def render_digits(pool_images: torch.Tensor, slots: dict[str, torch.Tensor], task: DigitTask, resolution: int) -> torch.Tensor:
    """Render images of ``slots`` (from :meth:`DigitTask.draw_slots`) at ``resolution``: (B, 1, R, R) in [0, 1]."""
    digit, shift, angle = slots["digit"], slots["shift"], slots["angle"]
    count, k = digit.shape
    cell = 2.0 / task.grid  # a cell's side in normalised [-1, 1] canvas coordinates
    rows, cols = torch.arange(k) // task.grid, torch.arange(k) % task.grid
    centre = torch.stack(((cols + 0.5) * cell - 1, (rows + 0.5) * cell - 1), dim=-1)  # (k, 2) as (x, y)
    centre = centre + shift * cell  # (B, k, 2)
    # The sampling grid maps canvas coordinates p to digit coordinates u = R(-angle) (p - centre) /
    # half_side, so that the digit fills `scale` of its cell.
    half_side = task.scale * cell / 2
    cos, sin = torch.cos(angle) / half_side, torch.sin(angle) / half_side  # (B, k)
    # Pixel centres in normalised coordinates (affine_grid's align_corners=False convention);
    # building the sampling grid by broadcasting is several times faster than affine_grid here.
    axis = (torch.arange(resolution, dtype=torch.float32) * 2 + 1) / resolution - 1
    px = axis.view(1, 1, 1, -1) - centre[..., 0, None, None]  # (B, k, 1, R)
    py = axis.view(1, 1, -1, 1) - centre[..., 1, None, None]  # (B, k, R, 1)
    cos, sin = cos[..., None, None], sin[..., None, None]
    grid = torch.empty(count, k, resolution, resolution, 2)  # written in place: 4x faster than stack
    torch.add(cos * px, sin * py, out=grid[..., 0])
    torch.sub(cos * py, sin * px, out=grid[..., 1])
    sources = pool_images[digit.reshape(-1)].unsqueeze(1)  # (B*k, 1, 8, 8)
    grid = grid.reshape(count * k, resolution, resolution, 2)
    cells = F.grid_sample(sources, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    cells = cells.reshape(count, k, resolution, resolution) * slots["shown"][..., None, None]
    # Cells do not overlap, except for a shifted digit's blank margin: the maximum keeps strokes intact.
    return cells.amax(dim=1, keepdim=True)


EMBEDDED_TASKS: dict[str, DigitTask] = {
    task.name: task
    for task in (
        DigitTask(
            name="digits-mosaic",
            summary="2x2 mosaics of bundled digits labelled by their sum, 37 classes, the default",
            grid=2,
            digits_per_image=4,
            label_rule="sum",
            scale=0.9,
            max_shift=0.1,
            max_rotation=0.25,
            empty_probability=0.25,
            train_per_epoch=15_000,
            val_images=10_000,
        ),
        DigitTask(
            name="digits",
            summary="single bundled digits, 10 classes; too easy to tell architectures apart",
            grid=1,
            digits_per_image=1,
            label_rule="identity",
            scale=1.0,
            max_shift=0.0,
            max_rotation=0.0,
            empty_probability=0.0,
            train_per_epoch=None,
            val_images=None,
        ),
    )
}
