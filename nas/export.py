"""Export one architecture of a trained supernet as a deployable model, with checks and a model card.

>>> from nas.export import ExportConfig, export_subnet, load_export
>>> result = export_subnet(ExportConfig(supernet="runs/tiny", preset="L1", out="exports/l1"))  # doctest: +SKIP
>>> model = load_export("exports/l1")  # an EfficientFormer with the exported weights  # doctest: +SKIP

The steps: extract the static model from the supernet, re-estimate its BatchNorm statistics on
training batches, optionally fine-tune it (distilled from the supernet's largest subnet), evaluate
it, then write every requested format and check each against the PyTorch model. Everything is
written into a hidden folder next to ``out`` that is renamed to ``out`` only when all of it
succeeded, so an error or a killed run never leaves a half-written export behind.

Output folder: ``model.pt`` (timm-layout state dict), ``model.safetensors`` with a hub-style
``config.json`` (``timm.create_model("local-dir:FOLDER", pretrained=True)`` where timm can build the
shape), ``model.torchscript.pt``, ``model.onnx``, ``model.mlpackage``, ``arch.json`` (architecture,
preprocessing in timm's pretrained_cfg form, class names), ``export.json`` (the full record: checks,
metrics, latency, provenance) and ``model_card.md`` (with Hugging Face front matter).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.progress import Progress

from latency_lut import LatencyTable, load_lut, measure_model, shipped_lut
from supernet.checkpoint import CheckpointInfo, load_supernet
from supernet.elastic import Supernet
from supernet.errors import EfnasError
from supernet.evaluate import EvalConfig, Scorer, task_data
from supernet.io import cpu_model, progress_bar, provenance, torch_threads
from supernet.model import EfficientFormer, build_model, count_macs, count_params
from supernet.space import ArchSpec, SearchSpace, load_arch

from nas._export_finetune import FinetuneConfig, finetune, finetune_steps
from nas._export_formats import (
    COREML_INPUTS,
    COREML_PRECISIONS,
    FILES,
    FORMATS,
    WRITERS,
    FormatReport,
    Preprocessing,
    Reference,
    WriteSettings,
    check_formats,
    check_inputs,
    load_strictly,
    metadata_strings,
    timm_shape,
)
from nas._export_staging import check_out, path_size, staging
from nas._model_card import render_model_card
from nas._storage import safe_url
from nas.results import best_feasible_trial

__all__ = [
    "EXPORT_FORMAT",
    "FORMATS",
    "ExportConfig",
    "ExportRecord",
    "ExportResult",
    "ExportedFile",
    "export_subnet",
    "load_export",
    "resolve_arch",
]

EXPORT_FORMAT = "efficientformer-nas/export/1"
# Fields of an architecture that a space fixes: an arch file may leave them out.
_SPACE_FIXED = ("resolution", "num_classes", "attn_heads", "attn_key_dim")
# Hugging Face's license identifiers: apache-2.0, mit, cc-by-4.0, other, ...
_LICENSE = re.compile(r"[a-z0-9][a-z0-9.+-]{0,63}")


@dataclass(frozen=True, kw_only=True)
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
    val_subset: int | None = None  # evaluate on a fixed seeded subset of this many validation images
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
    author: str | None = None  # on the model card
    license: str | None = None  # Hugging Face license id (apache-2.0, mit, other, ...): card front matter and config.json

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
        if self.latency_rounds < 0:
            raise EfnasError(f"--latency-rounds must be at least 0, got {self.latency_rounds}")
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
        if self.license is not None and not _LICENSE.fullmatch(self.license):
            raise EfnasError(f"--license must be a Hugging Face license id such as apache-2.0, mit or other, got {self.license!r}")
        if self.author is not None and (not self.author.strip() or not self.author.isprintable() or len(self.author) > 200):
            raise EfnasError(f"--author must be one printable line of at most 200 characters, got {self.author!r}")
        self.eval_config()  # validates the scoring settings
        self.finetune_config()  # validates the fine-tune settings

    def eval_config(self) -> EvalConfig:
        """How the export is scored: the search's scorer with this export's settings."""
        return EvalConfig(calib_batches=self.calib_batches, batch_size=self.batch_size, val_subset=self.val_subset, seed=self.seed)

    def finetune_config(self) -> FinetuneConfig:
        return FinetuneConfig(
            epochs=self.finetune_epochs, lr=self.finetune_lr, steps_per_epoch=self.finetune_steps, batch_size=self.batch_size
        )


@dataclass(frozen=True)
class ExportedFile:
    """One entry of the export folder: its name, size in bytes, what was checked, and the format
    it holds (None for the files that describe the export)."""

    name: str
    size: int
    check: str
    format: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "format": self.format, "size": self.size, "check": self.check}


@dataclass(frozen=True)
class ExportRecord:
    """Everything an export knows about itself; :meth:`to_dict` is ``export.json``."""

    spec: ArchSpec
    source: dict[str, Any]  # where the architecture came from (see resolve_arch)
    supernet: dict[str, Any]  # the checkpoint: path, sha256, space, training progress, extraction check
    data: dict[str, Any]  # the dataset, its split and the validation images scored
    calibration: dict[str, Any]
    finetune: dict[str, Any] | None
    metrics: dict[str, float]  # val_top1_inherited, val_top1
    prep: Preprocessing
    formats: dict[str, FormatReport]
    files: tuple[ExportedFile, ...]  # the written formats and arch.json
    latency: dict[str, Any]
    config: ExportConfig
    seconds: dict[str, float]
    provenance: dict[str, Any]
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        config = dataclasses.asdict(self.config)
        if config["storage"]:
            config["storage"] = safe_url(config["storage"])
        return {
            "format": EXPORT_FORMAT,
            "arch": self.spec.to_dict(),
            "label": self.spec.label(),
            "source": self.source,
            "params": count_params(self.spec),
            "macs": count_macs(self.spec),
            "supernet": self.supernet,
            "data": self.data,
            "calibration": self.calibration,
            "finetune": self.finetune,
            "metrics": self.metrics,
            "preprocessing": self.prep.to_dict(),
            "pretrained_cfg": self.prep.pretrained_cfg(),
            "class_names": list(self.prep.class_names),
            "timm": timm_shape(self.spec).to_dict(),
            "formats": {name: {"files": report.files, "checks": report.checks} for name, report in self.formats.items()},
            "files": [item.to_dict() for item in self.files],
            "latency": self.latency,
            "config": config,
            "seconds": self.seconds,
            "provenance": self.provenance,
            "warnings": list(self.warnings),
        }


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


def _best_trial(study: str, storage: str) -> tuple[ArchSpec, dict[str, Any]]:
    try:
        spec, info = best_feasible_trial(storage, study)
    except EfnasError as exc:
        raise EfnasError(_masked(str(exc), storage)) from None
    except Exception as exc:  # noqa: BLE001 - storage backends (SQLAlchemy, drivers) fail in their own ways
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise EfnasError(_masked(f"cannot read study '{study}' from storage {safe_url(storage)}: {reason}", storage)) from None
    source = {"kind": "study", **{key: info[key] for key in ("study", "trial", "accuracy", "latency_ms")}}
    source["storage"] = safe_url(info["storage"])
    # The tables the search priced with (each budget's): the card's latency comes from them.
    tables = [{key: budget.get(key) for key in ("lut", "lut_path", "lut_digest", "limit_ms")}
              for budget in info.get("search", {}).get("budgets", [])]
    return spec, source | ({"tables": tables} if tables else {})


def _masked(text: str, storage: str) -> str:
    """``text`` with the storage URL's password masked wherever the URL appears in it."""
    return text.replace(str(storage), safe_url(storage)) if "://" in str(storage) else text


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
        spec, source = _best_trial(study, storage)
    else:
        raise EfnasError("give exactly one of --arch FILE, --preset NAME or --study NAME --storage URL")
    problems = space.problems(spec)
    if problems:
        where = {"file": f"architecture in {arch}", "preset": f"preset {preset}", "study": f"best trial of study '{study}'"}
        raise EfnasError(
            f"{where[source['kind']]} is outside the supernet's space '{space.name}': {'; '.join(problems)}"
        )
    return spec, source


