"""Supernet checkpoints: written atomically, read safely, explaining themselves.

A checkpoint holds the supernet weights, the optimiser and scheduler state, the step, the RNG
state, the search space (as data) with its fingerprint, and the run config — enough to resume a
killed run exactly and for search/export to rebuild the supernet without any other file. It is a
plain ``torch.save`` of dicts, tensors and primitives, read back with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from supernet.elastic import Supernet
from supernet.errors import EfnasError
from supernet.io import atomic_torch_save
from supernet.space import SearchSpace

__all__ = ["CHECKPOINT_FORMAT", "CheckpointInfo", "load_checkpoint", "load_supernet", "read_weights", "save_checkpoint", "weights_digest"]

CHECKPOINT_FORMAT = "efficientformer-nas/supernet/1"


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint says about itself, besides the weights."""

    path: Path
    space: SearchSpace
    step: int
    total_steps: int
    finished: bool
    config: dict[str, Any]
    data: dict[str, Any]
    metrics: dict[str, Any]


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` (see :func:`supernet.train.train`) atomically, tagged with the format and
    with a hash of its weights that every load verifies."""
    atomic_torch_save({"format": CHECKPOINT_FORMAT, **payload, "model_sha256": weights_digest(payload["model"])}, path)


def weights_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict's names, shapes and bytes: a flipped byte anywhere changes it."""
    digest = hashlib.sha256()
    for name, tensor in sorted(state_dict.items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def read_weights(path: Path, *, what: str = "checkpoint", map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``; every way it fails is a one-line :class:`EfnasError`
    (``what`` names the kind of file: "checkpoint", "teacher", ...)."""
    try:
        if path.stat().st_size == 0:
            raise EfnasError(f"{what} {path} is empty (0 bytes: an interrupted copy or download?)")
        with warnings.catch_warnings():
            # torch warns about pickle protocols on stderr; the outcome is reported below.
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except EfnasError:
        raise
    except Exception as exc:  # noqa: BLE001 - every reader error means the same thing to the user
        text = _ANSI.sub("", str(exc))
        if "weights only load failed" in text.lower():
            raise EfnasError(f"{what} {path} is not a plain weights file (refused: it needs code execution to load)") from None
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        reason = lines[0][:160] if lines else type(exc).__name__
        raise EfnasError(f"{what} {path} is truncated or corrupt ({reason})") from None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The raw checkpoint dict, validated; every problem is a one-line :class:`EfnasError`."""
    path = Path(path)
    if not path.exists():
        raise EfnasError(f"checkpoint {path} does not exist")
    if path.is_dir():
        candidate = path / "supernet.pt"
        if not candidate.exists():
            raise EfnasError(f"{path} is a folder without a supernet.pt checkpoint")
        path = candidate
    payload = read_weights(path, map_location=map_location)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise EfnasError(
            f"{path} is not an efficientformer-nas supernet checkpoint (expected format '{CHECKPOINT_FORMAT}'); "
            "a timm or exported state dict goes to `efnas train --init-from` instead"
        )
    missing = [k for k in ("model", "space", "fingerprint", "step", "total_steps", "config") if k not in payload]
    if missing:
        raise EfnasError(f"checkpoint {path} is incomplete: missing {', '.join(missing)}")
    recorded = payload.get("model_sha256")  # absent in checkpoints written before it was recorded
    if recorded is not None and weights_digest(payload["model"]) != recorded:
        raise EfnasError(f"checkpoint {path} is corrupt: its weights do not match their recorded SHA-256 "
                         "(damaged on disk or in a copy); use another copy, or retrain")
    space = SearchSpace.from_dict(payload["space"], source=f"checkpoint {path}")
    if space.fingerprint() != payload["fingerprint"]:
        raise EfnasError(f"checkpoint {path} is corrupt: its space does not match its recorded fingerprint")
    payload["space"] = space
    payload["path"] = path
    return payload


def load_supernet(path: str | Path, device: str | torch.device = "cpu") -> tuple[Supernet, CheckpointInfo]:
    """The trained supernet of a checkpoint (eval mode) and what the checkpoint says about itself."""
    payload = load_checkpoint(path)
    supernet = Supernet(payload["space"])
    try:
        supernet.load_state_dict(payload["model"], strict=True)
    except RuntimeError as exc:
        raise EfnasError(f"checkpoint {payload['path']} does not fit its own space ({str(exc).splitlines()[0][:160]})") from None
    info = CheckpointInfo(
        path=payload["path"],
        space=payload["space"],
        step=int(payload["step"]),
        total_steps=int(payload["total_steps"]),
        finished=bool(payload.get("finished", False)),
        config=dict(payload["config"]),
        data=dict(payload.get("data", {})),
        metrics=dict(payload.get("metrics", {})),
    )
    return supernet.to(device).eval(), info
