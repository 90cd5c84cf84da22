"""Shared fixtures. Tests use real components at small sizes: the tiny space, tiny resolutions."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

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


PG_BIN = Path("/usr/lib/postgresql")


def _pg_bin(name: str) -> Path | None:
    found = sorted(PG_BIN.glob(f"*/bin/{name}"))  # Debian keeps the server tools off PATH
    if found:
        return found[-1]
    on_path = shutil.which(name)
    return Path(on_path) if on_path else None


@pytest.fixture
def postgres_url():
    """A throwaway PostgreSQL cluster on a free port (as the 'postgres' user when run as root,
    since the server refuses to run as root)."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed; .ci/run installs them")
    folder = Path(tempfile.mkdtemp(prefix="efnas-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:
        user = "postgres" if _user_exists("postgres") else "nobody"
        shutil.chown(folder, user)
        prefix = ["runuser", "-u", user, "--"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = folder / "data"
    subprocess.run([*prefix, str(initdb), "-D", str(data), "--auth=trust", "-U", "efnas"], check=True, capture_output=True)
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run([*prefix, str(pg_ctl), "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w", "start"], check=True, capture_output=True)
    try:
        subprocess.run([str(initdb.parent / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "efnas", "efnas"], check=True, capture_output=True)
        yield f"postgresql://efnas@127.0.0.1:{port}/efnas"
    finally:
        subprocess.run([*prefix, str(pg_ctl), "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True
