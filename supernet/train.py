"""Supernet training: the sandwich rule with in-place distillation, in one readable loop.

Each step trains, on the same batch, the largest subnet on the labels (label smoothing) and the
smallest plus ``num_random`` random subnets on the largest one's detached soft outputs (or on an
external teacher's). The random subnets are a pure function of ``(seed, step)``, so every DDP rank
draws the same ones without communicating and a resumed run draws what the killed one would have.
With ``--worst-of K`` each random subnet is instead the worst, on the step's batch, of K
like-sized candidates drawn that way (the ranks sum their losses, so they agree).

Run single-process (``efnas train ...``) or under ``torchrun --nproc-per-node N`` (DDP: gloo on
CPU, NCCL on GPU); only rank 0 writes files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from itertools import islice
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from rich.progress import Progress
from torch import nn

from supernet.checkpoint import load_checkpoint, read_weights, save_checkpoint
from supernet.distributed import Distributed
from supernet.elastic import Supernet, infer_spec
from supernet.errors import ConfigError, EfnasError
from supernet.evaluate import batchnorm_momentum, evaluate_spec
from supernet.io import (
    atomic_write_json, atomic_write_text, check_output_folder, console, lock_folder, progress_bar, provenance,
    remove_stale_temp_files, torch_threads,
)
from supernet.model import EfficientFormer, build_model, count_params
from supernet.optim import distillation_loss, param_groups, warmup_cosine
from supernet.space import ArchSpec, SearchSpace, load_space

__all__ = ["TrainConfig", "TrainResult", "load_static_checkpoint", "params_digest", "sandwich_specs", "train"]


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """One supernet training run. The defaults train the tiny space on the embedded task."""

    space: str | os.PathLike[str] = "tiny"  # built-in space name or a space file
    data: str | os.PathLike[str] = "digits-mosaic"  # embedded task name, or imagefolder:PATH (a path alone: an image folder)
    out: str | os.PathLike[str] = "runs/supernet"  # run folder: supernet.pt, metrics.jsonl, config.json
    epochs: int = 10
    steps_per_epoch: int | None = None  # cap on steps per epoch, for quick trials
    batch_size: int = 64  # per process; 64 measured best at the demo's image budget (docs/benchmarks/supernet_recipe.md)
    lr: float = 2e-3  # peak AdamW learning rate
    weight_decay: float = 0.05  # on conv/linear weights only
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1  # largest subnet's loss on the labels
    num_random: int = 2  # random subnets per step besides the largest and the smallest
    kd_temperature: float = 1.0
    subnet_label_weight: float = 0.5  # share of the label loss in the other subnets' loss (the rest: distillation)
    subnet_weight: float = 1.0  # weight of each other subnet's loss relative to the largest's
    meta4d_largest: bool = False  # also train the largest widths with the fewest Meta3D blocks each step
    narrowest_deepest: bool = False  # also train the narrowest widths at the greatest depths each step
    worst_of: int = 1  # each random subnet: the worst on the batch of this many of about its size (1: uniform)
    largest_only_epochs: float = 0.0  # epochs that train the largest subnet alone before the sandwich starts
    final_lr_ratio: float = 0.0  # the cosine ends at this fraction of --lr (BigNAS ends at a constant)
    teacher: str | os.PathLike[str] | None = None  # static EfficientFormer state dict distilled into every subnet
    init_from: str | os.PathLike[str] | None = None  # timm/our EfficientFormer state dict to warm-start the supernet
    seed: int = 0
    checkpoint_every: int = 100  # steps
    eval_every: int = 0  # steps between validations of the largest/smallest subnets; 0 = each epoch
    skip_validation: bool = False  # never validate (the checkpoint then has no val_top1_* metrics)
    calib_batches: int = 8  # BatchNorm recalibration batches before each validation
    workers: int = 0  # data-loading processes (image folders); they stay up between epochs
    channels_last: bool = False  # NHWC memory layout for the supernet and the batches (faster convs on GPUs)
    compile: bool = False  # torch.compile each block of the supernet (dynamic shapes; the first steps compile)
    device: str = "auto"  # auto | cpu | cuda
    threads: int | None = None  # intra-op CPU threads; None: torch's default (all cores)

    def __post_init__(self) -> None:
        # Paths arrive as str or os.PathLike; stored as str so the config is JSON as it stands.
        for name in ("space", "data", "out", "teacher", "init_from"):
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                text = os.fspath(value)
                object.__setattr__(self, name, f"imagefolder:{text}" if name == "data" else text)
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(field.name, f"must be a finite number, got {value}")
        for name, low in _LOWER_BOUNDS.items():
            value = getattr(self, name)
            if value is not None and value < low:
                raise ConfigError(name, f"must be at least {low}, got {value}")
        for name in ("lr", "kd_temperature"):
            if getattr(self, name) <= 0:
                raise ConfigError(name, f"must be positive, got {getattr(self, name)}")
        for name, (low, high, high_included) in _INTERVALS.items():
            value = getattr(self, name)
            if not (low <= value <= high if high_included else low <= value < high):
                raise ConfigError(name, f"must be in [{low}, {high}{']' if high_included else ')'}, got {value}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError("device", f"must be auto, cpu or cuda, got {self.device!r}")


_LOWER_BOUNDS = {
    "epochs": 0, "steps_per_epoch": 1, "batch_size": 1, "weight_decay": 0, "warmup_epochs": 0, "num_random": 0,
    "subnet_weight": 0, "worst_of": 1, "largest_only_epochs": 0, "seed": 0, "checkpoint_every": 1, "eval_every": 0,
    "calib_batches": 1, "workers": 0, "threads": 1,
}
_INTERVALS = {"label_smoothing": (0, 1, False), "subnet_label_weight": (0, 1, True), "final_lr_ratio": (0, 1, True)}


# Settings that may change when a run is resumed without changing what it computes.
RESUMABLE_OVERRIDES = ("out", "workers", "device", "skip_validation", "channels_last", "compile")


@dataclass
class TrainResult:
    supernet: Supernet
    space: SearchSpace
    checkpoint: Path
    metrics: dict[str, Any]


# -- pieces of the loop -------------------------------------------------------------------------


def sandwich_specs(
    space: SearchSpace,
    seed: int,
    step: int,
    num_random: int,
    *,
    meta4d_largest: bool = False,
    narrowest_deepest: bool = False,
) -> list[ArchSpec]:
    """Largest, smallest and ``num_random`` random subnets for ``step``: a pure function of its inputs.

    With ``meta4d_largest`` the largest widths with the fewest Meta3D blocks come second: the
    largest runs its last stage as Meta3D blocks, so without it the Meta4D weights there are
    trained at full width only by the few random subnets that happen to use them. With
    ``narrowest_deepest`` the narrowest widths at the greatest depths come after the smallest:
    the deep blocks' first channels are otherwise trained almost only inside wide subnets.
    """
    rng = random.Random(f"sandwich:{seed}:{step}")
    specs = [largest := space.largest(), space.smallest()]
    if meta4d_largest and (meta4d := space.edit(largest, num_meta3d=space.meta3d_min)) not in specs:
        specs.insert(1, meta4d)
    if narrowest_deepest and (corner := space.narrowest_deepest()) not in specs:
        specs.append(corner)
    return [*specs, *(space.sample(rng) for _ in range(num_random))]


def worst_up_pools(space: SearchSpace, seed: int, step: int, num_random: int, pool_size: int) -> list[tuple[ArchSpec, ...]]:
    """For each random subnet of ``step``, ``pool_size`` candidates of about the same size: a uniform
    draw and the ``pool_size - 1`` of ``8 * pool_size`` more draws whose parameter counts are nearest
    to it. Picking the worst of like-sized candidates (AttentiveNAS's WorstUp, which fixes a size
    first) trains the shapes weight sharing serves badly without drifting towards small subnets."""
    rng = random.Random(f"worst-up:{seed}:{step}")
    pools = []
    for _ in range(num_random):
        anchor = space.sample(rng)
        size = count_params(anchor)
        others = sorted((space.sample(rng) for _ in range(8 * pool_size)), key=lambda s: abs(count_params(s) - size))
        pools.append((anchor, *others[: pool_size - 1]))
    return pools


class SandwichLoss(nn.Module):
    """The loss of one sandwich step, as one module so that DDP sees one forward per step."""

    def __init__(self, supernet: Supernet, config: TrainConfig) -> None:
        super().__init__()
        self.supernet = supernet
        self.label_smoothing = config.label_smoothing
        self.temperature = config.kd_temperature
        self.label_weight = config.subnet_label_weight
        self.subnet_weight = config.subnet_weight

    def distill(self, logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
        return distillation_loss(logits, target_logits, self.temperature)

    def subnet_loss(self, logits: torch.Tensor, labels: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = self.distill(logits, target)
        if self.label_weight:
            loss = self.label_weight * F.cross_entropy(logits.float(), labels) + (1 - self.label_weight) * loss
        return loss

    def forward(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        specs: list[ArchSpec],
        teacher_logits: torch.Tensor | None,
        pools: Sequence[tuple[ArchSpec, ...]] = (),
    ) -> tuple[torch.Tensor, torch.Tensor]:
        largest = self.supernet(images, specs[0])
        loss_largest = F.cross_entropy(largest.float(), labels, label_smoothing=self.label_smoothing)
        if teacher_logits is not None:
            loss_largest = (loss_largest + self.distill(largest, teacher_logits)) / 2
        target = teacher_logits if teacher_logits is not None else largest
        loss = loss_largest
        for spec in [*specs[1:], *(self.worst(pool, images, labels, target) for pool in pools)]:
            loss = loss + self.subnet_weight * self.subnet_loss(self.supernet(images, spec), labels, target)
        return loss, loss_largest.detach()

    def worst(self, pool: tuple[ArchSpec, ...], images: torch.Tensor, labels: torch.Tensor, target: torch.Tensor) -> ArchSpec:
        """The candidate with the highest loss on this batch (summed over DDP ranks, so all pick the same)."""
        if len(pool) == 1:
            return pool[0]
        with torch.no_grad(), batchnorm_momentum(self.supernet, 0.0):
            losses = torch.stack([self.subnet_loss(self.supernet(images, spec), labels, target) for spec in pool])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(losses)
        return pool[int(losses.argmax())]


def load_static_checkpoint(path: str | os.PathLike[str], *, what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """A static EfficientFormer state dict (timm's or ours; ``.pt``/``.pth`` or ``.safetensors``);
    ``what`` names the file in errors ("teacher", "warm-start checkpoint")."""
    path = Path(path)
    if not path.is_file():
        raise EfnasError(f"{what} {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise EfnasError("reading .safetensors files needs the safetensors package (pip install safetensors)") from None
        try:
            state = load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - every reader error means the same thing to the user
            lines = str(exc).strip().splitlines() or [type(exc).__name__]
            raise EfnasError(f"{what} {path} is truncated or corrupt ({lines[0][:160]})") from None
    else:
        state = read_weights(path, what=what)
    for wrapper in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict) and "stem.conv1.weight" not in state:
            state = state[wrapper]
    if not isinstance(state, dict) or "stem.conv1.weight" not in state:
        raise EfnasError(f"{what} {path} is not an EfficientFormer state dict (no stem.conv1.weight)")
    return state


def _load_teacher(path: str, resolution: int, num_classes: int, space: SearchSpace) -> EfficientFormer:
    state = load_static_checkpoint(path, what="teacher")
    spec = dataclasses.replace(infer_spec(state, space), resolution=resolution)
    if spec.num_classes != num_classes:
        raise EfnasError(f"teacher {path} predicts {spec.num_classes} classes but the data has {num_classes}")
    teacher = build_model(spec)
    teacher.load_state_dict(state, strict=True)
    return teacher.eval().requires_grad_(False)


def params_digest(model: nn.Module) -> str:
    """SHA-256 of the parameters (not the BN buffers: under DDP each rank keeps its own statistics)."""
    digest = hashlib.sha256()
    for _, tensor in sorted(model.named_parameters()):
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


# -- the loop -----------------------------------------------------------------------------------


def _check_resume_config(stored: dict[str, Any], given: TrainConfig, explicit: set[str]) -> TrainConfig:
    differing = [
        name
        for name in explicit
        if name not in RESUMABLE_OVERRIDES and name in stored and stored[name] != getattr(given, name)
    ]
    if differing:
        parts = ", ".join(f"--{n.replace('_', '-')} {getattr(given, n)!r} (checkpoint: {stored[n]!r})" for n in sorted(differing))
        raise EfnasError(f"cannot resume with different settings: {parts}; drop them or start a new --out folder")
    merged = {**stored, **{name: getattr(given, name) for name in RESUMABLE_OVERRIDES}}
    return TrainConfig(**{f.name: merged.get(f.name, f.default) for f in dataclasses.fields(TrainConfig)})


@dataclass
class _Run:
    """Everything one training run holds: built by :func:`_setup`, advanced by the loop in :func:`train`."""

    config: TrainConfig
    ddp: Distributed
    space: SearchSpace
    data: Any
    supernet: Supernet
    teacher: EfficientFormer | None
    optimizer: torch.optim.Optimizer
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    largest_only_steps: int
    step: int
    metrics: dict[str, Any]
    data_record: dict[str, Any]
    finished: bool
    saved_step: int | None = None  # step of the checkpoint on disk, None before the first

    @property
    def checkpoint_path(self) -> Path:
        return Path(self.config.out) / "supernet.pt"

    @property
    def metrics_path(self) -> Path:
        return Path(self.config.out) / "metrics.jsonl"

    def lr(self) -> float:
        c = self.config
        return warmup_cosine(self.step, self.total_steps, self.warmup_steps, c.lr, c.final_lr_ratio * c.lr)

    def specs(self) -> list[ArchSpec]:
        """This step's subnets: the largest alone while the teacher warms up, then the sandwich."""
        c = self.config
        uniform = c.num_random if c.worst_of == 1 else 0
        specs = sandwich_specs(
            self.space, c.seed, self.step, uniform, meta4d_largest=c.meta4d_largest, narrowest_deepest=c.narrowest_deepest
        )
        return specs[:1] if self.step < self.largest_only_steps else specs

    def pools(self) -> list[tuple[ArchSpec, ...]]:
        """With ``--worst-of K``, the candidates each random subnet of this step is picked from."""
        c = self.config
        if c.worst_of == 1 or self.step < self.largest_only_steps:
            return []
        return worst_up_pools(self.space, c.seed, self.step, c.num_random, c.worst_of)

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The remaining training batches, from the current step on (a pure function of seed and step)."""
        c = self.config
        for epoch in range(self.step // self.steps_per_epoch, c.epochs):
            start = self.step - epoch * self.steps_per_epoch
            yield from islice(
                self.data.train_batches(epoch, c.batch_size, seed=c.seed, rank=self.ddp.rank, world_size=self.ddp.world_size, start_batch=start),
                self.steps_per_epoch - start,
            )

    def validate(self) -> None:
        """Top-1 of the largest and smallest subnets after BN recalibration. Every rank recalibrates
        on its share of the calibration batches and scores its share of the validation set (a
        single rank validating a large image folder kept the others waiting past NCCL's timeout)."""
        for name, spec in (("largest", self.space.largest()), ("smallest", self.space.smallest())):
            self.metrics[f"val_top1_{name}"] = evaluate_spec(
                self.supernet, spec, self.data, calib_batches=self.config.calib_batches,
                batch_size=self.config.batch_size, seed=self.config.seed, device=self.ddp.device,
                rank=self.ddp.rank, world_size=self.ddp.world_size,
            )
        self.metrics["val_step"] = self.step
        if self.ddp.is_main:
            record = {k: self.metrics[k] for k in ("val_top1_largest", "val_top1_smallest")}
            _append_metrics(self.metrics_path, {"step": self.step, "epoch": self.step / self.steps_per_epoch, **record})

    def check_finite_loss(self, loss: torch.Tensor) -> None:
        """Stop, before the optimiser step spoils the weights, when this step's loss (on any rank) is nan or inf."""
        bad = (~torch.isfinite(loss.detach())).float()
        if self.ddp.world_size > 1:
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        if bad.item():
            raise self.diverged(f"the loss of step {self.step + 1} is {float(loss.detach())}")

    def diverged(self, what: str) -> EfnasError:
        kept = (f"{self.checkpoint_path} keeps the last good weights (step {self.saved_step}, not finished)"
                if self.saved_step is not None else "no checkpoint was written")
        return EfnasError(f"training diverged: {what}; {kept}; train again with a lower lr or a longer warm-up in a new run folder")

    def save(self, finished: bool) -> None:
        # Every rank checks (their weights are equal), so that they stop together.
        if not all(bool(torch.isfinite(p).all()) for p in self.supernet.parameters()):
            raise self.diverged(f"the weights at step {self.step} are not finite")
        if not self.ddp.is_main:
            self.saved_step = self.step
            return
        save_checkpoint(self.checkpoint_path, {
            "model": self.supernet.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": {"kind": "warmup-cosine", "warmup_steps": self.warmup_steps, "peak_lr": self.config.lr,
                         "final_lr": self.config.final_lr_ratio * self.config.lr},
            "step": self.step,
            "total_steps": self.total_steps,
            "finished": finished,
            "rng": {"torch": torch.get_rng_state()},
            "space": self.space.to_dict(),
            "fingerprint": self.space.fingerprint(),
            "config": asdict(self.config),
            "data": self.data_record,
            "metrics": self.metrics,
            "provenance": provenance(),
        })
        self.saved_step = self.step


def _setup(config: TrainConfig, resume: bool, explicit: set[str]) -> _Run:
    """Load or initialise everything a run needs; on resume, restore the killed run's exact state."""
    from supernet.data import load_data

    checkpoint_path = Path(config.out) / "supernet.pt"
    stored = None
    if resume:
        if not checkpoint_path.exists():
            raise EfnasError(f"nothing to resume: {checkpoint_path} does not exist")
        stored = load_checkpoint(checkpoint_path)
        config = _check_resume_config(stored["config"], config, explicit)
    elif checkpoint_path.exists():
        raise EfnasError(f"{config.out} already holds a supernet checkpoint; pass --resume to continue it, or choose another --out")

    if config.threads is not None:
        torch.set_num_threads(config.threads)
    ddp = Distributed(config.device, config.threads)
    space = load_space(config.space)
    data = load_data(config.data, space.resolution, seed=config.seed, workers=config.workers, pin_memory=ddp.device.type == "cuda")
    if data.num_classes != space.num_classes:
        space = space.with_num_classes(data.num_classes)
    if stored is not None and stored["fingerprint"] != space.fingerprint():
        raise EfnasError(f"checkpoint {checkpoint_path} was trained on another space (fingerprint {stored['fingerprint']}, now {space.fingerprint()})")

    # The initial weights, from the CPU generator (train() forks it): torch.manual_seed would also
    # reseed every CUDA device. Nothing later draws from it.
    torch.default_generator.manual_seed(config.seed)
    supernet = Supernet(space)
    if config.init_from and stored is None:
        note = _warm_start(supernet, space, config.init_from)
        if ddp.is_main:
            console.print(note)
    layout = torch.channels_last if config.channels_last else torch.preserve_format
    supernet.to(ddp.device, memory_format=layout)
    teacher = None
    if config.teacher:
        teacher = _load_teacher(config.teacher, space.resolution, space.num_classes, space).to(ddp.device, memory_format=layout)
    optimizer = torch.optim.AdamW(param_groups(supernet, config.weight_decay), lr=config.lr, betas=(0.9, 0.999))

    steps_per_epoch = data.num_train_batches(config.batch_size, ddp.world_size)
    if config.steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, config.steps_per_epoch)
    if steps_per_epoch < 1:
        raise EfnasError(f"the training set is too small for batch size {config.batch_size} on {ddp.world_size} process(es)")
    run = _Run(
        config=config, ddp=ddp, space=space, data=data, supernet=supernet, teacher=teacher, optimizer=optimizer,
        steps_per_epoch=steps_per_epoch, total_steps=config.epochs * steps_per_epoch,
        warmup_steps=round(config.warmup_epochs * steps_per_epoch),
        largest_only_steps=round(config.largest_only_epochs * steps_per_epoch),
        step=0, metrics={}, data_record=_data_record(data), finished=False,
    )
    if stored is not None:
        _restore(run, stored)
    return run


