"""Scale-out: the ranks of a torchrun job share validation and BN recalibration and get one
process's result; the image-folder loader keeps its workers between passes; channels_last and
torch.compile train the same step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from supernet import EfnasError
from supernet.checkpoint import load_supernet
from supernet.data import VAL_CROP_FRACTION, load_data
from supernet.evaluate import EvalConfig, Scorer, task_data

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x, u) and torch.equal(y, v) for (x, y), (u, v) in zip(a, b))


def _write_folder(root: Path, per_class: int = 6) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c, name in enumerate(("cat", "dog")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, size=(20 + i, 24, 3), dtype=np.uint8)
                pixels[..., c] = 255
                Image.fromarray(pixels).save(folder / f"{i}.jpg")


@pytest.fixture(params=["digits-mosaic", "imagefolder"])
def dataset(request, tmp_path):
    if request.param == "imagefolder":
        _write_folder(tmp_path)
        return load_data(f"imagefolder:{tmp_path}", 16, workers=1)
    return load_data("digits-mosaic", 32)


def test_rank_shares_of_validation_and_calibration_make_up_one_process(dataset):
    whole = list(dataset.val_batches(5))
    shares = [list(dataset.val_batches(5, rank=r, world_size=3)) for r in range(3)]
    interleaved = [shares[i % 3][i // 3] for i in range(len(whole))]
    assert _same(interleaved, whole)
    chosen = [7, 1, 4, 9, 2, 3]
    subset = list(dataset.val_batches(4, samples=chosen))
    assert torch.cat([y for _, y in subset]).tolist() == [torch.cat([y for _, y in whole])[i].item() for i in chosen]
    epoch = list(dataset.train_batches(1, 3, seed=5))
    assert _same(list(dataset.train_batches_at(1, 3, seed=5, indices=[2, 0])), [epoch[2], epoch[0]])
    with pytest.raises(EfnasError, match="outside the epoch"):
        next(dataset.train_batches_at(1, 3, seed=5, indices=[len(epoch)]))
    with pytest.raises(EfnasError, match="validation samples must be in"):
        next(dataset.val_batches(4, samples=[dataset.num_val]))


def test_persistent_loader_serves_passes_in_turn_and_nested(tmp_path):
    _write_folder(tmp_path)
    inline = load_data(f"imagefolder:{tmp_path}", 16)
    pooled = load_data(f"imagefolder:{tmp_path}", 16, workers=2)
    expected = [list(inline.train_batches(e, 3, seed=1)) for e in (0, 1)]
    val = list(inline.val_batches(4))
    first = pooled.train_batches(0, 3, seed=1)
    got = [next(first)]
    assert _same(list(pooled.val_batches(4)), val)  # validation in the middle of an epoch
    got += list(first)
    assert _same(got, expected[0])
    loader = pooled._persistent[0]
    assert _same(list(pooled.train_batches(1, 3, seed=1)), expected[1])
    assert pooled._persistent[0] is loader  # the workers stayed up
    partial = pooled.train_batches(0, 3, seed=1)
    next(partial)
    partial.close()  # an epoch cut short (--steps-per-epoch) does not spoil the next pass
    assert _same(list(pooled.val_batches(4)), val)


def test_validation_crop_fraction_is_the_one_constant():
    assert VAL_CROP_FRACTION == 0.875


def test_a_distributed_share_needs_a_process_group(trained_tiny_supernet):
    _, info = load_supernet(trained_tiny_supernet)
    with pytest.raises(EfnasError, match="needs an initialised torch.distributed process group"):
        Scorer(task_data(info), EvalConfig(), rank=1, world_size=2)
    with pytest.raises(EfnasError, match="give both rank and world_size"):
        Scorer(task_data(info), EvalConfig(), rank=0)


@pytest.mark.slow
def test_two_gloo_ranks_score_as_one_process(trained_tiny_supernet, tmp_path):
    supernet, info = load_supernet(trained_tiny_supernet)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               str(REPO / "tests" / "ddp_worker.py"), "score", str(trained_tiny_supernet), str(info.config["data"]), str(tmp_path)]
    result = subprocess.run(command, env=ENV, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    ranks = [json.loads((tmp_path / f"score-rank{r}.json").read_text()) for r in (0, 1)]
    data = task_data(info)
    for name, config in (("subset", EvalConfig(calib_batches=3, batch_size=64, val_subset=300, seed=1)),
                         ("full", EvalConfig(calib_batches=2, batch_size=50, seed=0))):
        scorer = Scorer(data, config)
        model = scorer.recalibrate(supernet.extract(info.space.preset("L1")))
        for r in (0, 1):
            shared = torch.load(tmp_path / f"bn-{name}-rank{r}.pt")
            for key, value in shared.items():
                assert torch.allclose(value.float(), model.state_dict()[key].float(), rtol=1e-6, atol=1e-7), (name, key)
            assert ranks[r][name]["top1"] == scorer.accuracy(model), name
            assert ranks[r][name]["score_smallest"] == scorer.score(supernet, info.space.smallest()), name
        # each rank read its share only: together the whole set, once
        assert sum(rank[name]["val_images_here"] for rank in ranks) == scorer.num_val
        assert all(rank[name]["val_images_here"] < scorer.num_val for rank in ranks)
    assert ranks[0]["alone_images"] == 300  # world_size=1 under torchrun: this process scores alone


def _sandwich_grads(supernet, images, labels, specs):
    from supernet.train import SandwichLoss, TrainConfig

    supernet.zero_grad(set_to_none=True)
    loss, _ = SandwichLoss(supernet, TrainConfig())(images, labels, specs, None)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in supernet.named_parameters() if p.grad is not None}


def _assert_same_step(reference, other, images, labels, specs, *, tolerance):
    loss, grads = _sandwich_grads(reference, images, labels, specs)
    other_loss, other_grads = _sandwich_grads(other, images, labels, specs)
    assert abs(float(loss) - float(other_loss)) <= tolerance * abs(float(loss))
    assert grads.keys() == other_grads.keys()
    # On the scale of the largest gradient: a conv bias before a BatchNorm has a gradient of
    # rounding noise only (the norm removes it), which no two summation orders agree on.
    scale = max(grad.abs().max().item() for grad in grads.values())
    for name, grad in grads.items():
        assert torch.allclose(grad, other_grads[name], rtol=tolerance, atol=tolerance * scale), name


def _step_inputs(space):
    from supernet.train import sandwich_specs

    data = load_data("digits-mosaic", space.resolution)
    images, labels = next(data.train_batches(0, 8, seed=0))
    return images, labels, sandwich_specs(space, 0, 3, 2)


def test_channels_last_computes_the_same_step(tiny_space):
    from supernet.elastic import Supernet

    torch.manual_seed(0)
    reference = Supernet(tiny_space)
    other = Supernet(tiny_space).to(memory_format=torch.channels_last)
    other.load_state_dict(reference.state_dict())
    assert other.stem.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    images, labels, specs = _step_inputs(tiny_space)
    _assert_same_step(reference, other, images, labels, specs, tolerance=1e-5)
    channels_last_images = images.contiguous(memory_format=torch.channels_last)
    assert torch.equal(_sandwich_grads(other, channels_last_images, labels, specs)[0], _sandwich_grads(other, images, labels, specs)[0])


@pytest.mark.slow
def test_compiled_blocks_compute_the_same_step(tiny_space):
    # aot_eager traces each block as inductor does (dynamo + AOT autograd) without generating C++:
    # seconds instead of minutes. The first step and a step of other subnets (no new graphs needed).
    from supernet.elastic import Supernet
    from supernet.train import sandwich_specs

    torch.manual_seed(0)
    reference = Supernet(tiny_space)
    compiled = Supernet(tiny_space)
    compiled.load_state_dict(reference.state_dict())
    compiled.compile_blocks(backend="aot_eager")
    assert list(compiled.state_dict()) == list(reference.state_dict())
    images, labels, specs = _step_inputs(tiny_space)
    _assert_same_step(reference, compiled, images, labels, specs, tolerance=1e-5)
    _assert_same_step(reference, compiled, images, labels, sandwich_specs(tiny_space, 0, 11, 2), tolerance=1e-5)


def test_training_with_channels_last_follows_the_same_losses(tmp_path):
    from supernet.train import TrainConfig, train

    losses = {}
    for layout in (False, True):
        run = tmp_path / f"cl{layout}"
        train(TrainConfig(out=str(run), epochs=1, steps_per_epoch=10, batch_size=16, threads=1, skip_validation=True,
                          channels_last=layout), show_progress=False)
        losses[layout] = [json.loads(line)["loss_largest"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)
