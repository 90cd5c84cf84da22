"""Writers for the export formats, each followed by the check that the written file computes what
the PyTorch model computes.

Every writer in :data:`WRITERS` takes the static model (eval mode), where to write, and the
:class:`WriteSettings` (a :class:`Reference` — a seeded input batch and the model's logits on it —,
the preprocessing, the tolerance, ...), and returns a :class:`FormatReport`. A check that fails
raises a one-line :class:`EfnasError`: the export stops and nothing is moved into place.

All formats take the normalised tensor (``(x - mean) / std`` of RGB values in [0, 1]) except a
Core ML package with an image input, which takes the RGB image itself: the mean goes into the
image input's per-channel bias and ``1 / std`` into the first convolution's input channels (see
:func:`fold_normalisation`). How an image becomes that tensor (resize, centre crop) is recorded in
timm's ``pretrained_cfg`` form (:meth:`Preprocessing.pretrained_cfg`) in every file that can hold it.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
import json
import logging
import math
import platform
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from latency_lut import ONNX_OPSET, onnx_bytes
from supernet.errors import EfnasError
from supernet.data import IMAGEFOLDER_PREFIX, VAL_CROP_FRACTION, TaskData
from supernet.io import tool_version
from supernet.model import EfficientFormer, build_model
from supernet.space import ArchSpec, load_space

__all__ = [
    "FILES",
    "FORMATS",
    "WRITERS",
    "FormatReport",
    "Preprocessing",
    "Reference",
    "TimmShape",
    "WriteSettings",
    "Writer",
    "check_formats",
    "check_inputs",
    "coreml_class_labels",
    "fold_normalisation",
    "hub_config",
    "load_strictly",
    "metadata_strings",
    "timm_shape",
    "timm_variant",
    "write_coreml",
    "write_onnx",
    "write_pt",
    "write_safetensors",
    "write_torchscript",
]

FORMATS = ("pt", "safetensors", "torchscript", "onnx", "coreml")
FILES = {"pt": "model.pt", "safetensors": "model.safetensors", "torchscript": "model.torchscript.pt", "onnx": "model.onnx",
         "coreml": "model.mlpackage"}
HUB_CONFIG = "config.json"  # written with model.safetensors: what timm.create_model("local-dir:...") reads
COREML_PRECISIONS = ("fp16", "fp32")
COREML_INPUTS = ("image", "tensor")
_REQUIREMENTS = {"safetensors": ("safetensors",), "onnx": ("onnx", "onnxruntime"), "coreml": ("coremltools",)}


def _crop_fraction(resolution: int, resize: int) -> float:
    """``resolution / resize`` as timm's crop_pct, nudged down by float ulps where needed so that
    timm's ``floor(resolution / crop_pct)`` gives back ``resize`` exactly (it would not at e.g. 443)."""
    crop = resolution / resize
    while math.floor(resolution / crop) < resize:
        crop = math.nextafter(crop, 0.0)
    return crop


@dataclass(frozen=True)
class Preprocessing:
    """What the model expects, and how validation made it from an image: shorter side resized to
    ``resize`` (``interpolation``, antialiased), centre crop ``resolution``², RGB in [0, 1],
    normalised per channel."""

    resolution: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    class_names: tuple[str, ...]
    resize: int = 0  # shorter side before the centre crop; 0: the resolution (no crop)
    interpolation: str = "bilinear"
    crop_mode: str = "center"

    def __post_init__(self) -> None:
        if not self.resize:
            object.__setattr__(self, "resize", self.resolution)

    @classmethod
    def of(cls, data: TaskData, resolution: int) -> Preprocessing:
        """The transform ``data``'s validation split applies: an image folder is resized and
        centre-cropped; the embedded digit tasks are rendered at the input size (crop_pct 1)."""
        resize = round(resolution / VAL_CROP_FRACTION) if data.name.startswith(IMAGEFOLDER_PREFIX) else resolution
        return cls(resolution, tuple(data.mean), tuple(data.std), tuple(data.class_names), resize)

    @property
    def crop_pct(self) -> float:
        return _crop_fraction(self.resolution, self.resize)

    def pretrained_cfg(self) -> dict[str, Any]:
        """The eval transform in timm's ``pretrained_cfg`` keys (``timm.data.resolve_data_config``
        and ``create_transform`` rebuild it: floor(R / crop_pct) is ``resize``)."""
        return {
            "input_size": [3, self.resolution, self.resolution],
            "interpolation": self.interpolation,
            "crop_pct": self.crop_pct,
            "crop_mode": self.crop_mode,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "resolution": self.resolution,
            "color": "RGB, values in [0, 1]",
            "mean": list(self.mean),
            "std": list(self.std),
            "normalise": "(x - mean) / std per channel",
            "resize": self.resize,
            "transform": (
                f"resize the shorter side to {self.resize} ({self.interpolation}, antialiased), centre-crop "
                f"{self.resolution}x{self.resolution}, RGB / 255, then (x - mean) / std"
            ),
            "pretrained_cfg": self.pretrained_cfg(),
        }