def _warm_start(supernet: Supernet, space: SearchSpace, path: str) -> str:
    state = load_static_checkpoint(path, what="warm-start checkpoint")
    spec = infer_spec(state, space.with_num_classes(int(state["head.weight"].shape[0])))
    spec = dataclasses.replace(spec, num_classes=space.num_classes)
    skipped = supernet.load_static_state_dict(state, spec)
    return f"warm start from {path} at {spec.label()}" + (f" (skipped {', '.join(skipped)}: other class count)" if skipped else "")


def _restore(run: _Run, stored: dict[str, Any]) -> None:
    if stored["total_steps"] != run.total_steps:
        raise EfnasError(f"checkpoint expects {stored['total_steps']} steps but this run gives {run.total_steps}: resume with the same "
            "data, --epochs, --steps-per-epoch, --batch-size and number of processes")
    run.supernet.load_state_dict(stored["model"])
    run.optimizer.load_state_dict(stored["optimizer"])
    torch.set_rng_state(stored["rng"]["torch"])
    run.step = run.saved_step = int(stored["step"])
    run.metrics = dict(stored.get("metrics", {}))
    run.finished = bool(stored.get("finished"))


def _data_record(data: Any) -> dict[str, Any]:
    """What a checkpoint records of its data, so search and export find and preprocess it the same way."""
    return {
        "name": data.name, "num_classes": data.num_classes, "class_names": list(data.class_names),
        "resolution": data.resolution, "mean": list(data.mean), "std": list(data.std),
        "num_train": data.num_train, "num_val": data.num_val,
    }


