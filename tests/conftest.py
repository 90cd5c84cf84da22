"""Shared fixtures. Tests use real components at small sizes: the tiny space, tiny resolutions."""

from __future__ import annotations

import os

import pytest
import torch

# Two cores here; more threads only add contention between tests and child processes.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def v1_space():
    from supernet import load_space

    return load_space("efficientformer-v1")


@pytest.fixture(scope="session")
def tiny_space():
    from supernet import load_space

    return load_space("tiny")
