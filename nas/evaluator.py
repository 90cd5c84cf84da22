"""An architecture's score in a search: :class:`supernet.evaluate.Scorer`'s top-1, cached.

Given the settings a score is deterministic, so it is cached per architecture (here in memory;
across processes and runs through the study's storage).

Under ``torchrun`` (an initialised process group of several ranks) every rank holds an evaluator
and each score is computed by all of them together (the Scorer shares calibration and validation
out). The Scorer needs every rank to score the same subnets in the same order, but only one rank
runs the search: rank 0 leads and sends each architecture it scores to the others, which wait for
it in :meth:`Evaluator.serve` until rank 0 calls :meth:`Evaluator.release`.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch
import torch.distributed as dist

from supernet.checkpoint import CheckpointInfo
from supernet.elastic import Supernet
from supernet.errors import EfnasError
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
        self._scores: dict[ArchSpec, float] = {}  # under torchrun filled on rank 0 only: it alone asks
        self._scoring = False  # inside a score, whose collectives the other ranks are in too
        self._released = False  # rank 0 has sent the other ranks the end

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
        """Validation top-1 of ``spec`` (a fraction), from the cache when it was scored before.

        Under a process group of several ranks only rank 0 asks; the others :meth:`serve`."""
        if spec not in self._scores:
            if self.scorer.distributed:
                self._lead({"spec": spec.to_dict()})
            self._scores[spec] = self._score(spec)
        return self._scores[spec]

    def remember(self, spec: ArchSpec, accuracy: float) -> None:
        """Put a score measured elsewhere (another process of the same study) into the cache."""
        self._scores[spec] = accuracy

    def serve(self) -> int:
        """Ranks other than 0: score each architecture rank 0 sends, together with it, until it
        releases them; returns the status it released them with."""
        if not self.scorer.distributed or self.scorer.rank == 0:
            raise EfnasError("serve() is for the ranks other than 0 of a torchrun job; rank 0 asks for scores")
        while "spec" in (message := _from_rank_0(None)):
            # Rank 0 sends only what it has not scored, so this rank has not either: nothing to look up.
            self._score(ArchSpec.from_dict(message["spec"]))
        return int(message["end"])

    def release(self, status: int = 0) -> None:
        """Rank 0, once it asks for no more scores (also after a failure): the other ranks' :meth:`serve`
        returns ``status``. Nothing alone or once released."""
        if not self.scorer.distributed or self._released:
            return
        if self._scoring:
            # A score failed here half-way: the others wait inside its collectives and would take
            # this message for their data. They end when torchrun sees this rank exit.
            return
        self._lead({"end": status})
        self._released = True

    def _lead(self, message: dict[str, Any]) -> None:
        if self.scorer.rank != 0:
            raise EfnasError(f"rank {self.scorer.rank} of a torchrun job asked for a score; only rank 0 asks, the others serve()")
        if self._released:
            raise EfnasError("the other ranks were released: they score nothing more")
        _from_rank_0(message)

    def _score(self, spec: ArchSpec) -> float:
        self._scoring = True
        score = self.scorer.score(self.supernet, spec)
        self._scoring = False
        return score


def _from_rank_0(message: dict[str, Any] | None) -> dict[str, Any]:
    """Rank 0's ``message`` on every rank (the others pass None)."""
    box = [message]
    dist.broadcast_object_list(box, src=0)  # NCCL carries it on the current CUDA device, which Distributed sets
    return box[0]