class _Meter:
    """Training throughput and mean losses over windows of 10 steps, shown and logged (rank 0).

    Time spent validating and checkpointing is excluded: it is not training throughput.
    """

    WINDOW = 10

    def __init__(self, run: _Run, progress: Progress, task: Any) -> None:
        self.run, self.progress, self.task = run, progress, task
        self.images_per_step = run.config.batch_size * run.ddp.world_size
        self._reset()

    def _reset(self) -> None:
        self.start, self.steps, self.loss, self.sandwich, self.paused = time.perf_counter(), 0, 0.0, 0.0, 0.0

    @contextmanager
    def pause(self) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            self.paused += time.perf_counter() - began

    def add(self, loss: torch.Tensor, loss_largest: torch.Tensor, lr: float) -> None:
        run = self.run
        self.steps += 1
        self.loss += float(loss_largest)
        self.sandwich += float(loss.detach())
        if run.step % self.WINDOW and run.step != run.total_steps:
            return
        ips = self.steps * self.images_per_step / max(time.perf_counter() - self.start - self.paused, 1e-9)
        mean_loss = self.loss / self.steps
        self.progress.update(self.task, completed=run.step, loss=mean_loss, lr=lr, ips=ips)
        if run.ddp.is_main:
            _append_metrics(run.metrics_path, {
                "step": run.step, "epoch": run.step / run.steps_per_epoch, "loss_largest": mean_loss,
                "loss_sandwich": self.sandwich / self.steps, "lr": lr, "images_per_s": ips,
            })
        run.metrics.update({"images_per_s": ips, "loss_largest": mean_loss})
        self._reset()


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    explicit: set[str] | None = None,
    show_progress: bool = True,
) -> TrainResult:
    """Train (or resume) a supernet; returns it with the path of its final checkpoint.

    ``explicit`` names the settings the user gave on the command line: on resume they must agree
    with the checkpoint's (a silently different schedule would not be the run that was killed).
    The run folder is locked while the run writes into it, and the caller's global torch RNG and
    thread count are as they were when it returns.
    """
    with ExitStack() as stack:
        if int(os.environ.get("RANK", "0")) == 0:
            check_output_folder(config.out)
            stack.enter_context(lock_folder(config.out, what="training run"))
            remove_stale_temp_files(config.out)
        stack.enter_context(torch_threads(torch.get_num_threads()))  # restores what --threads / DDP set
        stack.enter_context(torch.random.fork_rng(devices=[]))  # the initial weights' seed stays inside
        return _train(_setup(config, resume, explicit or set()), show_progress)


