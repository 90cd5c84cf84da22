"""Export one architecture of a trained supernet as a deployable model, with checks and a model card.

>>> from nas.export import ExportConfig, export_subnet, load_export
>>> result = export_subnet(ExportConfig(supernet="runs/tiny", preset="L1", out="exports/l1"))  # doctest: +SKIP
>>> model = load_export("exports/l1")  # an EfficientFormer with the exported weights  # doctest: +SKIP

The steps: extract the static model from the supernet, re-estimate its BatchNorm statistics on
training batches, optionally fine-tune it (distilled from the supernet's largest subnet), evaluate
it, then write every requested format and check each against the PyTorch model. Everything is
written into a hidden folder next to ``out`` that is renamed to ``out`` only when all of it
succeeded, so an error or a killed run never leaves a half-written export behind.

Output folder: ``model.pt`` (timm-layout state dict), ``model.torchscript.pt``, ``model.onnx``,
``model.mlpackage``, ``arch.json`` (architecture, preprocessing, class names), ``export.json`` (the
full record: checks, metrics, latency, provenance) and ``model_card.md``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import secrets
import shutil
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from latency_lut import LatencyTable, load_lut, measure_model, shipped_lut
from supernet.checkpoint import CheckpointInfo, load_supernet
from supernet.data import load_data
from supernet.errors import EfnasError
from supernet.evaluate import calibration_batches, evaluate, recalibrate_bn
from supernet.io import console, cpu_model, provenance
from supernet.model import EfficientFormer, build_model, count_macs, count_params
from supernet.space import ArchSpec, SearchSpace, load_arch

from nas._export_finetune import FinetuneConfig, finetune
from nas._export_formats import (
    COREML_INPUTS,
    COREML_PRECISIONS,
    FILES,
    FORMATS,
    FormatReport,
    Preprocessing,
    Reference,
    check_formats,
    check_inputs,
    metadata_strings,
    write_coreml,
    write_onnx,
    write_pt,
    write_torchscript,
)
from nas._model_card import render_model_card
from nas.results import best_feasible_trial

__all__ = [
    "EXPORT_FORMAT",
    "FORMATS",
    "ExportConfig",
    "ExportResult",
    "ExportedFile",
    "export_subnet",
    "load_export",
    "resolve_arch",
]

EXPORT_FORMAT = "efficientformer-nas/export/1"
# Fields of an architecture that a space fixes: an arch file may leave them out.
_SPACE_FIXED = ("resolution", "num_classes", "attn_heads", "attn_key_dim")


@dataclass(frozen=True)
class ExportConfig:
    """One export. Exactly one of ``arch``, ``preset`` or ``study`` (with ``storage``) names the
    architecture; the defaults write every format after BN recalibration, without fine-tuning."""

    supernet: str  # checkpoint file or training run folder
    out: str  # export folder (must not exist unless force)
    arch: str | None = None  # architecture JSON file (bare spec, or best.json / arch.json with an "arch" field)
    preset: str | None = None  # preset name of the checkpoint's space (L1, L3, L7)
    study: str | None = None  # Optuna study name: its best feasible trial
    storage: str | None = None  # Optuna storage URL of the study (or an SQLite file path)
    formats: tuple[str, ...] = FORMATS
    force: bool = False  # replace an existing out folder
    data: str | None = None  # dataset; None: the one the supernet was trained on
    calib_batches: int = 8  # training batches for BN recalibration (0 keeps the supernet's statistics)
    batch_size: int = 128
    val_samples: int | None = None  # evaluate on a fixed seeded subset of this many validation images
    seed: int = 0  # calibration batches, fine-tune order, validation subset, check inputs
    finetune_epochs: int = 0
    finetune_lr: float = 5e-4
    finetune_steps: int | None = None  # cap on the fine-tune steps of each epoch
    coreml_precision: str = "fp16"
    coreml_input: str = "image"  # image (normalisation built in) or tensor
    luts: tuple[str, ...] = ()  # latency tables to predict with; none: the shipped CPU table of the space
    latency_rounds: int = 10  # rounds of the onnxruntime measurement (0: do not measure)
    tolerance: float = 1e-4  # max |Δ| allowed between a written format and PyTorch (fp32)
    device: str = "cpu"  # cpu or cuda: where calibration, fine-tuning and evaluation run
    threads: int | None = None  # torch intra-op threads; None: torch's default

    def __post_init__(self) -> None:
        object.__setattr__(self, "formats", tuple(self.formats))
        object.__setattr__(self, "luts", tuple(str(p) for p in self.luts))
        given = [name for name in ("arch", "preset", "study") if getattr(self, name)]
        if len(given) != 1:
            raise EfnasError(
                "give exactly one of --arch FILE, --preset NAME or --study NAME --storage URL"
                + (f" (got {', '.join('--' + g for g in given)})" if given else "")
            )
        if bool(self.study) != bool(self.storage):
            raise EfnasError("--study and --storage go together: the study's name and the Optuna storage URL holding it")
        for name in ("batch_size", "latency_rounds", "calib_batches", "seed"):
            lowest = 1 if name == "batch_size" else 0
            if getattr(self, name) < lowest:
                raise EfnasError(f"--{name.replace('_', '-')} must be at least {lowest}, got {getattr(self, name)}")
        if self.val_samples is not None and self.val_samples < 1:
            raise EfnasError(f"--val-samples must be at least 1, got {self.val_samples}")
        if self.coreml_precision not in COREML_PRECISIONS:
            raise EfnasError(f"--coreml-precision must be one of {', '.join(COREML_PRECISIONS)}, got {self.coreml_precision!r}")
        if self.coreml_input not in COREML_INPUTS:
            raise EfnasError(f"--coreml-input must be one of {', '.join(COREML_INPUTS)}, got {self.coreml_input!r}")
        if not self.tolerance > 0:
            raise EfnasError(f"--tolerance must be positive, got {self.tolerance}")
        if self.device not in ("cpu", "cuda"):
            raise EfnasError(f"--device must be cpu or cuda, got {self.device!r}")
        if self.threads is not None and self.threads < 1:
            raise EfnasError(f"--threads must be at least 1, got {self.threads}")
        self.finetune_config()  # validates the fine-tune settings

    def finetune_config(self) -> FinetuneConfig:
        return FinetuneConfig(
            epochs=self.finetune_epochs, lr=self.finetune_lr, steps_per_epoch=self.finetune_steps, batch_size=self.batch_size
        )


@dataclass(frozen=True)
class ExportedFile:
    """One entry of the export folder: its name, size in bytes and what was checked."""

    name: str
    size: int
    check: str


@dataclass(frozen=True)
class ExportResult:
    """Where the export went and its record (the contents of ``export.json``)."""

    out: Path
    spec: ArchSpec
    files: tuple[ExportedFile, ...]
    record: dict[str, Any]

    @property
    def val_top1(self) -> float:
        return self.record["metrics"]["val_top1"]

    @property
    def seconds(self) -> float:
        return self.record["seconds"]["total"]


# -- choosing the architecture -----------------------------------------------------------------


def _read_arch_file(path: str, space: SearchSpace) -> ArchSpec:
    spec = load_arch(path)  # one-line errors for a missing, unreadable or malformed file
    data = json.loads(Path(path).read_text())
    given = data["arch"] if isinstance(data, dict) and "arch" in data else data
    # A hand-written spec may leave out what the space fixes (e.g. 37 classes of the digits task).
    missing = {name: getattr(space, name) for name in _SPACE_FIXED if name not in given}
    return dataclasses.replace(spec, **missing) if missing else spec


def resolve_arch(
    space: SearchSpace,
    *,
    arch: str | None = None,
    preset: str | None = None,
    study: str | None = None,
    storage: str | None = None,
) -> tuple[ArchSpec, dict[str, Any]]:
    """The architecture to export, checked against ``space``, and where it came from (a dict with
    ``kind`` = ``file``, ``preset`` or ``study``)."""
    if preset:
        spec, source = space.preset(preset), {"kind": "preset", "name": preset}
    elif arch:
        spec, source = _read_arch_file(arch, space), {"kind": "file", "path": arch}
    elif study and storage:
        try:
            spec, info = best_feasible_trial(storage, study)
        except EfnasError:
            raise
        except Exception as exc:  # noqa: BLE001 - storage backends (SQLAlchemy, drivers) fail in their own ways
            reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
            raise EfnasError(f"cannot read study '{study}' from storage {storage}: {reason}") from None
        source = {"kind": "study", **{key: info[key] for key in ("study", "storage", "trial", "accuracy", "latency_ms")}}
    else:
        raise EfnasError("give exactly one of --arch FILE, --preset NAME or --study NAME --storage URL")
    problems = space.problems(spec)
    if problems:
        where = {"file": f"architecture in {arch}", "preset": f"preset {preset}", "study": f"best trial of study '{study}'"}
        raise EfnasError(
            f"{where[source['kind']]} is outside the supernet's space '{space.name}': {'; '.join(problems)}"
        )
    return spec, source


# -- the output folder -------------------------------------------------------------------------


def _occupied(out: Path) -> bool:
    return out.is_symlink() or out.is_file() or (out.is_dir() and any(out.iterdir()))


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise EfnasError(f"--out {out} is a file; give a folder path")
    if _occupied(out) and not force:
        raise EfnasError(f"--out {out} already exists; pass --force to replace it, or choose another folder")


def _side_folder(out: Path, kind: str) -> Path:
    """A hidden sibling of ``out`` owned by this process: ``.NAME.KIND-PID-RANDOM``."""
    return out.with_name(f".{out.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")


def _remove_stale(out: Path) -> None:
    """Delete side folders of ``out`` left by killed exports (their process is gone)."""
    for kind in ("partial", "old"):
        for folder in out.parent.glob(f".{out.name}.{kind}-*"):
            try:
                os.kill(int(folder.name.rsplit("-", 2)[1]), 0)
            except ProcessLookupError:
                shutil.rmtree(folder, ignore_errors=True)
            except (ValueError, OSError):
                continue


@contextmanager
def _staging(out: Path, force: bool) -> Iterator[Path]:
    """A hidden folder next to ``out``; renamed to ``out`` if the block succeeds, deleted if not
    (with any parent folders this created)."""
    out = out.absolute()
    created = []
    ancestor = out.parent
    while not ancestor.exists():
        created.append(ancestor)
        ancestor = ancestor.parent
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(out)
        staging = _side_folder(out, "partial")
        staging.mkdir()
    except OSError as exc:
        _remove_created(created)
        raise EfnasError(f"cannot write the export to {out}: {exc.strerror or exc} ({exc.filename or out.parent})") from None
    try:
        yield staging
        _check_out(out, force)
        if _occupied(out):  # --force: swap the old export out, the new one in, then delete the old one
            old = _side_folder(out, "old")
            os.replace(out, old)
            os.replace(staging, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            if out.is_dir():
                out.rmdir()  # an empty folder the user made for the export
            os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_created(created)
        raise


def _remove_created(folders: list[Path]) -> None:
    for folder in folders:  # deepest first
        try:
            folder.rmdir()
        except OSError:
            return


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _path_size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# -- data passes with progress -----------------------------------------------------------------


def _progress(show: bool) -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not show,
    )


def _counted(batches: Iterable[Any], progress: Progress, description: str, total: int) -> Iterator[Any]:
    task = progress.add_task(description, total=total)
    for batch in batches:
        yield batch
        progress.advance(task)


def _validation_subset(num_val: int, samples: int | None, seed: int) -> torch.Tensor | None:
    """Sorted positions of the fixed validation subset, or None for the whole set."""
    if samples is None or samples >= num_val:
        return None
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(num_val, generator=generator)[:samples].sort().values


def _val_batches(data: Any, batch_size: int, keep: torch.Tensor | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The validation set (or the subset at positions ``keep``) in batches of ``batch_size``."""
    if keep is None:
        yield from data.val_batches(batch_size)
        return
    wanted = torch.zeros(data.num_val, dtype=torch.bool)
    wanted[keep] = True
    images: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    held = 0
    start = 0
    for batch_images, batch_labels in data.val_batches(batch_size):
        mask = wanted[start : start + len(batch_labels)]
        start += len(batch_labels)
        if mask.any():
            images.append(batch_images[mask])
            labels.append(batch_labels[mask])
            held += int(mask.sum())
        while held >= batch_size:
            all_images, all_labels = torch.cat(images), torch.cat(labels)
            yield all_images[:batch_size], all_labels[:batch_size]
            images, labels = [all_images[batch_size:]], [all_labels[batch_size:]]
            held -= batch_size
    if held:
        yield torch.cat(images), torch.cat(labels)


