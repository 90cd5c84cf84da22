"""Training under hostile conditions (issue 13): two runs into one folder, non-finite numbers, bad
output folders, writers killed mid-write, empty and malicious weight files; and the Python API's
conventions (issue 14): file permissions, --epochs 0, os.PathLike, no global side effects."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from nas.cli import main
from supernet import TrainConfig, build_model, load_space, train
from supernet.checkpoint import load_checkpoint, load_supernet
from supernet.cliconfig import check_type
from supernet.errors import ConfigError, EfnasError
from supernet.io import atomic_write_bytes, check_output_folder, lock_folder, remove_stale_temp_files

REPO = Path(__file__).resolve().parent.parent
EFNAS = [sys.executable, "-m", "nas.cli"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
QUICK = ["--space", "tiny", "--batch-size", "16", "--threads", "1", "--no-progress"]


def _one_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0] and "\x1b" not in lines[0]
    return lines[0]


def _quick(out: Path, **changes) -> TrainConfig:
    settings = {"out": out, "epochs": 0, "batch_size": 16, "threads": 1, "skip_validation": True} | changes
    return TrainConfig(**settings)


def _wait_for(condition, what: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# -- one run per folder -------------------------------------------------------------------------


def _holder_pid(lock: Path) -> int | None:
    try:
        return json.loads(lock.read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


def test_a_second_training_into_the_same_folder_is_refused_naming_the_holder(tmp_path):
    run = tmp_path / "run"
    first = subprocess.Popen([*EFNAS, "train", *QUICK, "--epochs", "50", "--no-validate", "--out", str(run)],
                             env=ENV, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: _holder_pid(run / ".efnas.lock") == first.pid or first.poll() is not None, "the first run's lock")
        assert first.poll() is None, "the first run ended before the second started"
        second = subprocess.run([*EFNAS, "train", *QUICK, "--epochs", "1", "--out", str(run)],
                                env=ENV, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert first.poll() is None, "the first run ended while the second ran: the test proved nothing"
    finally:
        first.kill()
        first.wait()
    assert second.returncode == 2, second.stderr
    lines = [line for line in second.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in lines[0], second.stderr
    assert f"PID {first.pid} on host {socket.gethostname()}" in lines[0] and "in use by another training run" in lines[0]


def test_the_lock_dies_with_its_process_and_a_stale_lock_file_does_not_block(tmp_path):
    folder = tmp_path / "out"
    code = (
        "import sys, time\nfrom supernet.io import lock_folder\n"
        f"with lock_folder({str(folder)!r}, what='search'):\n    print('locked', flush=True)\n    time.sleep(300)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], env=ENV, cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(EfnasError, match=rf"in use by another search \(PID {holder.pid} on host ") as error:
            with lock_folder(folder, what="search"):
                pass
        assert "\n" not in str(error.value)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (folder / ".efnas.lock").exists()  # what kill -9 leaves: a file, but no lock
    with lock_folder(folder) as lock:
        assert _holder_pid(lock) == os.getpid()
    assert not (folder / ".efnas.lock").exists()


def test_the_lock_nests_within_a_process_and_an_unused_new_folder_goes_away(tmp_path, capsys):
    folder = tmp_path / "batch"
    with lock_folder(folder, what="batch") as lock:
        with lock_folder(folder, what="search"):  # e.g. a batch running a search into its own folder
            assert _holder_pid(lock) == os.getpid()
        assert lock.exists()
        (folder / "result.json").write_text("{}")
    assert (folder / "result.json").exists() and not lock.exists()
    # A run that fails before writing anything leaves no empty folder behind.
    out = tmp_path / "run"
    assert main(["train", *QUICK, "--epochs", "0", "--data", f"imagefolder:{tmp_path / 'nowhere'}", "--out", str(out)]) == 2
    assert "nowhere does not exist" in _one_line(capsys)
    assert not out.exists()


# -- non-finite and out-of-range numbers ---------------------------------------------------------


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--lr", "inf", "--lr must be a finite number, got inf"),
        ("--lr", "nan", "--lr must be a finite number, got nan"),
        ("--weight-decay", "nan", "--weight-decay must be a finite number, got nan"),
        ("--kd-temperature", "inf", "--kd-temperature must be a finite number, got inf"),
        ("--warmup-epochs", "inf", "--warmup-epochs must be a finite number, got inf"),
        ("--seed", "-1", "--seed must be at least 0, got -1"),
        ("--workers", "-2", "--workers must be at least 0, got -2"),
    ],
)
def test_bad_numbers_on_the_command_line_are_one_line_errors(tmp_path, capsys, flag, value, message):
    out = tmp_path / "run"
    assert main(["train", *QUICK, "--epochs", "0", "--out", str(out), flag, value]) == 2
    assert _one_line(capsys) == f"efnas: error: {message}"
    assert not out.exists()


def test_bad_numbers_from_the_python_api_and_from_files_name_the_field():
    for name in ("lr", "weight_decay", "kd_temperature", "warmup_epochs", "label_smoothing", "final_lr_ratio"):
        for value in (math.inf, -math.inf, math.nan):
            with pytest.raises(ConfigError, match=f"^{name} must be a finite number") as error:
                TrainConfig(**{name: value})
            assert error.value.field == name
            with pytest.raises(ConfigError, match=f"^{name} must be a finite number"):
                check_type(TrainConfig, name, value)  # a batch or TOML file may say nan / inf
    with pytest.raises(ConfigError, match="^seed must be at least 0, got -1$"):
        TrainConfig(seed=-1)


def test_a_diverging_run_stops_and_keeps_its_last_good_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    # AdamW moves every weight by ~lr per step: at 1e6 the loss is nan within two steps.
    argv = ["train", *QUICK, "--epochs", "1", "--steps-per-epoch", "20", "--checkpoint-every", "1", "--lr", "1e6",
            "--warmup-epochs", "0", "--no-validate", "--out", str(run)]
    assert main(argv) == 2
    line = _one_line(capsys)
    assert line.startswith("efnas: error: training diverged: the loss of step ") and "last good weights" in line, line
    payload = load_checkpoint(run / "supernet.pt")
    assert not payload["finished"] and 1 <= payload["step"] < 20
    assert f"(step {payload['step']}, not finished)" in line
    assert all(torch.isfinite(tensor).all() for tensor in payload["model"].values())


# -- output folders and temporary files ----------------------------------------------------------


def test_an_unusable_out_folder_is_a_one_line_error_before_any_work(tmp_path, capsys):
    plain = tmp_path / "notes.txt"
    plain.write_text("a file, not a folder")
    cases = [(plain, "is a file, not a folder"), (plain / "run", f"cannot be created: {plain} is a file"),
             (Path("/proc/efnas-test/run"), "is not writable (in /proc)")]
    for out, message in cases:
        assert main(["train", *QUICK, "--epochs", "0", "--out", str(out)]) == 2
        assert message in _one_line(capsys)
        with pytest.raises(EfnasError, match="--out"):
            check_output_folder(out)
    assert check_output_folder(tmp_path / "new" / "run") == tmp_path / "new" / "run"
    assert not (tmp_path / "new").exists()  # a check creates nothing


_STALLED_WRITER = (
    "import os, sys, time\nfrom supernet.io import atomic_write_bytes\n"
    "os.fsync = lambda fd: (print('writing', flush=True), time.sleep(300))\n"  # a write that never ends
    "atomic_write_bytes(sys.argv[1], b'x' * 100_000)\n"
)


def _stalled_writer(target: Path) -> subprocess.Popen:
    writer = subprocess.Popen([sys.executable, "-c", _STALLED_WRITER, str(target)], env=ENV, cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "writing"
    return writer


def _temp_files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.name.endswith(".tmp")}


def test_temp_files_of_killed_writers_are_removed_and_a_live_writers_kept(tmp_path):
    run = tmp_path / "run"
    killed = _stalled_writer(run / "supernet.pt")
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    (stale,) = _temp_files(run)
    assert f".supernet.pt.{killed.pid}-" in stale
    live = _stalled_writer(run / "supernet.pt")  # the next writer of the file removes the dead one's first
    try:
        (kept,) = _temp_files(run)
        assert f".supernet.pt.{live.pid}-" in kept
        assert remove_stale_temp_files(run) == [] and _temp_files(run) == {kept}
        # The next training run into the folder cleans up too (here: a second killed writer's file).
        again = _stalled_writer(run / "config.json")
        again.send_signal(signal.SIGKILL)
        again.wait()
        assert len(_temp_files(run)) == 2
        train(_quick(run), show_progress=False)
        assert _temp_files(run) == {kept} and (run / "supernet.pt").exists()
    finally:
        live.kill()
        live.wait()


def test_written_files_follow_the_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        atomic_write_bytes(tmp_path / "a.json", b"{}")
        result = train(_quick(tmp_path / "run"), show_progress=False)
        os.umask(0o002)
        atomic_write_bytes(tmp_path / "b.json", b"{}")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o640
    assert stat.S_IMODE(result.checkpoint.stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "run" / "config.json").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "b.json").stat().st_mode) == 0o664


# -- hostile weight files ------------------------------------------------------------------------


class _Exploit:
    """Unpickling this runs a shell command: exactly what a weights file must never be able to do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_empty_and_malicious_weight_files_are_one_line_errors(tmp_path, capsys):
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    marker = tmp_path / "exploited"
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": _Exploit(marker)}, evil)
    refused = "is not a plain weights file (refused: it needs code execution to load)"
    for flag in ("--init-from", "--teacher"):
        assert main(["train", *QUICK, "--epochs", "0", flag, str(empty), "--out", str(tmp_path / f"e{flag}")]) == 2
        assert f"{empty} is empty (0 bytes" in _one_line(capsys)
        assert main(["train", *QUICK, "--epochs", "0", flag, str(evil), "--out", str(tmp_path / f"m{flag}")]) == 2
        assert f"{evil} {refused}" in _one_line(capsys)
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"format": "efficientformer-nas/supernet/1", "model": _Exploit(marker)}, run / "supernet.pt")
    assert main(["train", *QUICK, "--out", str(run), "--resume"]) == 2
    assert f"checkpoint {run / 'supernet.pt'} {refused}" in _one_line(capsys)
    assert not marker.exists()