# -- latency -----------------------------------------------------------------------------------


def _load_luts(config: ExportConfig, space: SearchSpace, spec: ArchSpec, source: dict[str, Any]) -> tuple[list[LatencyTable], str, list[str]]:
    """The tables to predict with, where they come from (``given``, ``study``: the tables the
    search priced with, or ``shipped``), and notes on study tables that could not be used."""
    if config.luts:
        luts = [load_lut(path) for path in config.luts]
        for lut in luts:
            lut.check_space(space)
            lut.predict_ms(spec)  # a table the user named must price this architecture: fail before any work
        return luts, "given", []
    luts, notes = _study_luts(source.get("tables", []), space)
    if luts:
        return luts, "study", notes
    shipped = shipped_lut(space)
    return ([load_lut(shipped)] if shipped else []), "shipped", notes


def _study_luts(tables: list[dict[str, Any]], space: SearchSpace) -> tuple[list[LatencyTable], list[str]]:
    """The search's own tables, when their files are here and still hold what the search priced with."""
    luts, notes = [], []
    for table in tables:
        path = Path(str(table.get("lut_path")))
        try:
            lut = load_lut(path)
            lut.check_space(space)
        except EfnasError as exc:
            notes.append(f"the search's table '{table.get('lut')}' cannot be used here ({exc}); pass it with --lut")
            continue
        if table.get("lut_digest") and lut.digest() != table["lut_digest"]:
            notes.append(f"the search's table '{table.get('lut')}' at {path} changed since the search (digest "
                         f"{lut.digest()}, searched with {table['lut_digest']}): not used")
            continue
        luts.append(lut)
    return luts, notes


