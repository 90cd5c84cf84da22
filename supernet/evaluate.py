"""BatchNorm recalibration and top-1 evaluation, shared by training, search and export.

A subnet inherits its weights from the supernet, but the supernet's BatchNorm statistics are a
blend over all the subnets trained through it. Before a subnet is scored its statistics are
re-estimated on a few training batches; this is done on the extracted static model, so the
supernet's own buffers are never touched and no autograd graph is kept (peer tools' BN
calibration is known to leak memory when run through the supernet under autograd).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice

import torch
from torch import nn

from supernet.space import ArchSpec

__all__ = ["calibration_batches", "evaluate", "evaluate_spec", "recalibrate_bn"]

Batch = tuple[torch.Tensor, torch.Tensor]


def recalibrate_bn(model: nn.Module, batches: Iterable[Batch], device: torch.device | str = "cpu") -> nn.Module:
    """Reset every BatchNorm's running statistics and re-estimate them as the plain average over
    ``batches`` (momentum ``None``). Returns the model in eval mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    model.train()
    with torch.no_grad():
        for images, _ in batches:
            model(images.to(device))
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    return model.eval()


def evaluate(model: nn.Module, batches: Iterable[Batch], device: torch.device | str = "cpu") -> float:
    """Top-1 accuracy (a fraction in [0, 1]) of ``model`` in eval mode over ``batches``."""
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for images, labels in batches:
            predictions = model(images.to(device)).argmax(dim=1).cpu()
            correct += int((predictions == labels).sum())
            total += labels.numel()
    if total == 0:
        raise ValueError("evaluate() got no batches")
    return correct / total


def calibration_batches(data, num_batches: int, batch_size: int, seed: int) -> Iterator[Batch]:
    """The first ``num_batches`` training batches of epoch 0 for ``seed``: the same for every subnet."""
    return islice(data.train_batches(0, batch_size, seed=seed), num_batches)


def evaluate_spec(
    supernet,
    spec: ArchSpec,
    data,
    *,
    calib_batches: int = 8,
    batch_size: int = 128,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> float:
    """Validation top-1 of ``spec`` with weights inherited from ``supernet`` after BN recalibration.

    Deterministic given ``seed``: the calibration batches and the validation order are fixed.
    """
    model = supernet.extract(spec).to(device)
    recalibrate_bn(model, calibration_batches(data, calib_batches, batch_size, seed), device)
    return evaluate(model, data.val_batches(batch_size), device)