# -- latency -----------------------------------------------------------------------------------


def _load_luts(config: ExportConfig, space: SearchSpace, spec: ArchSpec) -> tuple[list[LatencyTable], bool]:
    """The tables to predict with, and whether they are the default (shipped) ones."""
    if config.luts:
        luts = [load_lut(path) for path in config.luts]
        for lut in luts:
            lut.check_space(space)
            lut.predict_ms(spec)  # a table the user named must price this architecture: fail before any work
        return luts, False
    shipped = shipped_lut(space)
    return ([load_lut(shipped)] if shipped else []), True


def _predictions(luts: list[LatencyTable], spec: ArchSpec) -> list[dict[str, Any]]:
    rows = []
    for lut in luts:
        row = {
            "path": str(lut.path),
            "describe": lut.describe(),
            "device": lut.meta["device"],
            "backend": lut.backend,
            "threads": lut.meta["threads"],
            "statistic": lut.statistic,
            "calibrated": lut.calibration is not None,
        }
        try:
            row["predicted_ms"] = lut.predict_ms(spec)
        except EfnasError as exc:  # only a shipped table gets here (given ones were checked up front)
            row.update(predicted_ms=None, note=str(exc))
        rows.append(row)
    return rows


def _measure(model: EfficientFormer, rounds: int, seed: int, predictions: list[dict[str, Any]]) -> dict[str, Any]:
    if rounds == 0:
        return {"measured": None, "predicted": predictions, "cpu_comparison": None}
    timing = measure_model(model, "onnxruntime", 1, rounds=rounds, runs=3, seed=seed)
    device = cpu_model()
    measured = {"device": device, "backend": "onnxruntime", "threads": 1, "clock": "thread-cpu", **timing.to_dict()}
    comparison = None
    for row in predictions:
        if row["backend"] == "onnxruntime" and row["threads"] == 1 and row.get("predicted_ms"):
            value = timing.value(row["statistic"])
            comparison = {
                "table": row["path"],
                "statistic": row["statistic"],
                "measured_ms": value,
                "predicted_ms": row["predicted_ms"],
                "ratio": value / row["predicted_ms"],
                "table_device": row["device"],
                "same_device": row["device"] == device,
            }
            break
    return {"measured": measured, "predicted": predictions, "cpu_comparison": comparison}


