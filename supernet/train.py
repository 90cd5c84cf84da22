"""Supernet training: the sandwich rule with in-place distillation, in one readable loop.

Each step trains, on the same batch, the largest subnet on the labels (label smoothing) and the
smallest plus ``num_random`` random subnets on the largest one's detached soft outputs (or on an
external teacher's). The random subnets are a pure function of ``(seed, step)``, so every DDP rank
draws the same ones without communicating and a resumed run draws what the killed one would have.

Run single-process (``efnas train ...``) or under ``torchrun --nproc-per-node N`` (DDP: gloo on
CPU, NCCL on GPU); only rank 0 writes files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import time
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn

from supernet.checkpoint import load_checkpoint, save_checkpoint
from supernet.elastic import Supernet, infer_spec
from supernet.errors import EfnasError
from supernet.evaluate import evaluate_spec
from supernet.io import atomic_write_json, atomic_write_text, console, provenance
from supernet.model import EfficientFormer, build_model
from supernet.optim import distillation_loss, param_groups, warmup_cosine
from supernet.space import ArchSpec, SearchSpace, load_space

__all__ = ["TrainConfig", "TrainResult", "load_static_checkpoint", "params_digest", "sandwich_specs", "train"]


@dataclass(frozen=True)
class TrainConfig:
    """One supernet training run. The defaults train the tiny space on the embedded task."""

    space: str = "tiny"  # built-in space name or a space file
    data: str = "digits-mosaic"  # embedded task name, or imagefolder:PATH
    out: str = "runs/supernet"  # run folder: supernet.pt, metrics.jsonl, config.json
    epochs: int = 10
    steps_per_epoch: int | None = None  # cap on steps per epoch, for quick trials
    batch_size: int = 128  # per process
    lr: float = 2e-3  # peak AdamW learning rate
    weight_decay: float = 0.05  # on conv/linear weights only
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1  # largest subnet's loss on the labels
    num_random: int = 2  # random subnets per step besides the largest and the smallest
    kd_temperature: float = 1.0
    teacher: str | None = None  # static EfficientFormer state dict distilled into every subnet
    init_from: str | None = None  # timm/our EfficientFormer state dict to warm-start the supernet
    seed: int = 0
    checkpoint_every: int = 100  # steps
    eval_every: int = 0  # steps between validations of the largest/smallest subnets; 0 = each epoch
    calib_batches: int = 8  # BatchNorm recalibration batches before each validation
    workers: int = 0  # data-loading processes (image folders)
    device: str = "auto"  # auto | cpu | cuda
    threads: int | None = None  # intra-op CPU threads; None: torch's default (all cores)

    def __post_init__(self) -> None:
        positive = ("epochs", "batch_size", "checkpoint_every", "calib_batches")
        for name in positive:
            if getattr(self, name) < (0 if name == "epochs" else 1):
                raise EfnasError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise EfnasError(f"--steps-per-epoch must be at least 1, got {self.steps_per_epoch}")
        for name in ("lr", "kd_temperature"):
            if getattr(self, name) <= 0:
                raise EfnasError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if not 0 <= self.label_smoothing < 1:
            raise EfnasError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.num_random < 0 or self.weight_decay < 0 or self.warmup_epochs < 0 or self.eval_every < 0:
            raise EfnasError("--num-random, --weight-decay, --warmup-epochs and --eval-every must not be negative")
        if self.threads is not None and self.threads < 1:
            raise EfnasError(f"--threads must be at least 1, got {self.threads}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise EfnasError(f"--device must be auto, cpu or cuda, got {self.device!r}")


# Settings that may change when a run is resumed without changing what it computes.
RESUMABLE_OVERRIDES = ("out", "workers", "device")


@dataclass
class TrainResult:
    supernet: Supernet
    space: SearchSpace
    checkpoint: Path
    metrics: dict[str, Any]


# -- pieces of the loop -------------------------------------------------------------------------


def sandwich_specs(space: SearchSpace, seed: int, step: int, num_random: int) -> list[ArchSpec]:
    """Largest, smallest and ``num_random`` random subnets for ``step``: a pure function of its inputs."""
    rng = random.Random(f"sandwich:{seed}:{step}")
    return [space.largest(), space.smallest(), *(space.sample(rng) for _ in range(num_random))]


class SandwichLoss(nn.Module):
    """The loss of one sandwich step, as one module so that DDP sees one forward per step."""

    def __init__(self, supernet: Supernet, label_smoothing: float, temperature: float) -> None:
        super().__init__()
        self.supernet = supernet
        self.label_smoothing = label_smoothing
        self.temperature = temperature

    def distill(self, logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
        return distillation_loss(logits, target_logits, self.temperature)

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor, specs: list[ArchSpec], teacher_logits: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        largest = self.supernet(images, specs[0])
        loss_largest = F.cross_entropy(largest.float(), labels, label_smoothing=self.label_smoothing)
        if teacher_logits is not None:
            loss_largest = (loss_largest + self.distill(largest, teacher_logits)) / 2
        target = teacher_logits if teacher_logits is not None else largest
        loss = loss_largest
        for spec in specs[1:]:
            loss = loss + self.distill(self.supernet(images, spec), target)
        return loss, loss_largest.detach()


def load_static_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """A static EfficientFormer state dict (timm's or ours; ``.pt``/``.pth`` or ``.safetensors``)."""
    path = Path(path)
    if not path.is_file():
        raise EfnasError(f"checkpoint {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except ImportError:
        raise EfnasError("reading .safetensors files needs the safetensors package (pip install safetensors)") from None
    except Exception as exc:  # noqa: BLE001 - every reader error means the same thing to the user
        raise EfnasError(f"checkpoint {path} is truncated or corrupt ({str(exc).splitlines()[0][:160]})") from None
    for wrapper in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict) and "stem.conv1.weight" not in state:
            state = state[wrapper]
    if not isinstance(state, dict) or "stem.conv1.weight" not in state:
        raise EfnasError(f"{path} is not an EfficientFormer state dict (no stem.conv1.weight)")
    return state


def _load_teacher(path: str, resolution: int, num_classes: int, space: SearchSpace) -> EfficientFormer:
    state = load_static_checkpoint(path)
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


class _Distributed:
    """Rank and world size from torchrun's environment; a no-op context in a single process."""

    def __init__(self, device: str, threads: int | None) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        if device == "cuda" and not torch.cuda.is_available():
            raise EfnasError("--device cuda asked for, but no CUDA device is available")
        self.device = torch.device(f"cuda:{self.local_rank}" if use_cuda else "cpu")
        if self.world_size > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if use_cuda else "gloo")
        if use_cuda:
            torch.cuda.set_device(self.device)
        elif self.world_size > 1 and threads is None:
            # Ranks on one machine share its cores; oversubscribing them only adds contention.
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", self.world_size))))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def same_everywhere(self, value: str) -> bool:
        if self.world_size == 1:
            return True
        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return len(set(values)) == 1


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
    """
    from supernet.data import load_data

    run_dir = Path(config.out)
    checkpoint_path = run_dir / "supernet.pt"
    stored = None
    if resume:
        if not checkpoint_path.exists():
            raise EfnasError(f"nothing to resume: {checkpoint_path} does not exist")
        stored = load_checkpoint(checkpoint_path)
        config = _check_resume_config(stored["config"], config, explicit or set())
    elif checkpoint_path.exists():
        raise EfnasError(f"{run_dir} already holds a supernet checkpoint; pass --resume to continue it, or choose another --out")

    if config.threads is not None:
        torch.set_num_threads(config.threads)
    ddp = _Distributed(config.device, config.threads)
    device = ddp.device
    space = load_space(config.space)
    data = load_data(config.data, space.resolution, seed=config.seed, workers=config.workers)
    if data.num_classes != space.num_classes:
        space = space.with_num_classes(data.num_classes)
    if stored is not None and stored["fingerprint"] != space.fingerprint():
        raise EfnasError(f"checkpoint {checkpoint_path} was trained on another space (fingerprint {stored['fingerprint']}, now {space.fingerprint()})")

    torch.manual_seed(config.seed)  # the initial weights; nothing later draws from the global RNG
    supernet = Supernet(space)
    notes = []
    if config.init_from and stored is None:
        state = load_static_checkpoint(config.init_from)
        spec = infer_spec(state, space.with_num_classes(int(state["head.weight"].shape[0])))
        spec = dataclasses.replace(spec, num_classes=space.num_classes)
        skipped = supernet.load_static_state_dict(state, spec)
        notes.append(f"warm start from {config.init_from} at {spec.label()}" + (f" (skipped {', '.join(skipped)}: other class count)" if skipped else ""))
    supernet.to(device)
    teacher = _load_teacher(config.teacher, space.resolution, space.num_classes, space).to(device) if config.teacher else None

    optimizer = torch.optim.AdamW(param_groups(supernet, config.weight_decay), lr=config.lr, betas=(0.9, 0.999))
    steps_per_epoch = data.num_train_batches(config.batch_size, ddp.world_size)
    if config.steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, config.steps_per_epoch)
    if steps_per_epoch < 1:
        raise EfnasError(f"the training set is too small for batch size {config.batch_size} on {ddp.world_size} process(es)")
    total_steps = config.epochs * steps_per_epoch
    warmup_steps = round(config.warmup_epochs * steps_per_epoch)
    step = 0
    metrics: dict[str, Any] = {}
    if stored is not None:
        supernet.load_state_dict(stored["model"])
        optimizer.load_state_dict(stored["optimizer"])
        torch.set_rng_state(stored["rng"]["torch"])
        step = int(stored["step"])
        metrics = dict(stored.get("metrics", {}))
        if stored["total_steps"] != total_steps:
            raise EfnasError(f"checkpoint expects {stored['total_steps']} steps but this run gives {total_steps}: resume with the same "
                "data, --epochs, --steps-per-epoch, --batch-size and number of processes")

    loss_module = SandwichLoss(supernet, config.label_smoothing, config.kd_temperature)
    model: nn.Module = loss_module
    if ddp.world_size > 1:
        model = nn.parallel.DistributedDataParallel(
            loss_module, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )
    data_record = {
        "name": data.name,
        "num_classes": data.num_classes,
        "class_names": list(data.class_names),
        "resolution": data.resolution,
        "mean": list(data.mean),
        "std": list(data.std),
        "num_train": data.num_train,
        "num_val": data.num_val,
    }
    metrics_path = run_dir / "metrics.jsonl"
    if ddp.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / "config.json", {"config": asdict(config), "space": space.to_dict(), "data": data_record})
        _truncate_metrics(metrics_path, step)
        for note in notes:
            console.print(note)

    def save(finished: bool) -> None:
        if not ddp.is_main:
            return
        save_checkpoint(
            checkpoint_path,
            {
                "model": supernet.state_dict(),
                "optimizer": optimizer.state_dict(),
                "schedule": {"kind": "warmup-cosine", "warmup_steps": warmup_steps, "peak_lr": config.lr},
                "step": step,
                "total_steps": total_steps,
                "finished": finished,
                "rng": {"torch": torch.get_rng_state()},
                "space": space.to_dict(),
                "fingerprint": space.fingerprint(),
                "config": asdict(config),
                "data": data_record,
                "metrics": metrics,
                "provenance": provenance(),
            },
        )

    def validate() -> None:
        if ddp.is_main:
            for name, spec in (("largest", space.largest()), ("smallest", space.smallest())):
                top1 = evaluate_spec(
                    supernet, spec, data, calib_batches=config.calib_batches, batch_size=config.batch_size, seed=config.seed, device=device
                )
                metrics[f"val_top1_{name}"] = top1
            metrics["val_step"] = step
            _append_metrics(metrics_path, {"step": step, "epoch": step / steps_per_epoch, **{k: metrics[k] for k in ("val_top1_largest", "val_top1_smallest")}})
        ddp.barrier()

    if stored is not None and stored.get("finished"):
        if ddp.is_main:
            console.print(f"{checkpoint_path} is already finished ({step} steps); nothing to do")
        return TrainResult(supernet.eval(), space, checkpoint_path, metrics)

    eval_every = config.eval_every or steps_per_epoch
    use_autocast = device.type == "cuda"
    progress = Progress(
        TextColumn("[bold]supernet"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f}  lr {task.fields[lr]:.2e}  {task.fields[ips]:.0f} img/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=not (show_progress and ddp.is_main),
    )
    images_per_step = config.batch_size * ddp.world_size
    supernet.train()
    with progress:
        task = progress.add_task("train", total=total_steps, completed=step, loss=float("nan"), lr=0.0, ips=0.0)
        window_start, window_steps, window_loss, window_sandwich = time.perf_counter(), 0, 0.0, 0.0
        window_paused = 0.0  # seconds of validation and checkpointing inside the window: not training throughput
        for epoch in range(step // steps_per_epoch, config.epochs):
            start_batch = step - epoch * steps_per_epoch
            batches = islice(
                data.train_batches(epoch, config.batch_size, seed=config.seed, rank=ddp.rank, world_size=ddp.world_size, start_batch=start_batch),
                steps_per_epoch - start_batch,
            )
            for images, labels in batches:
                images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
                lr = warmup_cosine(step, total_steps, warmup_steps, config.lr)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                specs = sandwich_specs(space, config.seed, step, config.num_random)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_autocast):
                    teacher_logits = teacher(images) if teacher is not None else None
                    loss, loss_largest = model(images, labels, specs, teacher_logits)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                window_steps += 1
                window_loss += float(loss_largest)
                window_sandwich += float(loss.detach())
                if step % 10 == 0 or step == total_steps:
                    elapsed = time.perf_counter() - window_start - window_paused
                    ips = window_steps * images_per_step / max(elapsed, 1e-9)
                    mean_loss = window_loss / window_steps
                    progress.update(task, completed=step, loss=mean_loss, lr=lr, ips=ips)
                    if ddp.is_main:
                        record = {
                            "step": step,
                            "epoch": step / steps_per_epoch,
                            "loss_largest": mean_loss,
                            "loss_sandwich": window_sandwich / window_steps,
                            "lr": lr,
                            "images_per_s": ips,
                        }
                        _append_metrics(metrics_path, record)
                    metrics.update({"images_per_s": ips, "loss_largest": mean_loss})
                    window_start, window_steps, window_loss, window_sandwich = time.perf_counter(), 0, 0.0, 0.0
                    window_paused = 0.0
                if step % eval_every == 0 or step == total_steps:
                    paused = time.perf_counter()
                    supernet.eval()
                    validate()
                    supernet.train()
                    window_paused += time.perf_counter() - paused
                if step % config.checkpoint_every == 0 and step != total_steps:
                    paused = time.perf_counter()
                    save(finished=False)
                    window_paused += time.perf_counter() - paused
    if total_steps == 0:
        validate()
    digest = params_digest(supernet)
    if not ddp.same_everywhere(digest):
        raise RuntimeError("DDP ranks ended with different supernet weights")
    metrics["params_sha256"] = digest
    save(finished=True)
    ddp.barrier()
    return TrainResult(supernet.eval(), space, checkpoint_path, metrics)


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
