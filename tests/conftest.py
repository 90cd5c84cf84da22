"""Shared fixtures. Tests use real components at small sizes: the tiny space, tiny resolutions."""

from __future__ import annotations

import pytest
import torch

# One intra-op thread: tests share two cores with the child processes they start, and OpenMP
# threads that spin-wait on a busy core make small ops 100x slower (measured: 1 s vs 3 ms).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def v1_space():
    from supernet import load_space

    return load_space("efficientformer-v1")


@pytest.fixture(scope="session")
def tiny_space():
    from supernet import load_space

    return load_space("tiny")


@pytest.fixture(scope="session")
def trained_tiny_supernet(tmp_path_factory):
    """A briefly but really trained tiny-space supernet checkpoint on the embedded task (~20-40 s),
    shared by the search and export tests."""
    from supernet.train import TrainConfig, train

    run = tmp_path_factory.mktemp("trained-tiny")
    config = TrainConfig(out=str(run), space="tiny", epochs=2, steps_per_epoch=25, batch_size=64, lr=3e-3, threads=1)
    return train(config, show_progress=False).checkpoint


@pytest.fixture(scope="session")
def tiny_lut(tmp_path_factory, tiny_space):
    """The shipped tiny onnxruntime table, or one measured here with few runs (~5 s)."""
    from latency_lut import BuildConfig, build_lut, shipped_lut

    shipped = shipped_lut(tiny_space)
    if shipped is not None:
        return shipped
    path = tmp_path_factory.getbasetemp() / "tiny-onnxruntime.json"
    if not path.exists():
        config = BuildConfig(rounds=3, warmup=1, retries=0, calibration_samples=3, calibration_rounds=2, calibration_runs=1)
        build_lut(tiny_space, path, config)
    return path