def check_inputs(resolution: int, seed: int, batch: int = 2) -> torch.Tensor:
    """The seeded input batch the checks run. A batch of 2 also shows that the batch dimension
    stayed dynamic in the ONNX and TorchScript files."""
    return torch.randn(batch, 3, resolution, resolution, generator=torch.Generator().manual_seed(seed))


@dataclass(frozen=True)
class Reference:
    """A seeded input batch (normalised) and the PyTorch model's logits on it."""

    inputs: torch.Tensor  # (B, 3, R, R)
    logits: torch.Tensor  # (B, classes)

    @classmethod
    def of(cls, model: nn.Module, resolution: int, seed: int) -> Reference:
        inputs = check_inputs(resolution, seed)
        with torch.no_grad():
            return cls(inputs, model.eval()(inputs))

    def max_abs_diff(self, logits: torch.Tensor | np.ndarray) -> float:
        return float((torch.as_tensor(np.asarray(logits), dtype=torch.float32) - self.logits).abs().max())


@dataclass(frozen=True)
class WriteSettings:
    """What every writer is given besides the model and the folder."""

    reference: Reference
    prep: Preprocessing
    metadata: dict[str, str]  # key/value strings stored in the files that can hold them
    tolerance: float  # max |Δ| allowed against PyTorch (fp32)
    seed: int  # of the Core ML checks' inputs
    coreml_precision: str = "fp16"
    coreml_input: str = "image"
    license: str | None = None  # recorded in config.json's pretrained_cfg


@dataclass
class FormatReport:
    """What one format wrote (paths relative to the export folder) and what its check found."""

    format: str
    files: list[str]
    checks: dict[str, Any] = field(default_factory=dict)
    summary: str = ""