def _train(run: _Run, show_progress: bool) -> TrainResult:
    config, ddp, supernet = run.config, run.ddp, run.supernet
    if ddp.is_main:
        atomic_write_json(Path(config.out) / "config.json", {"config": asdict(config), "space": run.space.to_dict(), "data": run.data_record})
        _truncate_metrics(run.metrics_path, run.step)
    if run.finished:
        if ddp.is_main:
            console.print(f"{run.checkpoint_path} is already finished ({run.step} steps); nothing to do")
    elif run.total_steps == 0:
        _finish(run)  # the initialised supernet first: validating a large space can take many minutes
        if not config.skip_validation:
            run.validate()
            run.save(finished=True)
    else:
        _loop(run, show_progress)
        _finish(run)
    ddp.barrier()
    return TrainResult(supernet.eval(), run.space, run.checkpoint_path, run.metrics)


def _loop(run: _Run, show_progress: bool) -> None:
    """The training steps from ``run.step`` to the end, with periodic validation and checkpoints."""
    config, ddp, supernet = run.config, run.ddp, run.supernet
    loss_module = SandwichLoss(supernet, config)
    model: nn.Module = loss_module
    if config.compile:
        supernet.compile_blocks()
    layout = torch.channels_last if config.channels_last else torch.contiguous_format
    if ddp.world_size > 1:
        device_ids = [ddp.device.index] if ddp.device.type == "cuda" else None
        supernet.accumulate_in_slice(False)  # DDP all-reduces from each weight's own gradient hook
        model = nn.parallel.DistributedDataParallel(loss_module, device_ids=device_ids, find_unused_parameters=True)
    eval_every = config.eval_every or run.steps_per_epoch
    progress = progress_bar("loss {task.fields[loss]:.3f}  lr {task.fields[lr]:.2e}  {task.fields[ips]:.0f} img/s",
                            show=show_progress and ddp.is_main)
    supernet.train()
    with progress:
        task = progress.add_task("supernet", total=run.total_steps, completed=run.step, loss=float("nan"), lr=0.0, ips=0.0,
                                 log_every=run.steps_per_epoch)
        meter = _Meter(run, progress, task)
        for images, labels in run.batches():
            images = images.to(ddp.device, non_blocking=True, memory_format=layout)
            labels = labels.to(ddp.device, non_blocking=True)
            lr = run.lr()
            for group in run.optimizer.param_groups:
                group["lr"] = lr
            with torch.autocast(ddp.device.type, dtype=torch.bfloat16, enabled=ddp.device.type == "cuda"):
                teacher_logits = run.teacher(images) if run.teacher is not None else None
                loss, loss_largest = model(images, labels, run.specs(), teacher_logits, run.pools())
            run.check_finite_loss(loss)
            run.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            run.optimizer.step()
            run.step += 1
            meter.add(loss, loss_largest, lr)
            if not config.skip_validation and (run.step % eval_every == 0 or run.step == run.total_steps):
                with meter.pause():
                    supernet.eval()
                    run.validate()
                    supernet.train()
            if run.step % config.checkpoint_every == 0 and run.step != run.total_steps:
                with meter.pause():
                    run.save(finished=False)


def _finish(run: _Run) -> None:
    """Record the final weights' digest (the same on every rank) and write the finished checkpoint."""
    digest = params_digest(run.supernet)
    if not run.ddp.same_everywhere(digest):
        raise RuntimeError("DDP ranks ended with different supernet weights")
    run.metrics["params_sha256"] = digest
    run.save(finished=True)


def _append_metrics(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop log lines a killed run wrote after its last checkpoint (and any line it cut short)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("step", 0) <= step:
            kept.append(line)
    atomic_write_text(path, "".join(f"{line}\n" for line in kept))