# -- --epochs 0, --no-validate, the Python API ---------------------------------------------------


def _image_folder(root: Path, *, corrupt_val: bool = False) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c, name in enumerate(("cat", "dog")):
            (root / split / name).mkdir(parents=True)
            for i in range(4):
                pixels = rng.integers(0, 256, size=(24, 24, 3), dtype=np.uint8)
                pixels[..., c] = 255
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    if corrupt_val:
        (root / "val" / "dog" / "3.png").write_bytes(b"not an image")
    return root


def test_epochs_0_writes_the_supernet_before_validating(tmp_path):
    data = _image_folder(tmp_path / "images", corrupt_val=True)
    run = tmp_path / "run"
    config = TrainConfig(space="tiny", data=data, out=run, epochs=0, batch_size=4, calib_batches=1, threads=1)
    with pytest.raises(EfnasError, match=r"cannot read image .*3\.png: Unsupported image file"):
        train(config, show_progress=False)  # validation reads the broken image ...
    supernet, info = load_supernet(run)  # ... after the initialised supernet was written
    assert info.finished and info.step == 0 and "val_top1_largest" not in info.metrics
    assert info.data["class_names"] == ["cat", "dog"]


def test_no_validate_skips_validation_and_paths_may_be_pathlike(tmp_path):
    data = _image_folder(tmp_path / "images", corrupt_val=True)  # validating would fail
    config = TrainConfig(space="tiny", data=data, out=tmp_path / "run", epochs=1, steps_per_epoch=2, batch_size=4,
                         threads=1, skip_validation=True)
    assert config.data == f"imagefolder:{data}" and config.out == str(tmp_path / "run")
    result = train(config, show_progress=False)
    _, info = load_supernet(result.checkpoint)
    assert info.finished and info.step == 2 and not any(k.startswith("val_") for k in info.metrics)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["config"]["out"] == str(tmp_path / "run")