def load_strictly(model: nn.Module, state: dict[str, torch.Tensor], what: str) -> nn.Module:
    """``model`` with ``state`` loaded strictly, or a one-line error naming ``what`` did not fit."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise EfnasError(f"{what}: {str(exc).splitlines()[0][:200]}") from None
    return model


def _require_close(what: str, delta: float, tolerance: float) -> None:
    if not delta <= tolerance:  # also catches NaN
        raise EfnasError(
            f"{what} differs from the PyTorch model by max |Δ| {delta:.3g} > {tolerance:g}; the export was stopped"
        )


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' deprecation warnings, log lines and progress bars (ours show instead)."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def _import(module: str) -> Any:
    with _quiet():
        return importlib.import_module(module)


def check_formats(formats: tuple[str, ...]) -> tuple[str, ...]:
    """``formats`` in canonical order, or a one-line error for an unknown one or one whose
    libraries cannot be imported here (checked before any work is done)."""
    unknown = [name for name in formats if name not in FORMATS]
    if unknown:
        raise EfnasError(f"unknown format(s) {', '.join(unknown)}; choose from {', '.join(FORMATS)}")
    if not formats:
        raise EfnasError(f"no format given; choose from {', '.join(FORMATS)}")
    for name in formats:
        for module in _REQUIREMENTS.get(name, ()):
            try:
                _import(module)
            except ImportError as exc:
                raise EfnasError(
                    f"format {name} is unavailable here: {module} cannot be imported ({exc}); "
                    f"install it (pip install {module}) or leave {name} out of --formats"
                ) from None
    return tuple(name for name in FORMATS if name in formats)


# -- PyTorch state dict ------------------------------------------------------------------------


def timm_variant(spec: ArchSpec) -> str | None:
    """timm's model name for ``spec`` (``efficientformer_l1/l3/l7``) when it is one of the published
    architectures at any class count, else None."""
    v1 = load_space("efficientformer-v1")
    for name, preset in v1.presets:
        if preset.to_dict() | {"num_classes": spec.num_classes} == spec.to_dict():
            return f"efficientformer_{name.lower()}"
    return None


# timm's EfficientFormer hard-codes these (Attention(dim) in MetaBlock1d; 7x7 attention-bias grid).
_TIMM_ATTENTION = {"heads": 8, "key_dim": 32, "grid": 7}
# With no Meta3D block timm builds the model and loads the weights strictly, then fails in forward.
TIMM_NO_ATTENTION = (
    "no Meta3D block: timm's EfficientFormerStage inserts its Flat (feature map -> tokens) only when "
    "num_vit >= 1, so its final LayerNorm, which works on tokens, gets a (B, C, H, W) map and raises "
    "'Given normalized_shape=[C] ... got input of size [B, C, H, W]'; the weights load strictly (Flat has none), "
    "and appending timm's Flat to the last stage (model.stages[-1].blocks.append(timm.models.efficientformer.Flat())) "
    "makes it compute this model"
)


@dataclass(frozen=True)
class TimmShape:
    """Whether ``timm.create_model`` builds an architecture: its name and keyword arguments, or why not."""

    name: str  # the timm entry point: the preset's, or efficientformer_l1 with every shape argument
    model_args: dict[str, Any]
    buildable: bool  # create_model(name, **model_args) computes this model
    reason: str | None = None  # why not (None when buildable)
    needs_flat: bool = False  # buildable once timm's Flat ends the last stage (no Meta3D block)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.name, "model_args": self.model_args, "buildable": self.buildable, "reason": self.reason,
                "needs_flat": self.needs_flat}


def timm_shape(spec: ArchSpec) -> TimmShape:
    """How (or why not) timm's ``efficientformer_l1`` entry point builds ``spec``: timm takes one MLP
    ratio for all stages and fixes the attention at 8 heads x key dim 32 on a 7x7 grid (224 px)."""
    name = timm_variant(spec) or "efficientformer_l1"
    ratios = set(spec.mlp_ratios)
    args = {"depths": list(spec.depths), "embed_dims": list(spec.widths), "num_vit": spec.num_meta3d,
            "mlp_ratios": spec.mlp_ratios[0], "num_classes": spec.num_classes}
    if len(ratios) > 1:
        reason = (f"per-stage MLP ratios {list(spec.mlp_ratios)}: timm's EfficientFormer takes one mlp_ratios for "
                  "every stage; load it with build_model(arch.json)")
        return TimmShape(name, {}, False, reason)
    if spec.num_meta3d:
        grid = spec.stage_resolutions[-1]
        wanted = _TIMM_ATTENTION
        if (spec.attn_heads, spec.attn_key_dim, grid) != (wanted["heads"], wanted["key_dim"], wanted["grid"]):
            reason = (f"attention of {spec.attn_heads} heads x key dim {spec.attn_key_dim} on a {grid}x{grid} grid: timm's "
                      f"EfficientFormer fixes {wanted['heads']} x {wanted['key_dim']} on {wanted['grid']}x{wanted['grid']} "
                      "(224 px input); load it with build_model(arch.json)")
            return TimmShape(name, {}, False, reason)
        return TimmShape(name, args, True)
    return TimmShape(name, args, False, TIMM_NO_ATTENTION, needs_flat=True)


def _timm_model(shape: TimmShape) -> nn.Module:
    timm = _import("timm")
    with _quiet():
        model = timm.create_model(shape.name, pretrained=False, **shape.model_args)
    return _with_flat(model) if shape.needs_flat else model


def _with_flat(model: nn.Module) -> nn.Module:
    from timm.models.efficientformer import Flat

    model.stages[-1].blocks.append(Flat())
    return model


def _timm_check(spec: ArchSpec, state: dict[str, torch.Tensor], reference: Reference) -> dict[str, Any]:
    """The state dict loaded strictly into timm's model of ``spec`` (when timm can build it) and its
    logits next to ours."""
    shape = timm_shape(spec)
    result = shape.to_dict()
    if not shape.model_args:
        return result | {"checked": False}
    try:
        _import("timm")
    except ImportError:
        return result | {"checked": False, "reason": "timm is not installed here"}
    model = load_strictly(_timm_model(shape), state, f"the weights do not load strictly into timm's {shape.name}")
    with torch.no_grad():
        delta = reference.max_abs_diff(model.eval()(reference.inputs))
    return result | {"checked": True, "max_abs_diff": delta}


def _timm_summary(timm_result: dict[str, Any]) -> str:
    if not timm_result["checked"]:
        return "; timm cannot build this shape" if not timm_result["model_args"] else f"; timm not checked ({timm_result['reason']})"
    how = "timm.create_model + Flat appended" if timm_result["needs_flat"] else "timm.create_model"
    return f"; loads strictly into {how} ({timm_result['model']}), max |Δ| {timm_result['max_abs_diff']:.1g}"


def write_pt(model: EfficientFormer, folder: Path, settings: WriteSettings) -> FormatReport:
    """``model.pt``: the state dict in timm's layout; reloaded strictly into ``build_model(spec)``
    (and into timm's EfficientFormer whenever timm can build the shape)."""
    reference, tolerance = settings.reference, settings.tolerance
    path = folder / FILES["pt"]
    torch.save(model.state_dict(), path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    reloaded = build_model(model.spec)
    reloaded.load_state_dict(state, strict=True)
    with torch.no_grad():
        delta = reference.max_abs_diff(reloaded.eval()(reference.inputs))
    _require_close("model.pt reloaded into build_model(arch)", delta, tolerance)
    timm_result = _timm_check(model.spec, state, reference)
    if timm_result["checked"]:
        _require_close(f"model.pt loaded into timm's {timm_result['model']}", timm_result["max_abs_diff"], tolerance)
    summary = f"{len(state)} keys; strict reload into build_model(arch), max |Δ| {delta:.1g}" + _timm_summary(timm_result)
    checks = {"keys": len(state), "strict_reload": True, "max_abs_diff": delta, "timm": timm_result}
    return FormatReport("pt", [FILES["pt"]], checks, summary)


# -- safetensors and the hub config ------------------------------------------------------------


def hub_config(spec: ArchSpec, prep: Preprocessing, license: str | None = None) -> dict[str, Any]:
    """``config.json`` as timm's ``save_config_for_hf`` writes it (architecture, num_classes,
    num_features, model_args, pretrained_cfg, label_names), so that
    ``timm.create_model("local-dir:FOLDER", pretrained=True)`` or ``"hf-hub:USER/REPO"`` builds the
    model. ``architecture`` and ``model_args`` are left out when timm cannot build the shape (see
    ``efficientformer_nas.timm``), so that timm refuses the folder instead of failing later."""
    shape = timm_shape(spec)
    pretrained_cfg = prep.pretrained_cfg() | {
        "num_classes": spec.num_classes,
        "fixed_input_size": spec.num_meta3d > 0,  # the attention biases fix the token grid
        "first_conv": "stem.conv1",
        "classifier": ["head", "head_dist"],
    }
    if license:
        pretrained_cfg["license"] = license
    config: dict[str, Any] = {"num_classes": spec.num_classes, "num_features": spec.widths[-1], "global_pool": "avg"}
    if shape.buildable:
        config = {"architecture": shape.name, **config, "model_args": shape.model_args}
    config["pretrained_cfg"] = pretrained_cfg
    if prep.class_names:
        config["label_names"] = list(prep.class_names)
    config["efficientformer_nas"] = {"arch": spec.to_dict(), "producer": f"efficientformer-nas {tool_version()}",
                                     "timm": shape.to_dict()}
    return config


def _hub_load_check(folder: Path, shape: TimmShape, reference: Reference, tolerance: float) -> dict[str, Any]:
    """What a timm user runs on the folder: ``create_model("local-dir:...", pretrained=True)``."""
    if not shape.buildable:
        return {"checked": False, "reason": shape.reason}
    try:
        timm = _import("timm")
    except ImportError:
        return {"checked": False, "reason": "timm is not installed here"}
    try:
        with _quiet():
            model = timm.create_model(f"local-dir:{folder}", pretrained=True)
    except Exception as exc:  # noqa: BLE001 - whatever timm raises, the export must not claim the folder loads
        raise EfnasError(f"timm cannot load the export folder's config.json and model.safetensors: {str(exc).splitlines()[0][:200]}") from None
    with torch.no_grad():
        delta = reference.max_abs_diff(model.eval()(reference.inputs))
    _require_close("timm.create_model('local-dir:...', pretrained=True)", delta, tolerance)
    return {"checked": True, "call": "timm.create_model('local-dir:FOLDER', pretrained=True)", "max_abs_diff": delta}


def write_safetensors(model: EfficientFormer, folder: Path, settings: WriteSettings) -> FormatReport:
    """``model.safetensors`` (the same state dict as model.pt, no pickle) and the hub-style
    ``config.json``; the weights reload strictly into ``build_model(spec)``, and the folder loads
    with timm's own ``local-dir:`` loader whenever timm can build the shape."""
    safetensors_torch = _import("safetensors.torch")
    reference, tolerance = settings.reference, settings.tolerance
    path = folder / FILES["safetensors"]
    safetensors_torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata={"format": "pt"})
    state = safetensors_torch.load_file(str(path), device="cpu")
    reloaded = load_strictly(build_model(model.spec), state, "model.safetensors does not match build_model(arch)")
    with torch.no_grad():
        delta = reference.max_abs_diff(reloaded.eval()(reference.inputs))
    _require_close("model.safetensors reloaded into build_model(arch)", delta, tolerance)
    config = hub_config(model.spec, settings.prep, settings.license)
    (folder / HUB_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    shape = timm_shape(model.spec)
    hub = _hub_load_check(folder, shape, reference, tolerance)
    summary = f"{len(state)} tensors + {HUB_CONFIG}; strict reload, max |Δ| {delta:.1g}; " + (
        f"timm.create_model('local-dir:…', pretrained=True): max |Δ| {hub['max_abs_diff']:.1g}" if hub["checked"]
        else "timm cannot build this shape (see the card)" if not shape.buildable else f"timm not checked ({hub['reason']})"
    )
    checks = {"tensors": len(state), "strict_reload": True, "max_abs_diff": delta, "config": HUB_CONFIG, "timm": shape.to_dict(),
              "timm_local_dir": hub}
    return FormatReport("safetensors", [FILES["safetensors"], HUB_CONFIG], checks, summary)


# -- TorchScript -------------------------------------------------------------------------------


def write_torchscript(model: EfficientFormer, folder: Path, settings: WriteSettings) -> FormatReport:
    """``model.torchscript.pt``: ``torch.jit.script`` (not a trace: no shape is baked in), reloaded
    with ``torch.jit.load`` and compared with the eager model."""
    reference, tolerance = settings.reference, settings.tolerance
    path = folder / FILES["torchscript"]
    with _quiet():
        scripted = torch.jit.script(copy.deepcopy(model).eval())
        scripted.save(str(path))
        loaded = torch.jit.load(str(path), map_location="cpu")
        with torch.no_grad():
            delta = reference.max_abs_diff(loaded(reference.inputs))
    _require_close("the TorchScript model", delta, tolerance)
    checks = {"method": "torch.jit.script", "max_abs_diff": delta, "batch": int(reference.inputs.shape[0])}
    return FormatReport("torchscript", [FILES["torchscript"]], checks, f"torch.jit.script, reloaded: max |Δ| {delta:.1e}")


# -- ONNX --------------------------------------------------------------------------------------


def write_onnx(model: EfficientFormer, folder: Path, settings: WriteSettings) -> FormatReport:
    """``model.onnx`` (the latency tables' exporter and opset, dynamic batch), validated with
    ``onnx.checker`` and run with onnxruntime on the CPU."""
    onnx = _import("onnx")
    ort = _import("onnxruntime")
    reference, tolerance = settings.reference, settings.tolerance
    path = folder / FILES["onnx"]
    resolution = model.spec.resolution
    with _quiet():
        exported = onnx_bytes(copy.deepcopy(model), (1, 3, resolution, resolution), output_name="logits", dynamic_batch=True)
    proto = onnx.load_from_string(exported)
    for key, value in settings.metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = f"EfficientFormer {model.spec.label()} exported by efficientformer-nas {tool_version()}"
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise EfnasError(f"the ONNX model fails onnx.checker: {str(exc).splitlines()[0][:200]}") from None
    path.write_bytes(proto.SerializeToString())
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"input": reference.inputs.numpy()})
    delta = reference.max_abs_diff(logits)
    _require_close("the ONNX model run by onnxruntime", delta, tolerance)
    checks = {
        "opset": ONNX_OPSET,
        "exporter": "torch.onnx.export(dynamo=False)",
        "onnxruntime": ort.__version__,
        "provider": "CPUExecutionProvider",
        "max_abs_diff": delta,
        "batch": int(reference.inputs.shape[0]),
        "nodes": len(proto.graph.node),
    }
    summary = f"opset {ONNX_OPSET}, {len(proto.graph.node)} nodes; onnxruntime vs PyTorch: max |Δ| {delta:.1e}"
    return FormatReport("onnx", [FILES["onnx"]], checks, summary)


