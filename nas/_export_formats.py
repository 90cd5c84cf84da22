"""Writers for the export formats, each followed by the check that the written file computes what
the PyTorch model computes.

Every writer in :data:`WRITERS` takes the static model (eval mode), where to write, and the
:class:`WriteSettings` (a :class:`Reference` — a seeded input batch and the model's logits on it —,
the preprocessing, the tolerance, ...), and returns a :class:`FormatReport`. A check that fails
raises a one-line :class:`EfnasError`: the export stops and nothing is moved into place.

All formats take the normalised tensor (``(x - mean) / std`` of RGB values in [0, 1]) except a
Core ML package with an image input, which takes the RGB image itself: the mean goes into the
image input's per-channel bias and ``1 / std`` into the first convolution's input channels (see
:func:`fold_normalisation`).
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
import json
import logging
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
    "WriteSettings",
    "Writer",
    "check_formats",
    "check_inputs",
    "fold_normalisation",
    "load_strictly",
    "metadata_strings",
    "timm_variant",
    "write_coreml",
    "write_onnx",
    "write_pt",
    "write_torchscript",
]

FORMATS = ("pt", "torchscript", "onnx", "coreml")
FILES = {"pt": "model.pt", "torchscript": "model.torchscript.pt", "onnx": "model.onnx", "coreml": "model.mlpackage"}
COREML_PRECISIONS = ("fp16", "fp32")
COREML_INPUTS = ("image", "tensor")
_REQUIREMENTS = {"onnx": ("onnx", "onnxruntime"), "coreml": ("coremltools",)}


@dataclass(frozen=True)
class Preprocessing:
    """What the model expects: ``resolution``² RGB in [0, 1], normalised per channel."""

    resolution: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    class_names: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "resolution": self.resolution,
            "color": "RGB, values in [0, 1]",
            "mean": list(self.mean),
            "std": list(self.std),
            "normalise": "(x - mean) / std per channel",
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


def _timm_check(spec: ArchSpec, state: dict[str, torch.Tensor], reference: Reference) -> dict[str, Any] | None:
    name = timm_variant(spec)
    if name is None:
        return None
    try:
        timm = _import("timm")
    except ImportError:
        return {"model": name, "checked": False, "reason": "timm is not installed here"}
    model = load_strictly(timm.create_model(name, pretrained=False, num_classes=spec.num_classes), state,
                          f"model.pt does not load strictly into timm's {name}")
    with torch.no_grad():
        delta = reference.max_abs_diff(model.eval()(reference.inputs))
    return {"model": name, "checked": True, "max_abs_diff": delta}


def write_pt(model: EfficientFormer, folder: Path, settings: WriteSettings) -> FormatReport:
    """``model.pt``: the state dict in timm's layout; reloaded strictly into ``build_model(spec)``
    (and into timm's class when the architecture is a published one)."""
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
    if timm_result and timm_result["checked"]:
        _require_close(f"model.pt loaded into timm's {timm_result['model']}", timm_result["max_abs_diff"], tolerance)
    summary = f"{len(state)} keys; strict reload into build_model(arch), max |Δ| {delta:.1g}"
    if timm_result:
        summary += (
            f"; loads strictly into timm {timm_result['model']}" if timm_result["checked"] else f"; timm not checked ({timm_result['reason']})"
        )
    checks = {"keys": len(state), "strict_reload": True, "max_abs_diff": delta, "timm": timm_result}
    return FormatReport("pt", [FILES["pt"]], checks, summary)


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
    logits = torch.as_tensor(np.asarray(loaded.predict(feed)["logits"]), dtype=torch.float32).reshape(expected.shape)
    delta = float((logits - expected).abs().max())
    # fp16 keeps ~3 significant digits through every layer: judge it relative to the logits' scale.
    tolerance = 1e-3 if precision == "fp32" else 0.05 * max(1.0, float(expected.abs().max()))
    same_top1 = bool((logits.argmax(1) == expected.argmax(1)).all())
    _require_close(f"the Core ML {precision} prediction", delta, tolerance)
    return {"compared": True, "max_abs_diff": delta, "tolerance": tolerance, "same_top1": same_top1}


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
    mlmodel.user_defined_metadata.update(settings.metadata)


def write_coreml(model: EfficientFormer, folder: Path, settings: WriteSettings) -> FormatReport:
    """``model.mlpackage``: ``torch.jit.trace`` -> ``coremltools.convert`` as an ML Program (iOS 16+).

    The package is reopened without loading (``skip_model_load=True``, all Linux can do) and its
    spec checked: input, output, operation count and every convolution present. On macOS its
    prediction is also compared with PyTorch's.
    """
    precision, input_kind = settings.coreml_precision, settings.coreml_input
    if precision not in COREML_PRECISIONS:
        raise EfnasError(f"--coreml-precision must be one of {', '.join(COREML_PRECISIONS)}, got {precision!r}")
    if input_kind not in COREML_INPUTS:
        raise EfnasError(f"--coreml-input must be one of {', '.join(COREML_INPUTS)}, got {input_kind!r}")
    ct = _import("coremltools")
    spec, size, image_input = model.spec, model.spec.resolution, input_kind == "image"
    checks: dict[str, Any] = {"precision": precision, "input": input_kind, "minimum_deployment_target": "iOS16"}
    traced_model, inputs = _coreml_inputs(ct, model, settings, checks)
    with _quiet(), torch.no_grad():
        mlmodel = ct.convert(
            torch.jit.trace(traced_model, torch.zeros(1, 3, size, size)),
            inputs=inputs,
            outputs=[ct.TensorType(name="logits", dtype=np.float32)],
            convert_to="mlprogram",
            compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
            minimum_deployment_target=ct.target.iOS16,
        )
    _describe_coreml(mlmodel, spec, settings, inputs[0].name)
    path = folder / FILES["coreml"]
    with _quiet():
        mlmodel.save(str(path))
        reopened = ct.models.MLModel(str(path), skip_model_load=True)
    checks.update(_check_coreml_spec(reopened.get_spec(), model, image_input))
    if platform.system() == "Darwin":
        with _quiet():
            checks["prediction"] = _coreml_prediction_check(ct, path, model, settings.prep, image_input, precision, settings.seed)
        compared = f"prediction vs PyTorch max |Δ| {checks['prediction']['max_abs_diff']:.1e}"
    else:
        checks["prediction"] = {"compared": False, "reason": "Core ML prediction needs macOS"}
        compared = "prediction needs macOS"
    inp = f"image {size}x{size}" if image_input else f"tensor (1, 3, {size}, {size})"
    summary = (
        f"ML Program {precision}, {inp} -> logits (1, {spec.num_classes}); reopened: {checks['operations']} ops, "
        f"{checks['convolutions']} convs; {compared}"
    )
    return FormatReport("coreml", [FILES["coreml"]], checks, summary)


def _check_coreml_spec(proto: Any, model: EfficientFormer, image_input: bool) -> dict[str, Any]:
    spec = model.spec
    size = spec.resolution
    problems = []
    inputs = list(proto.description.input)
    outputs = list(proto.description.output)
    if len(inputs) != 1 or len(outputs) != 1:
        problems.append(f"{len(inputs)} input(s) and {len(outputs)} output(s) instead of 1 and 1")
    else:
        kind = inputs[0].type.WhichOneof("Type")
        if image_input:
            image = inputs[0].type.imageType
            if (inputs[0].name, kind, image.width, image.height) != ("image", "imageType", size, size):
                problems.append(f"input is {inputs[0].name} {kind} {image.width}x{image.height}, expected image {size}x{size}")
        elif (inputs[0].name, kind, list(inputs[0].type.multiArrayType.shape)) != ("input", "multiArrayType", [1, 3, size, size]):
            problems.append(f"input is {inputs[0].name} {kind} {list(inputs[0].type.multiArrayType.shape)}, expected input [1, 3, {size}, {size}]")
        out_shape = list(outputs[0].type.multiArrayType.shape)
        if (outputs[0].name, out_shape) != ("logits", [1, spec.num_classes]):
            problems.append(f"output is {outputs[0].name} {out_shape}, expected logits [1, {spec.num_classes}]")
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
    }


def metadata_strings(spec: ArchSpec, prep: Preprocessing) -> dict[str, str]:
    """Key/value strings stored in the ONNX and Core ML files, so that each file describes itself."""
    return {
        "arch": spec.to_json(),
        "class_names": json.dumps(list(prep.class_names)),
        "preprocessing": json.dumps(prep.to_dict()),
        "producer": f"efficientformer-nas {tool_version()}",
    }


Writer = Callable[[EfficientFormer, Path, WriteSettings], FormatReport]
# One writer per format, in the order of FORMATS (the order an export writes them).
WRITERS: dict[str, Writer] = {"pt": write_pt, "torchscript": write_torchscript, "onnx": write_onnx, "coreml": write_coreml}
