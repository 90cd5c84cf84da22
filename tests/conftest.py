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