def _shipped_note(lut: LatencyTable, spec: ArchSpec, run: Path) -> str:
    """How to price ``spec`` when the shipped table lacks entries: measure them in a copy in the
    run folder (latency_lut's fill command never writes into the installed package)."""
    local = run / Path(str(lut.path)).name
    missing = lut.missing(spec)
    return (
        f"the shipped table {Path(str(lut.path)).name} has no entry for {', '.join(missing[:3])}"
        f"{f' and {len(missing) - 3} more' if len(missing) > 3 else ''}; measure them in a copy in the run folder: "
        f"{lut.fill_command(spec, copy_to=local)}, then export with --lut {shlex.quote(str(local))}"
    )


def _predictions(luts: list[LatencyTable], spec: ArchSpec, run: Path, origin: str) -> list[dict[str, Any]]:
    rows = []
    for lut in luts:
        row = {
            "path": str(lut.path),
            "describe": lut.describe(),
            "device": lut.meta["device"],
            "backend": lut.backend,
            "threads": lut.meta["threads"],
            "batch": lut.meta.get("batch", 1),
            "statistic": lut.statistic,
            "calibrated": lut.calibration is not None,
        }
        try:
            row["predicted_ms"] = lut.predict_ms(spec)
        except EfnasError as exc:  # given tables were checked up front
            row.update(predicted_ms=None, note=_shipped_note(lut, spec, run) if origin == "shipped" else str(exc))
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
        # The measurement is one image on one thread: only a table of the same kind compares with it.
        if row["backend"] == "onnxruntime" and row["threads"] == 1 and row["batch"] == 1 and row.get("predicted_ms"):
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


@dataclass
class _Job:
    """What the checks before any expensive work found: every input of the export."""

    config: ExportConfig
    info: CheckpointInfo
    spec: ArchSpec
    source: dict[str, Any]
    formats: tuple[str, ...]
    luts: list[LatencyTable]
    lut_origin: str  # given, study or shipped
    lut_notes: list[str]
    scorer: Scorer
    device: torch.device
    seconds: dict[str, float]
    started: float
    tick: float = 0.0
    warnings: list[str] = dataclasses.field(default_factory=list)

    def lap(self, key: str) -> None:
        """Record the seconds since the previous lap under ``key``."""
        now = time.perf_counter()
        self.seconds[key] = round(now - self.tick, 3)
        self.tick = now


