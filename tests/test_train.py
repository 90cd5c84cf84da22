"""Supernet training end to end: learning, exact resume after kill -9, DDP, warm start, errors."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nas.cli import main
from supernet import build_model, load_space
from supernet.checkpoint import load_checkpoint, load_supernet
from supernet.data import load_data
from supernet.evaluate import evaluate_spec
from supernet.elastic import Supernet
from supernet.model import count_params
from supernet.train import SandwichLoss, TrainConfig, params_digest, sandwich_specs, worst_up_pools

REPO = Path(__file__).resolve().parent.parent
EFNAS = [sys.executable, "-m", "nas.cli"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
QUICK = ["--space", "tiny", "--batch-size", "32", "--threads", "1", "--no-progress"]


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_the_sandwich_adds_the_corners_asked_for_before_the_same_random_subnets():
    space = load_space("tiny")
    plain = sandwich_specs(space, 3, 17, 2)
    both = sandwich_specs(space, 3, 17, 2, meta4d_largest=True, narrowest_deepest=True)
    assert plain[:2] == [space.largest(), space.smallest()]
    meta4d = space.edit(space.largest(), num_meta3d=space.meta3d_min)
    assert both == [space.largest(), meta4d, space.smallest(), space.narrowest_deepest(), *plain[2:]]
    assert sandwich_specs(space, 3, 18, 2)[2:] != plain[2:]  # each step draws its own random subnets


def test_worst_of_picks_the_like_sized_candidate_the_batch_finds_worst_and_keeps_running_statistics():
    space = load_space("tiny")
    pools = worst_up_pools(space, 0, 5, 2, 3)
    assert pools == worst_up_pools(space, 0, 5, 2, 3) and [len(pool) for pool in pools] == [3, 3]
    for anchor, *others in pools:
        rng = random.Random(1)
        uniform_distance = sorted(abs(count_params(space.sample(rng)) - count_params(anchor)) for _ in range(64))[32]
        assert max(abs(count_params(other) - count_params(anchor)) for other in others) < uniform_distance
    torch.manual_seed(0)
    supernet = Supernet(space).train()
    loss = SandwichLoss(supernet, TrainConfig())
    images, labels = torch.randn(16, 3, 32, 32), torch.randint(0, space.num_classes, (16,))
    target = supernet(images, space.largest()).detach()
    before = {name: value.clone() for name, value in supernet.state_dict().items()}
    picked = loss.worst(pools[0], images, labels, target)
    assert all(torch.equal(before[name], value) for name, value in supernet.state_dict().items())
    with torch.no_grad():  # BatchNorm in training mode normalises with the batch's own statistics
        losses = [float(loss.subnet_loss(supernet(images, spec), labels, target)) for spec in pools[0]]
    assert picked == pools[0][losses.index(max(losses))] and len(set(losses)) == 3


@pytest.mark.slow
def test_short_run_learns_the_embedded_task(tmp_path):
    # Two epochs of the largest and smallest subnets only (no random middle ones): ~50 s here.
    run = tmp_path / "run"
    assert main(["train", *QUICK, "--batch-size", "64", "--epochs", "2", "--num-random", "0", "--lr", "3e-3", "--out", str(run)]) == 0
    losses = [r["loss_largest"] for r in _records(run) if "loss_largest" in r]
    assert losses[-1] < losses[0] - 0.3, losses
    supernet, info = load_supernet(run)
    assert info.finished and info.step == 2 * (15_000 // 64)
    # Sums of four digits are far from uniform: always answering the commonest sum scores ~6%.
    data = load_data("digits-mosaic", info.space.resolution)
    labels = torch.cat([y for _, y in data.val_batches(1000)])
    majority = torch.bincount(labels).max().item() / len(labels)
    assert info.metrics["val_top1_largest"] > 2 * majority, (info.metrics, majority)
    assert info.metrics["val_top1_largest"] > info.metrics["val_top1_smallest"], info.metrics
    assert (run / "config.json").exists()


def _train_cmd(run: Path) -> list[str]:
    return [*EFNAS, "train", *QUICK, "--epochs", "2", "--steps-per-epoch", "6", "--checkpoint-every", "2", "--out", str(run)]


@pytest.mark.slow
def test_kill_minus_9_then_resume_is_bit_identical(tmp_path):
    reference = tmp_path / "reference"
    subprocess.run(_train_cmd(reference), check=True, env=ENV, cwd=REPO, capture_output=True)

    killed = tmp_path / "killed"
    process = subprocess.Popen(_train_cmd(killed), env=ENV, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = killed / "supernet.pt"
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if checkpoint.exists() and load_checkpoint(checkpoint)["step"] >= 4:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    partial = load_checkpoint(checkpoint)
    assert not partial.get("finished") and partial["step"] < 12

    resumed = subprocess.run([*_train_cmd(killed), "--resume"], env=ENV, cwd=REPO, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    expected, _ = load_supernet(reference)
    actual, info = load_supernet(killed)
    assert info.finished and info.step == 12
    for (name, a), (_, b) in zip(expected.state_dict().items(), actual.state_dict().items()):
        assert torch.equal(a, b), name
    # The log keeps one line per logged step: nothing duplicated by the replay after the kill.
    steps = [r["step"] for r in _records(killed) if "loss_largest" in r]
    assert steps == sorted(set(steps))

    again = subprocess.run([*_train_cmd(killed), "--resume"], env=ENV, cwd=REPO, capture_output=True, text=True)
    assert again.returncode == 0 and "already finished" in again.stdout


@pytest.mark.slow
def test_torchrun_two_ranks_keep_identical_parameters(tmp_path):
    run = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               str(REPO / "tests" / "ddp_worker.py"), str(run)]
    result = subprocess.run(command, env=ENV, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    digests = [(run / f"rank{r}.sha256").read_text() for r in (0, 1)]
    assert digests[0] == digests[1]
    supernet, info = load_supernet(run)
    assert params_digest(supernet) == digests[0] and info.step == 4
    untrained = load_space("tiny")
    assert info.space.fingerprint() == untrained.fingerprint()
    # Both ranks validated their shares; together they scored what one process scores.
    data = load_data("digits-mosaic", info.space.resolution)
    for name, spec in (("largest", info.space.largest()), ("smallest", info.space.smallest())):
        assert info.metrics[f"val_top1_{name}"] == evaluate_spec(supernet, spec, data, calib_batches=8, batch_size=32, seed=0), name


def test_init_from_a_static_checkpoint(tmp_path):
    space = load_space("tiny")
    torch.manual_seed(5)
    static = build_model(space.largest()).eval()
    path = tmp_path / "largest.pth"
    torch.save({"state_dict": static.state_dict()}, path)
    run = tmp_path / "warm"
    assert main(["train", *QUICK, "--epochs", "0", "--init-from", str(path), "--out", str(run)]) == 0
    supernet, _ = load_supernet(run)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (supernet(x, space.largest()) - static(x)).abs().max() <= 1e-5


def _cli_error(args: list[str], cwd: Path) -> str:
    result = subprocess.run([*EFNAS, *args], env=ENV, cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_one_line_errors(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "supernet.pt").write_bytes(b"PK\x03\x04 truncated zip")
    assert "truncated or corrupt" in _cli_error(["train", *QUICK, "--out", str(run), "--resume"], REPO)

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    torch.save({"weights": torch.zeros(3)}, foreign / "supernet.pt")
    assert "not an efficientformer-nas supernet checkpoint" in _cli_error(["train", *QUICK, "--out", str(foreign), "--resume"], REPO)

    message = _cli_error(["train", *QUICK, "--data", f"imagefolder:{tmp_path / 'nowhere'}", "--out", str(tmp_path / "x")], REPO)
    assert "nowhere" in message

    l1 = tmp_path / "l1.pth"
    torch.save(build_model(load_space("efficientformer-v1").preset("L1").__class__(**{
        **load_space("efficientformer-v1").preset("L1").to_dict(), "resolution": 32, "num_classes": 37})).state_dict(), l1)
    assert "outside space 'tiny'" in _cli_error(["train", *QUICK, "--init-from", str(l1), "--epochs", "0", "--out", str(tmp_path / "y")], REPO)

    assert "already holds a supernet checkpoint" in _cli_error(["train", *QUICK, "--out", str(run)], REPO)