def test_training_leaves_the_global_rng_and_thread_count_as_it_found_them(tmp_path):
    threads = torch.get_num_threads()
    torch.manual_seed(1234)
    expected = torch.rand(4)
    torch.manual_seed(1234)
    first = train(_quick(tmp_path / "a", epochs=1, steps_per_epoch=2, seed=7), show_progress=False)
    assert torch.equal(torch.rand(4), expected)
    assert torch.get_num_threads() == threads
    # ... and the initial weights still come from the seed alone, whatever the caller's RNG holds.
    torch.manual_seed(99)
    second = train(_quick(tmp_path / "b", epochs=1, steps_per_epoch=2, seed=7), show_progress=False)
    for (name, a), b in zip(first.supernet.state_dict().items(), second.supernet.state_dict().values()):
        assert torch.equal(a, b), name


def test_packaging_declares_what_the_api_needs():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert any(d.split(">")[0].split("=")[0].strip() == "scipy" for d in project["project"]["dependencies"])
    assert "py.typed" in project["tool"]["setuptools"]["package-data"]["supernet"]
    assert (REPO / "supernet" / "py.typed").is_file()
    import supernet

    assert {"train", "TrainConfig", "TrainResult"} <= set(supernet.__all__)
    assert supernet.train is train and build_model is supernet.build_model and load_space("tiny")


def test_flipped_bytes_in_the_weights_are_refused_on_every_load(trained_tiny_supernet, tmp_path):
    payload = torch.load(trained_tiny_supernet, weights_only=True)
    name = sorted(k for k, v in payload["model"].items() if v.is_floating_point())[0]
    tensor = payload["model"][name].clone()
    raw = tensor.view(torch.uint8).flatten()
    raw[: min(256, raw.numel())] ^= 0xFF  # 256 flipped bytes in one tensor
    payload["model"][name] = tensor
    damaged = tmp_path / "damaged.pt"
    torch.save(payload, damaged)
    for load in (load_checkpoint, load_supernet):
        with pytest.raises(EfnasError, match="weights do not match their recorded SHA-256"):
            load(damaged)
    assert main(["export", "--supernet", str(damaged), "--preset", "L1", "--out", str(tmp_path / "export")]) == 2
    assert not (tmp_path / "export").exists()