def _prepare(config: ExportConfig) -> tuple[Supernet, _Job]:
    """Every check that can fail before any expensive work: formats, folder, checkpoint,
    architecture, tables, data and device, each a one-line error."""
    started = time.perf_counter()
    check_out(Path(config.out), config.force)
    formats = check_formats(config.formats)
    supernet, info = load_supernet(config.supernet)
    warnings = _unfinished_warning(info)
    spec, source = resolve_arch(info.space, arch=config.arch, preset=config.preset, study=config.study, storage=config.storage)
    luts, lut_origin, lut_notes = _load_luts(config, info.space, spec, source)
    data = task_data(info, config.data)
    if config.finetune_epochs:
        finetune_steps(data, config.finetune_config())  # fails before any work when there is no full batch
    if config.device == "cuda" and not torch.cuda.is_available():
        raise EfnasError("--device cuda asked for, but torch sees no CUDA device here")
    device = torch.device(config.device)
    scorer = Scorer(data, config.eval_config(), device=device)
    job = _Job(config, info, spec, source, formats, luts, lut_origin, lut_notes, scorer, device, {}, started, started, warnings=warnings)
    job.lap("load")
    return supernet, job


def _unfinished_warning(info: CheckpointInfo) -> list[str]:
    """One line on stderr (and in export.json and the card) for a checkpoint of an unfinished run."""
    if info.finished:
        return []
    line = (f"the supernet {info.path} is from an unfinished training run (step {info.step} of {info.total_steps}); "
            "the export uses it as it is")
    print(f"efnas: warning: {line}", file=sys.stderr)
    return [line]


def _extract(supernet: Supernet, job: _Job) -> tuple[EfficientFormer, float]:
    """The static model of the architecture, and how far it is from the supernet (it should be exact)."""
    model = supernet.extract(job.spec).eval()
    reference_input = check_inputs(job.spec.resolution, job.config.seed)
    with torch.no_grad():
        delta = float((supernet(reference_input, job.spec) - model(reference_input)).abs().max())
    if not delta <= job.config.tolerance:
        raise EfnasError(f"the extracted model differs from the supernet by {delta:.3g}: the checkpoint is inconsistent")
    return model.to(job.device), delta


def _score(model: EfficientFormer, supernet: Supernet, job: _Job, progress: Progress) -> tuple[dict[str, float], dict[str, Any] | None]:
    """Recalibrate and score ``model`` in place; fine-tune it (distilled from the largest subnet)
    and score it again when asked. Returns the metrics and the fine-tune record."""
    scorer, config = job.scorer, job.config
    scorer.recalibrate(model, progress=progress, description="recalibrating BatchNorm")
    job.lap("calibrate")
    metrics = {"val_top1_inherited": scorer.accuracy(model, progress=progress, description="evaluating (inherited weights)")}
    job.lap("evaluate")
    if not config.finetune_epochs:
        return metrics | {"val_top1": metrics["val_top1_inherited"]}, None
    teacher = supernet.extract(job.info.space.largest()).to(job.device)
    scorer.recalibrate(teacher, progress=progress, description="recalibrating the teacher (largest subnet)")
    report = finetune(model, teacher, scorer.data, config.finetune_config(), seed=config.seed, device=job.device, progress=progress)
    del teacher
    scorer.recalibrate(model, progress=progress, description="recalibrating BatchNorm (fine-tuned)")
    metrics["val_top1"] = scorer.accuracy(model, progress=progress, description="evaluating (fine-tuned)")
    job.lap("finetune")
    return metrics, report.to_dict()


def _write_formats(model: EfficientFormer, folder: Path, settings: WriteSettings, job: _Job, progress: Progress) -> dict[str, FormatReport]:
    reports: dict[str, FormatReport] = {}
    task = progress.add_task("writing formats", total=len(job.formats))
    for name in job.formats:
        progress.update(task, description=f"writing {FILES[name]}")
        reports[name] = WRITERS[name](model, folder, settings)
        job.lap(f"format_{name}")
        progress.advance(task)
    return reports


def _latency(model: EfficientFormer, job: _Job, progress: Progress) -> dict[str, Any]:
    rounds = job.config.latency_rounds
    task = progress.add_task("measuring latency (onnxruntime, 1 thread)", total=1, visible=bool(rounds))
    run = Path(job.info.path).parent
    latency = _measure(model, rounds, job.config.seed, _predictions(job.luts, job.spec, run, job.lut_origin))
    progress.advance(task)
    job.lap("latency")
    return latency | {"default_tables": job.lut_origin == "shipped", "tables_from": job.lut_origin, "notes": job.lut_notes}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _supernet_record(job: _Job, extraction_delta: float) -> dict[str, Any]:
    info, space = job.info, job.info.space
    return {
        "path": str(Path(info.path).resolve()),
        "sha256": _sha256(info.path),
        "space": space.name,
        "fingerprint": space.fingerprint(),
        "step": info.step,
        "total_steps": info.total_steps,
        "finished": info.finished,
        "extraction_max_abs_diff": extraction_delta,
    }


