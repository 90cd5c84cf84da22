"""An architecture's score in a search: :class:`supernet.evaluate.Scorer`'s top-1, cached.

Given the settings a score is deterministic, so it is cached per architecture (here in memory;
across processes and runs through the study's storage).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch

from supernet.checkpoint import CheckpointInfo
from supernet.elastic import Supernet
from supernet.evaluate import EvalConfig, Scorer, task_data
from supernet.space import ArchSpec
from supernet.train import params_digest

__all__ = ["EvalConfig", "Evaluator"]


class Evaluator:
    """Scores architectures of a trained supernet on its own task (see :func:`supernet.evaluate.task_data`;
    ``data`` overrides the dataset recorded in the checkpoint)."""

    def __init__(
        self,
        supernet: Supernet,
        info: CheckpointInfo,
        config: EvalConfig = EvalConfig(),
        *,
        data: str | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.supernet = supernet
        self.info = info
        self.config = config
        self.scorer = Scorer(task_data(info, data), config, device=device)
        self.data_arg = data or str(info.config["data"])  # task_data found it
        self.supernet_digest = params_digest(supernet)  # identifies the weights wherever the file lives
        self._scores: dict[ArchSpec, float] = {}

    @property
    def num_val(self) -> int:
        """How many validation images a score is measured on."""
        return self.scorer.num_val

    def describe(self) -> dict[str, Any]:
        """What a study records about how its scores were made."""
        return {
            **asdict(self.config),
            "data": self.data_arg,
            "num_val": self.num_val,
            "split_seed": int(self.info.config.get("seed", 0)),
        }

    def accuracy(self, spec: ArchSpec) -> float:
        """Validation top-1 of ``spec`` (a fraction), from the cache when it was scored before."""
        if spec not in self._scores:
            self._scores[spec] = self.scorer.score(self.supernet, spec)
        return self._scores[spec]

    def remember(self, spec: ArchSpec, accuracy: float) -> None:
        """Put a score measured elsewhere (another process of the same study) into the cache."""
        self._scores[spec] = accuracy