# -- Core ML -----------------------------------------------------------------------------------


def fold_normalisation(model: EfficientFormer, std: tuple[float, float, float]) -> EfficientFormer:
    """A copy of ``model`` that takes ``x - mean`` instead of ``(x - mean) / std``.

    Core ML's image input applies one scale to all channels plus a per-channel bias, so it can
    subtract a per-channel mean but not divide by a per-channel std. The first convolution is
    linear in its input and pads with zeros (zero before and after the division alike), so dividing
    its weights' input channels by ``std`` computes exactly what dividing the image would.
    """
    folded = copy.deepcopy(model).eval()
    with torch.no_grad():
        folded.stem.conv1.weight.div_(torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
    return folded


def _block_ops(spec_proto: Any) -> list[Any]:
    main = spec_proto.mlProgram.functions["main"]
    return list(main.block_specializations[main.opset].operations)


def _coreml_prediction_check(
    ct: Any, path: Path, model: EfficientFormer, prep: Preprocessing, image_input: bool, precision: str, seed: int
) -> dict[str, Any]:
    """macOS only: the package's prediction on the CPU next to PyTorch's on the same input."""
    from PIL import Image

    size = prep.resolution
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    normalised = (torch.from_numpy(pixels).permute(2, 0, 1).float() / 255 - torch.tensor(prep.mean).view(3, 1, 1)) / torch.tensor(
        prep.std
    ).view(3, 1, 1)
    with torch.no_grad():
        expected = model.eval()(normalised[None])
    loaded = ct.models.MLModel(str(path), compute_units=ct.ComputeUnit.CPU_ONLY)
    feed = {"image": Image.fromarray(pixels, "RGB")} if image_input else {"input": normalised[None].numpy()}
    prediction = loaded.predict(feed)
    logits = torch.as_tensor(np.asarray(prediction["logits"]), dtype=torch.float32).reshape(expected.shape)
    delta = float((logits - expected).abs().max())
    # fp16 keeps ~3 significant digits through every layer: judge it relative to the logits' scale.
    tolerance = 1e-3 if precision == "fp32" else 0.05 * max(1.0, float(expected.abs().max()))
    same_top1 = bool((logits.argmax(1) == expected.argmax(1)).all())
    _require_close(f"the Core ML {precision} prediction", delta, tolerance)
    result = {"compared": True, "max_abs_diff": delta, "tolerance": tolerance, "same_top1": same_top1}
    labels = coreml_class_labels(prep)
    if labels:
        label = prediction["classLabel"]
        result["classLabel_matches_logits"] = label == labels[int(logits.argmax(1)[0])]
        if not result["classLabel_matches_logits"]:
            raise EfnasError(f"the Core ML classifier says {label!r} but its logits' argmax is {labels[int(logits.argmax(1)[0])]!r}")
    return result


def _coreml_inputs(ct: Any, model: EfficientFormer, settings: WriteSettings, checks: dict[str, Any]) -> tuple[nn.Module, list[Any]]:
    """The model to trace and Core ML's input description; an image input gets the normalisation
    folded in, verified in PyTorch (exact up to rounding), since Linux cannot run the package."""
    prep = settings.prep
    size = prep.resolution
    shape = (1, 3, size, size)
    if settings.coreml_input != "image":
        return copy.deepcopy(model).eval(), [ct.TensorType(name="input", shape=shape, dtype=np.float32)]
    folded = fold_normalisation(model, prep.std)
    with torch.no_grad():
        pixels = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(settings.seed))
        shifted = pixels - torch.tensor(prep.mean).view(1, 3, 1, 1)
        expected = model(shifted / torch.tensor(prep.std).view(1, 3, 1, 1))
        delta = float((folded(shifted) - expected).abs().max())
    _require_close("the model with the normalisation folded in", delta, settings.tolerance)
    checks["normalisation_fold_max_abs_diff"] = delta
    image = ct.ImageType(name="image", shape=shape, scale=1 / 255, bias=[-m for m in prep.mean], color_layout=ct.colorlayout.RGB)
    return folded, [image]


