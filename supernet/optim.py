"""The optimisation pieces shared by supernet training and subnet fine-tuning.

One owner for what "a weight to decay", "the learning-rate schedule" and "the distillation loss"
mean, so that a fine-tune continues exactly the objective the supernet was trained on.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["distillation_loss", "param_groups", "warmup_cosine"]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: conv kernels and linear matrices decay; everything else does not."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        # Norm scales, biases, layer scales and attention biases are not weights to shrink.
        (decay if param.ndim >= 2 and "attention_biases" not in name else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, peak: float, final: float = 0.0) -> float:
    """Linear warm-up to ``peak``, then cosine decay to ``final`` at ``total_steps``."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return final + (peak - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


def distillation_loss(logits: torch.Tensor, target_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL divergence to the (detached) soft targets, scaled by T² so its gradient keeps its size."""
    t = temperature
    soft_target = F.softmax(target_logits.detach().float() / t, dim=-1)
    return F.kl_div(F.log_softmax(logits.float() / t, dim=-1), soft_target, reduction="batchmean") * t * t