# -- the export --------------------------------------------------------------------------------


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _load_data(config: ExportConfig, info: CheckpointInfo, spec: ArchSpec) -> tuple[Any, str, int]:
    name = config.data or info.config.get("data")
    if not name:
        raise EfnasError(f"checkpoint {info.path} does not record its dataset; give --data")
    split_seed = int(info.config.get("seed", 0))  # the split the supernet was trained and validated on
    data = load_data(name, spec.resolution, seed=split_seed)
    if data.num_classes != spec.num_classes:
        raise EfnasError(f"dataset '{name}' has {data.num_classes} classes but the supernet predicts {spec.num_classes}")
    if (config.calib_batches or config.finetune_epochs) and data.num_train_batches(config.batch_size) == 0:
        raise EfnasError(
            f"dataset '{name}' has {data.num_train} training images, not one full batch of {config.batch_size}; "
            "lower --batch-size (or use --calib-batches 0 without fine-tuning)"
        )
    return data, name, split_seed


def _timed(seconds: dict[str, float], key: str, start: float) -> float:
    now = time.perf_counter()
    seconds[key] = round(now - start, 3)
    return now


def export_subnet(config: ExportConfig, *, show_progress: bool = True) -> ExportResult:
    """Run the export described by ``config``; returns where it went and its record.

    Every problem with the inputs (checkpoint, architecture, output folder, formats, tables,
    data) is a one-line :class:`EfnasError` raised before any expensive work; a written format
    that does not compute what PyTorch computes is one too, and nothing is left behind.
    """
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    formats = check_formats(config.formats)
    out = Path(config.out)
    _check_out(out, config.force)
    supernet, info = load_supernet(config.supernet)
    space = info.space
    spec, source = resolve_arch(space, arch=config.arch, preset=config.preset, study=config.study, storage=config.storage)
    luts, default_luts = _load_luts(config, space, spec)
    data, data_name, split_seed = _load_data(config, info, spec)
    if config.device == "cuda" and not torch.cuda.is_available():
        raise EfnasError("--device cuda asked for, but torch sees no CUDA device here")
    device = torch.device(config.device)
    tick = _timed(seconds, "load", started)

    with _torch_threads(config.threads), _staging(out, config.force) as staging, _progress(show_progress) as progress:
        # Extraction is exact: the static model computes what the supernet computes for spec.
        model = supernet.extract(spec).eval()
        reference_input = check_inputs(spec.resolution, config.seed)
        with torch.no_grad():
            extraction_delta = float((supernet(reference_input, spec) - model(reference_input)).abs().max())
        if not extraction_delta <= config.tolerance:
            raise EfnasError(f"the extracted model differs from the supernet by {extraction_delta:.3g}: the checkpoint is inconsistent")
        model.to(device)

        def recalibrate(target: torch.nn.Module, description: str) -> None:
            # The batches are a pure function of the seed: every recalibration sees the same images.
            if config.calib_batches:
                batches = calibration_batches(data, config.calib_batches, config.batch_size, config.seed)
                recalibrate_bn(target, _counted(batches, progress, description, config.calib_batches), device)

        recalibrate(model, "recalibrating BatchNorm")
        tick = _timed(seconds, "calibrate", tick)

        keep = _validation_subset(data.num_val, config.val_samples, config.seed)
        val_images = data.num_val if keep is None else len(keep)
        val_batch_count = math.ceil(val_images / config.batch_size)

        def validate(description: str) -> float:
            batches = _counted(_val_batches(data, config.batch_size, keep), progress, description, val_batch_count)
            return evaluate(model, batches, device)

        metrics: dict[str, Any] = {"val_top1_inherited": validate("evaluating (inherited weights)")}
        tick = _timed(seconds, "evaluate", tick)
        finetune_record = None
        if config.finetune_epochs:
            teacher = supernet.extract(space.largest()).to(device)
            recalibrate(teacher, "recalibrating the teacher (largest subnet)")
            report = finetune(model, teacher, data, config.finetune_config(), seed=config.seed, device=device, progress=progress)
            del teacher
            recalibrate(model, "recalibrating BatchNorm (fine-tuned)")
            finetune_record = report.to_dict()
            metrics["val_top1"] = validate("evaluating (fine-tuned)")
            tick = _timed(seconds, "finetune", tick)
        else:
            metrics["val_top1"] = metrics["val_top1_inherited"]
        del supernet
        model = model.cpu().eval()

        prep = Preprocessing(spec.resolution, tuple(data.mean), tuple(data.std), tuple(data.class_names))
        reference = Reference.of(model, spec.resolution, config.seed)
        metadata = metadata_strings(spec, prep)
        reports: dict[str, FormatReport] = {}
        task = progress.add_task("writing formats", total=len(formats))
        for name in formats:
            progress.update(task, description=f"writing {FILES[name]}")
            if name == "pt":
                reports[name] = write_pt(model, staging, reference, config.tolerance)
            elif name == "torchscript":
                reports[name] = write_torchscript(model, staging, reference, config.tolerance)
            elif name == "onnx":
                reports[name] = write_onnx(model, staging, reference, config.tolerance, metadata)
            else:
                reports[name] = write_coreml(
                    model, staging, prep, precision=config.coreml_precision, input_kind=config.coreml_input,
                    tolerance=config.tolerance, seed=config.seed, metadata=metadata,
                )
            tick = _timed(seconds, f"format_{name}", tick)
            progress.advance(task)

        task = progress.add_task("measuring latency (onnxruntime, 1 thread)", total=1, visible=bool(config.latency_rounds))
        latency = _measure(model, config.latency_rounds, config.seed, _predictions(luts, spec))
        progress.advance(task)
        latency["default_tables"] = default_luts
        tick = _timed(seconds, "latency", tick)

        arch_record = {
            "arch": spec.to_dict(),
            "label": spec.label(),
            "preprocessing": prep.to_dict(),
            "class_names": list(prep.class_names),
        }
        # Plain writes: the staging folder as a whole is what appears atomically.
        _write_json(staging / "arch.json", arch_record)
        files = [
            {"name": FILES[name], "format": name, "size": _path_size(staging / FILES[name]), "check": reports[name].summary}
            for name in formats
        ]
        files.append({"name": "arch.json", "format": None, "size": _path_size(staging / "arch.json"),
                      "check": "architecture, preprocessing and class names; read by supernet.load_arch"})
        seconds["total"] = round(time.perf_counter() - started, 3)
        record = {
            "format": EXPORT_FORMAT,
            "arch": spec.to_dict(),
            "label": spec.label(),
            "source": source,
            "params": count_params(spec),
            "macs": count_macs(spec),
            "supernet": {
                "path": str(Path(info.path).resolve()),
                "sha256": _sha256(info.path),
                "space": space.name,
                "fingerprint": space.fingerprint(),
                "step": info.step,
                "total_steps": info.total_steps,
                "finished": info.finished,
                "extraction_max_abs_diff": extraction_delta,
            },
            "data": {
                "name": data_name,
                "split_seed": split_seed,
                "num_train": data.num_train,
                "num_val": data.num_val,
                "validation": {"images": val_images, "of": data.num_val, "seed": config.seed},
            },
            "calibration": {
                "batches": min(config.calib_batches, data.num_train_batches(config.batch_size)),
                "batch_size": config.batch_size,
                "seed": config.seed,
            },
            "finetune": finetune_record,
            "metrics": metrics,
            "preprocessing": prep.to_dict(),
            "class_names": list(prep.class_names),
            "formats": {name: {"files": report.files, "checks": report.checks} for name, report in reports.items()},
            "files": files,
            "latency": latency,
            "config": dataclasses.asdict(config),
            "seconds": seconds,
            "provenance": provenance(("timm",)),
        }
        _write_json(staging / "export.json", record)
        (staging / "model_card.md").write_text(render_model_card(record))

    listed = [ExportedFile(item["name"], item["size"], item["check"]) for item in files]
    listed += [
        ExportedFile("model_card.md", _path_size(out / "model_card.md"), "human-readable summary of export.json"),
        ExportedFile("export.json", _path_size(out / "export.json"), "the full record: checks, metrics, latency, provenance"),
    ]
    return ExportResult(out, spec, tuple(listed), record)


def load_export(folder: str | Path) -> EfficientFormer:
    """The model of an export folder: ``build_model(arch.json)`` with ``model.pt`` loaded strictly."""
    folder = Path(folder)
    spec = load_arch(folder / "arch.json")
    path = folder / FILES["pt"]
    if not path.is_file():
        raise EfnasError(f"{folder} has no {FILES['pt']} (was it exported with --formats including pt?)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every reader error means the same thing to the user
        raise EfnasError(f"{path} is truncated or corrupt ({str(exc).splitlines()[0][:160]})") from None
    model = build_model(spec)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise EfnasError(f"{path} does not match {folder / 'arch.json'}: {str(exc).splitlines()[0][:160]}") from None
    return model.eval()