def _describe_coreml(mlmodel: Any, spec: ArchSpec, settings: WriteSettings, input_name: str) -> None:
    """Descriptions and metadata shown by Xcode and read by apps."""
    prep, size = settings.prep, settings.prep.resolution
    mlmodel.short_description = f"EfficientFormer {spec.label()} ({spec.num_classes} classes), exported by efficientformer-nas"
    mlmodel.version = tool_version()
    mlmodel.input_description[input_name] = (
        f"RGB image {size}x{size}; the normalisation (mean {list(prep.mean)}, std {list(prep.std)}) is built in"
        if settings.coreml_input == "image"
        else f"float32 (1, 3, {size}, {size}): RGB in [0, 1], normalised (x - mean) / std with mean {list(prep.mean)}, std {list(prep.std)}"
    )
    mlmodel.output_description["logits"] = f"class logits (1, {spec.num_classes}); class names in the metadata 'class_names'"
    if coreml_class_labels(prep):
        mlmodel.output_description["classLabel"] = "the most likely class name"
        mlmodel.output_description["classLabel_probs"] = "softmax probability of every class name"
    mlmodel.user_defined_metadata.update(settings.metadata)


class _WithProbabilities(nn.Module):
    """The model's logits and their softmax: the classifier's probabilities come from the second."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(x)
        return logits, logits.softmax(dim=-1)


def coreml_class_labels(prep: Preprocessing) -> list[str] | None:
    """The class names a Core ML classifier can carry (distinct, non-empty), else None."""
    names = list(prep.class_names)
    return names if names and all(names) and len(set(names)) == len(names) else None


def _convert_coreml(ct: Any, traced_model: nn.Module, inputs: list[Any], settings: WriteSettings) -> Any:
    """The ML Program; a classifier (``classLabel``, ``classLabel_probs``, and ``logits``) when the
    class names are known. coremltools 9 cannot add its classify op to a program with two typed
    outputs in one call (IndexError in get_func_output), so the traced program is converted to MIL
    first and the classifier added from there."""
    size = settings.prep.resolution
    labels = coreml_class_labels(settings.prep)
    common = {"convert_to": "mlprogram", "minimum_deployment_target": ct.target.iOS16,
              "compute_precision": ct.precision.FLOAT16 if settings.coreml_precision == "fp16" else ct.precision.FLOAT32}
    with _quiet(), torch.no_grad():
        if labels is None:
            traced = torch.jit.trace(traced_model, torch.zeros(1, 3, size, size))
            return ct.convert(traced, inputs=inputs, outputs=[ct.TensorType(name="logits", dtype=np.float32)], **common)
        traced = torch.jit.trace(_WithProbabilities(traced_model).eval(), torch.zeros(1, 3, size, size))
        program = ct.convert(
            traced, inputs=inputs, convert_to="milinternal", minimum_deployment_target=ct.target.iOS16,
            outputs=[ct.TensorType(name="logits", dtype=np.float32), ct.TensorType(name="probabilities", dtype=np.float32)],
        )
        program.functions["main"].set_output_types(None)
        classifier = ct.ClassifierConfig(labels, predicted_feature_name="classLabel", predicted_probabilities_output="probabilities")
        return ct.convert(program, classifier_config=classifier, **common)


def write_coreml(model: EfficientFormer, folder: Path, settings: WriteSettings) -> FormatReport:
    """``model.mlpackage``: ``torch.jit.trace`` -> ``coremltools.convert`` as an ML Program (iOS 16+),
    a classifier when the class names are known (Vision then returns labels), with ``logits`` kept.

    The package is reopened without loading (``skip_model_load=True``, all Linux can do) and its
    spec checked: input, outputs, class labels, operation count and every convolution present. On
    macOS its prediction is also compared with PyTorch's.
    """
    precision, input_kind = settings.coreml_precision, settings.coreml_input
    if precision not in COREML_PRECISIONS:
        raise EfnasError(f"--coreml-precision must be one of {', '.join(COREML_PRECISIONS)}, got {precision!r}")
    if input_kind not in COREML_INPUTS:
        raise EfnasError(f"--coreml-input must be one of {', '.join(COREML_INPUTS)}, got {input_kind!r}")
    ct = _import("coremltools")
    spec, size, image_input = model.spec, model.spec.resolution, input_kind == "image"
    labels = coreml_class_labels(settings.prep)
    checks: dict[str, Any] = {"precision": precision, "input": input_kind, "minimum_deployment_target": "iOS16",
                              "classifier": labels is not None}
    traced_model, inputs = _coreml_inputs(ct, model, settings, checks)
    mlmodel = _convert_coreml(ct, traced_model, inputs, settings)
    _describe_coreml(mlmodel, spec, settings, inputs[0].name)
    path = folder / FILES["coreml"]
    with _quiet():
        mlmodel.save(str(path))
        reopened = ct.models.MLModel(str(path), skip_model_load=True)
    checks.update(_check_coreml_spec(reopened.get_spec(), model, image_input, labels))
    if platform.system() == "Darwin":
        with _quiet():
            checks["prediction"] = _coreml_prediction_check(ct, path, model, settings.prep, image_input, precision, settings.seed)
        compared = f"prediction vs PyTorch max |Δ| {checks['prediction']['max_abs_diff']:.1e}"
    else:
        checks["prediction"] = {"compared": False, "reason": "Core ML prediction needs macOS"}
        compared = "prediction needs macOS"
    inp = f"image {size}x{size}" if image_input else f"tensor (1, 3, {size}, {size})"
    out = f"classifier ({len(labels)} labels) + logits (1, {spec.num_classes})" if labels else f"logits (1, {spec.num_classes})"
    summary = (
        f"ML Program {precision}, {inp} -> {out}; reopened: {checks['operations']} ops, "
        f"{checks['convolutions']} convs; {compared}"
    )
    return FormatReport("coreml", [FILES["coreml"]], checks, summary)


def _check_coreml_outputs(proto: Any, spec: ArchSpec, labels: list[str] | None) -> list[str]:
    outputs = {o.name: o for o in proto.description.output}
    expected = ["classLabel", "classLabel_probs", "logits"] if labels else ["logits"]
    if sorted(outputs) != expected:
        return [f"outputs are {sorted(outputs)}, expected {expected}"]
    problems = []
    out_shape = list(outputs["logits"].type.multiArrayType.shape)
    if out_shape != [1, spec.num_classes]:
        problems.append(f"output logits is {out_shape}, expected [1, {spec.num_classes}]")
    if labels:
        description = proto.description
        if (description.predictedFeatureName, description.predictedProbabilitiesName) != ("classLabel", "classLabel_probs"):
            problems.append(f"the classifier predicts {description.predictedFeatureName!r} / {description.predictedProbabilitiesName!r}")
        stored = _classify_labels(proto)
        if stored != labels:
            problems.append(f"the classify op holds {len(stored)} labels, not the {len(labels)} class names in order")
    return problems


def _classify_labels(proto: Any) -> list[str]:
    for op in _block_ops(proto):
        if op.type == "classify":
            values = op.inputs["classes"].arguments[0].value.immediateValue.list.values
            return [value.immediateValue.tensor.strings.values[0] for value in values]
    return []


def _check_coreml_spec(proto: Any, model: EfficientFormer, image_input: bool, labels: list[str] | None = None) -> dict[str, Any]:
    spec = model.spec
    size = spec.resolution
    problems = []
    inputs = list(proto.description.input)
    if len(inputs) != 1:
        problems.append(f"{len(inputs)} inputs instead of 1")
    else:
        kind = inputs[0].type.WhichOneof("Type")
        if image_input:
            image = inputs[0].type.imageType
            if (inputs[0].name, kind, image.width, image.height) != ("image", "imageType", size, size):
                problems.append(f"input is {inputs[0].name} {kind} {image.width}x{image.height}, expected image {size}x{size}")
        elif (inputs[0].name, kind, list(inputs[0].type.multiArrayType.shape)) != ("input", "multiArrayType", [1, 3, size, size]):
            problems.append(f"input is {inputs[0].name} {kind} {list(inputs[0].type.multiArrayType.shape)}, expected input [1, 3, {size}, {size}]")
    problems += _check_coreml_outputs(proto, spec, labels)
    ops = [op for op in _block_ops(proto) if op.type != "const"]
    convs = sum(1 for op in ops if op.type == "conv")
    expected_convs = sum(1 for m in model.modules() if isinstance(m, nn.Conv2d))
    if convs != expected_convs:
        problems.append(f"{convs} convolution ops, expected {expected_convs}")
    if problems:
        raise EfnasError(f"the reopened Core ML package is not what was converted: {'; '.join(problems)}")
    counts: dict[str, int] = {}
    for op in ops:
        counts[op.type] = counts.get(op.type, 0) + 1
    return {
        "specification_version": proto.specificationVersion,
        "operations": len(ops),
        "convolutions": convs,
        "op_counts": dict(sorted(counts.items())),
        "outputs": [o.name for o in proto.description.output],
    }


def metadata_strings(spec: ArchSpec, prep: Preprocessing) -> dict[str, str]:
    """Key/value strings stored in the ONNX and Core ML files, so that each file describes itself."""
    return {
        "arch": spec.to_json(),
        "class_names": json.dumps(list(prep.class_names)),
        "preprocessing": json.dumps(prep.to_dict()),
        "pretrained_cfg": json.dumps(prep.pretrained_cfg()),
        "producer": f"efficientformer-nas {tool_version()}",
    }


Writer = Callable[[EfficientFormer, Path, WriteSettings], FormatReport]
# One writer per format, in the order of FORMATS (the order an export writes them).
WRITERS: dict[str, Writer] = {"pt": write_pt, "safetensors": write_safetensors, "torchscript": write_torchscript, "onnx": write_onnx,
                              "coreml": write_coreml}