def _data_record(job: _Job) -> dict[str, Any]:
    data, config = job.scorer.data, job.config
    return {
        "name": config.data or job.info.config["data"],
        "split_seed": int(job.info.config.get("seed", 0)),
        "num_train": data.num_train,
        "num_val": data.num_val,
        "validation": {"images": job.scorer.num_val, "of": data.num_val, "seed": config.seed},
    }


def _write_description(folder: Path, record: ExportRecord) -> dict[str, Any]:
    """``export.json`` and ``model_card.md``; returns the former. Plain writes: the staging folder
    as a whole is what appears atomically."""
    as_dict = record.to_dict()
    _write_json(folder / "export.json", as_dict)
    (folder / "model_card.md").write_text(render_model_card(as_dict))
    return as_dict


def _format_files(folder: Path, formats: tuple[str, ...], reports: dict[str, FormatReport]) -> tuple[ExportedFile, ...]:
    """One entry per written file; a format's first file carries its check (config.json describes
    model.safetensors)."""
    files = []
    for name in formats:
        for index, file in enumerate(reports[name].files):
            check = reports[name].summary if index == 0 else "hub config: timm's architecture, model_args, pretrained_cfg, label_names"
            files.append(ExportedFile(file, path_size(folder / file), check, name))
    return tuple(files)


def _provenance(config: ExportConfig) -> dict[str, Any]:
    record = provenance(("timm", "safetensors"))
    if config.storage:  # the command line may carry the storage URL's password
        record["command"] = _masked(record["command"], config.storage)
    return record


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def export_subnet(config: ExportConfig, *, show_progress: bool = True) -> ExportResult:
    """Run the export described by ``config``; returns where it went and its record.

    Every problem with the inputs (checkpoint, architecture, output folder, formats, tables,
    data) is a one-line :class:`EfnasError` raised before any expensive work; a written format
    that does not compute what PyTorch computes is one too, and nothing is left behind.
    """
    supernet, job = _prepare(config)
    spec, out = job.spec, Path(config.out)
    with torch_threads(config.threads), staging(out, config.force) as folder, progress_bar(show=show_progress) as progress:
        model, extraction_delta = _extract(supernet, job)
        metrics, finetune_record = _score(model, supernet, job, progress)
        del supernet
        model = model.cpu().eval()
        prep = Preprocessing.of(job.scorer.data, spec.resolution)
        settings = WriteSettings(
            Reference.of(model, spec.resolution, config.seed), prep, metadata_strings(spec, prep), config.tolerance,
            config.seed, config.coreml_precision, config.coreml_input, config.license,
        )
        reports = _write_formats(model, folder, settings, job, progress)
        latency = _latency(model, job, progress)
        _write_json(folder / "arch.json", {"arch": spec.to_dict(), "label": spec.label(), "preprocessing": prep.to_dict(),
                                           "pretrained_cfg": prep.pretrained_cfg(), "class_names": list(prep.class_names)})
        files = _format_files(folder, job.formats, reports)
        files += (ExportedFile("arch.json", path_size(folder / "arch.json"),
                               "architecture, preprocessing (timm pretrained_cfg) and class names; read by supernet.load_arch"),)
        job.seconds["total"] = round(time.perf_counter() - job.started, 3)
        calibration = {"batches": job.scorer.num_calib_batches, "batch_size": config.batch_size, "seed": config.seed}
        record = ExportRecord(spec, job.source, _supernet_record(job, extraction_delta), _data_record(job), calibration,
                              finetune_record, metrics, prep, reports, files, latency, config, job.seconds, _provenance(config),
                              tuple(job.warnings))
        written = _write_description(folder, record)
    described = (
        ExportedFile("model_card.md", path_size(out / "model_card.md"), "human-readable summary of export.json"),
        ExportedFile("export.json", path_size(out / "export.json"), "the full record: checks, metrics, latency, provenance"),
    )
    return ExportResult(out, spec, files + described, written)


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
    return load_strictly(build_model(spec), state, f"{path} does not match {folder / 'arch.json'}").eval()
