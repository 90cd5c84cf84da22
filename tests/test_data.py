"""The data module: seeded batches as a pure function of their position, disjoint splits, errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from supernet import EfnasError
from supernet._digits import digit_pools
from supernet.data import DATASET_HELP, TaskData, embedded_dataset_names, load_data

RES = 32


@pytest.fixture(scope="module")
def mosaic() -> TaskData:
    return load_data("digits-mosaic", RES)


@pytest.fixture(scope="module")
def digits() -> TaskData:
    return load_data("digits", RES)


def _batches(data: TaskData, epoch: int, batch_size: int, **kwargs) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(data.train_batches(epoch, batch_size, **kwargs))


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))


def test_embedded_names_and_help():
    assert embedded_dataset_names()[0] == "digits-mosaic"
    for name in (*embedded_dataset_names(), "imagefolder:PATH"):
        assert name in DATASET_HELP


@pytest.mark.parametrize("name", ["digits-mosaic", "digits"])
def test_same_seed_same_batches_other_seed_or_epoch_other_batches(name):
    data = load_data(name, RES)
    batch = 100 if name == "digits" else 500
    first = _batches(data, 0, batch, seed=3)
    assert _same(first, _batches(load_data(name, RES), 0, batch, seed=3))
    assert not torch.equal(first[0][0], _batches(data, 0, batch, seed=4)[0][0])
    assert not torch.equal(first[0][0], _batches(data, 1, batch, seed=3)[0][0])


@pytest.mark.parametrize("name", ["digits-mosaic", "digits"])
def test_resume_at_start_batch_is_the_tail_of_the_epoch(name):
    data = load_data(name, RES)
    batch = 64 if name == "digits" else 500
    full = _batches(data, 2, batch, seed=11)
    assert len(full) == data.num_train_batches(batch) == data.num_train // batch
    for start in (1, len(full) - 1, len(full)):
        assert _same(_batches(data, 2, batch, seed=11, start_batch=start), full[start:])


def test_rank_shards_are_disjoint_and_cover_the_epoch(digits):
    # Plain digits take every training digit once per epoch, so images identify samples.
    batch, world = 50, 3
    whole = torch.cat([x for x, _ in _batches(digits, 0, batch * world, seed=5)])
    shards = [torch.cat([x for x, _ in _batches(digits, 0, batch, seed=5, rank=r, world_size=world)]) for r in range(world)]
    steps = digits.num_train_batches(batch, world)
    assert steps == digits.num_train // (batch * world)
    assert all(len(s) == steps * batch for s in shards)
    # Global step s is the concatenation of every rank's batch s, in rank order.
    interleaved = torch.cat([s.view(steps, batch, *s.shape[1:]) for s in shards], dim=1).flatten(0, 1)
    assert torch.equal(interleaved, whole)
    keys = {x.numpy().tobytes() for s in shards for x in s}
    assert len(keys) == steps * batch * world  # no image twice across ranks


def test_mosaic_rank_shards_partition_the_global_batches(mosaic):
    batch, world = 250, 2
    whole = _batches(mosaic, 0, batch * world, seed=1)
    shards = [_batches(mosaic, 0, batch, seed=1, rank=r, world_size=world) for r in range(world)]
    for step, (x, y) in enumerate(whole):
        assert torch.equal(x, torch.cat([shards[r][step][0] for r in range(world)]))
        assert torch.equal(y, torch.cat([shards[r][step][1] for r in range(world)]))


def test_train_and_val_pools_are_disjoint_and_stratified():
    train, val = digit_pools(0)
    assert not set(train.source_index.tolist()) & set(val.source_index.tolist())
    assert len(train.labels) + len(val.labels) == 1797
    assert torch.bincount(val.labels).min() >= 55  # a third of every class
    again = digit_pools(0)
    assert torch.equal(train.source_index, again[0].source_index)


def test_validation_uses_only_the_val_pool_and_fixed_order(mosaic):
    _, val_pool = digit_pools(0)
    first = list(mosaic.val_batches(4096))
    assert sum(len(y) for _, y in first) == mosaic.num_val
    assert _same(first, list(load_data("digits-mosaic", RES).val_batches(4096)))
    # Validation mosaics are drawn from val-pool digits only; their images carry no augmentation.
    assert mosaic._val_slots["digit"].max() < len(val_pool.labels)
    assert mosaic._val_slots["shift"].abs().max() == 0


def test_validation_digits_are_the_val_pool_once(digits):
    _, val_pool = digit_pools(0)
    labels = torch.cat([y for _, y in digits.val_batches(128)])
    assert torch.equal(labels, val_pool.labels)


@pytest.mark.parametrize("name", ["digits-mosaic", "digits"])
def test_shapes_labels_and_normalisation(name):
    data = load_data(name, 48)
    x, y = next(iter(data.train_batches(0, 256, seed=0)))
    assert x.shape == (256, 3, 48, 48) and x.dtype == torch.float32
    assert y.shape == (256,) and y.dtype == torch.int64
    assert 0 <= y.min() and y.max() < data.num_classes == len(data.class_names)
    assert len(data.mean) == len(data.std) == 3
    # Normalised pixels: mean about 0 and std about 1 on training images.
    assert abs(x.mean().item()) < 0.1 and abs(x.std().item() - 1) < 0.1
    xv, yv = next(iter(data.val_batches(256)))
    assert xv.shape == (256, 3, 48, 48) and yv.dtype == torch.int64
    assert abs(xv.mean().item()) < 0.2


def test_mosaic_labels_are_the_sum_of_the_shown_digits(mosaic):
    assert mosaic.num_classes == 37
    _, val_pool = digit_pools(0)
    slots = {key: value[:200] for key, value in mosaic._val_slots.items()}
    images, labels = next(iter(mosaic.val_batches(200)))
    assert torch.equal(labels, (val_pool.labels[slots["digit"]] * slots["shown"]).sum(dim=1))
    # An empty cell is blank: its quadrant holds only the background value.
    background = (0 - mosaic.mean[0]) / mosaic.std[0]
    half = RES // 2
    for image, shown in zip(images, slots["shown"]):
        quadrants = (image[0, :half, :half], image[0, :half, half:], image[0, half:, :half], image[0, half:, half:])
        for quadrant, is_shown in zip(quadrants, shown.tolist()):
            assert (quadrant.max().item() > background + 1) == is_shown
    assert 0 < slots["shown"].float().mean() < 1


def test_batching_errors_are_one_line(digits):
    for kwargs in ({"rank": 2, "world_size": 2}, {"start_batch": 10**6}, {"seed": -1}):
        with pytest.raises(EfnasError):
            next(iter(digits.train_batches(0, 8, **{"seed": 0, **kwargs})))
    with pytest.raises(EfnasError):
        digits.num_train_batches(0)


# -- image folders ------------------------------------------------------------------------------


def _write_folder(root, classes_train=("cat", "dog"), classes_val=("cat", "dog"), per_class=5) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, classes in (("train", classes_train), ("val", classes_val)):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, size=(20 + i, 24, 3), dtype=np.uint8)
                pixels[..., c % 3] = 255  # a class-dependent colour
                suffix = ".png" if i % 2 else ".jpg"
                Image.fromarray(pixels).save(folder / f"{i}{suffix}")


def test_imagefolder_batches(tmp_path):
    _write_folder(tmp_path)
    data = load_data(f"imagefolder:{tmp_path}", 16)
    assert data.class_names == ("cat", "dog") and data.num_classes == 2
    assert (data.num_train, data.num_val) == (10, 10)
    batches = _batches(data, 0, 3, seed=7)
    assert len(batches) == data.num_train_batches(3) == 3
    x, y = batches[0]
    assert x.shape == (3, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert _same(batches, _batches(load_data(f"imagefolder:{tmp_path}", 16), 0, 3, seed=7))
    assert _same(_batches(data, 0, 3, seed=7, start_batch=2), batches[2:])
    assert not torch.equal(x, _batches(data, 1, 3, seed=7)[0][0])
    shards = [_batches(data, 0, 2, seed=7, rank=r, world_size=2) for r in range(2)]
    assert all(len(s) == 2 for s in shards)
    val = list(data.val_batches(4))
    assert [len(y) for _, y in val] == [4, 4, 2]
    assert torch.cat([y for _, y in val]).tolist() == [0] * 5 + [1] * 5
    assert _same(val, list(data.val_batches(4)))


def test_imagefolder_with_workers_matches_in_process(tmp_path):
    _write_folder(tmp_path, per_class=4)
    inline = _batches(load_data(f"imagefolder:{tmp_path}", 16), 1, 2, seed=3)
    parallel = _batches(load_data(f"imagefolder:{tmp_path}", 16, workers=2), 1, 2, seed=3)
    assert _same(inline, parallel)


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "does not exist"),
        ("no_train", "no train/ subfolder"),
        ("no_val", "no val/ subfolder"),
        ("no_images", "no .png or .jpg images"),
        ("classes_differ", "class folders"),
        ("no_classes", "no class subfolders"),
        ("one_class", "has one class \\(cat\\); a classifier needs at least two class folders"),
    ],
)
def test_imagefolder_errors_are_one_line(tmp_path, case, message):
    root = tmp_path / "data"
    if case == "no_train":
        (root / "val" / "a").mkdir(parents=True)
    elif case == "no_val":
        (root / "train" / "a").mkdir(parents=True)
    elif case == "no_images":
        for split in ("train", "val"):
            (root / split / "a").mkdir(parents=True)
            (root / split / "a" / "notes.txt").write_text("not an image")
    elif case == "classes_differ":
        _write_folder(root, classes_val=("cat", "fox"), per_class=1)
    elif case == "no_classes":
        (root / "train").mkdir(parents=True)
        (root / "val").mkdir()
    elif case == "one_class":
        _write_folder(root, classes_train=("cat",), classes_val=("cat",), per_class=2)
    with pytest.raises(EfnasError, match=message) as info:
        load_data(f"imagefolder:{root}", 16)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("workers", [0, 1])
def test_a_corrupt_image_is_one_line_naming_the_file(tmp_path, workers):
    _write_folder(tmp_path, per_class=2)
    broken = tmp_path / "train" / "dog" / "1.png"
    broken.write_bytes(b"\x89PNG but not really")
    data = load_data(f"imagefolder:{tmp_path}", 16, workers=workers)
    with pytest.raises(EfnasError) as info:
        _batches(data, 0, 2, seed=0)
    # With a worker process, the DataLoader puts the worker's whole traceback in front of it.
    assert str(info.value).startswith(f"cannot read image {broken}: ")
    assert "Traceback" not in str(info.value) and "worker" not in str(info.value)


def test_image_folders_leave_the_global_rng_untouched(tmp_path):
    _write_folder(tmp_path, per_class=2)
    data = load_data(f"imagefolder:{tmp_path}", 16)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    _batches(data, 0, 2, seed=0)
    list(data.val_batches(2))
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize(
    "arg, resolution, message",
    [
        ("mnist", 32, "unknown dataset 'mnist': known datasets are digits-mosaic, digits"),
        ("imagefolder:", 32, "needs a path"),
        ("digits", 4, "resolution"),
    ],
)
def test_bad_arguments_are_one_line(arg, resolution, message):
    with pytest.raises(EfnasError, match=message) as info:
        load_data(arg, resolution)
    assert "\n" not in str(info.value)


def test_nothing_is_downloaded_and_global_rng_untouched():
    # load and iterate in a fresh interpreter with sockets disabled; the global RNG stays as seeded.
    code = (
        "import socket, torch\n"
        "socket.socket = None\n"
        "torch.manual_seed(0); expected = torch.rand(3); torch.manual_seed(0)\n"
        "from supernet.data import load_data\n"
        "d = load_data('digits-mosaic', 16)\n"
        "next(iter(d.train_batches(0, 8, seed=0))); next(iter(d.val_batches(8)))\n"
        "assert torch.equal(torch.rand(3), expected)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_rendering_matches_torch_affine_grid():
    # Our broadcast sampling grid is the affine map affine_grid would build: shift, scale, rotation.
    import dataclasses

    import torch.nn.functional as F

    from supernet._digits import EMBEDDED_TASKS, render_digits

    train, _ = digit_pools(0)
    task = dataclasses.replace(EMBEDDED_TASKS["digits-mosaic"], scale=0.8, max_shift=0.1, max_rotation=0.3)
    slots = task.draw_slots(train, 16, torch.Generator().manual_seed(0), val=False)
    ours = render_digits(train.images, slots, task, 24)
    count, k = slots["digit"].shape
    cell = 2.0 / task.grid
    centre = torch.stack(((torch.arange(k) % 2 + 0.5) * cell - 1, (torch.arange(k) // 2 + 0.5) * cell - 1), -1)
    centre = centre + slots["shift"] * cell
    half = task.scale * cell / 2
    cos, sin = torch.cos(slots["angle"]) / half, torch.sin(slots["angle"]) / half
    theta = torch.stack(
        (
            torch.stack((cos, sin, -(cos * centre[..., 0] + sin * centre[..., 1])), -1),
            torch.stack((-sin, cos, sin * centre[..., 0] - cos * centre[..., 1]), -1),
        ),
        -2,
    ).reshape(count * k, 2, 3)
    grid = F.affine_grid(theta, [count * k, 1, 24, 24], align_corners=False)
    sources = train.images[slots["digit"].reshape(-1)].unsqueeze(1)
    reference = F.grid_sample(sources, grid, align_corners=False).reshape(count, k, 24, 24)
    reference = (reference * slots["shown"][..., None, None]).amax(1, keepdim=True)
    assert (ours - reference).abs().max() < 1e-5
    assert slots["shift"].abs().max() > 0 and slots["angle"].abs().max() > 0
