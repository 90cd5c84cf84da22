"""The weight-sharing supernet: the largest network of a space, run at any architecture of it.

Every parameter lives in an ordinary full-size module named as in the static model
(``stages.1.blocks.0.mlp.fc1`` ...). An elastic forward slices the first ``c`` channels of each weight
(views, not copies) and calls the functional op, so BatchNorm running statistics are sliced and
updated in place too. The architecture is an explicit argument of ``forward``: nothing about the
active subnet is stored on the modules.

In the last stage every position holds a Meta4D and a Meta3D block (where the space allows both);
a spec with ``num_meta3d = m`` and last depth ``d`` runs positions ``0 .. d-m-1`` as Meta4D and
``d-m .. d-1`` as Meta3D, exactly the layout of the static model.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from supernet.errors import EfnasError
from supernet.model import (
    Attention,
    ConvMlp,
    Downsample,
    EfficientFormer,
    Meta3D,
    Meta4D,
    Mlp,
    Stem,
    _init_linear,
    build_model,
    stage_block_layout,
)
from supernet.space import ArchSpec, SearchSpace

__all__ = ["Supernet"]


# -- gradients that stay in the used slice ---------------------------------------------------

#: Weights this large keep their gradient in the slice a subnet uses; smaller ones use plain slicing,
#: whose zero fill costs less than the Python call of a custom backward. Measured side by side (2
#: threads, 2026-12-03): a tiny-space sandwich step at batch 64 with its 20 weights of 16-92k
#: elements in-slice took 1.04x (0.99-1.08, 5 runs) as long as with plain slicing; on v1, L1 at
#: batch 2 ran the same with 1 << 14 and 1 << 17 (0.97, 1.02), and 1.06x the static model against
#: 1.24x with plain slicing everywhere (docs/benchmarks/supernet_overhead.md).
_IN_SLICE_MIN_NUMEL = 1 << 17


class _SliceGradient:
    """The gradient buffer of one large supernet weight, kept from step to step.

    Autograd's backward of ``weight[:o, :i]`` zero-fills a gradient of the whole weight for every
    use, which for a large weight costs more than the layer's own work at small batches (L1 on
    efficientformer-v1 at batch 2: 1.24x the static model's forward+backward with it, 1.06x without;
    on another machine of the same class the two were level). Here a backward adds into the used slice of a full-size buffer instead, and only the region written
    since the last step is cleared. ``weight.grad`` is that buffer, so optimizers and
    ``zero_grad(set_to_none=True)`` see an ordinary gradient (``None`` for a weight no subnet of
    the step used). The weight's own gradient hook never runs, so DDP (which listens to it) needs
    :meth:`Supernet.accumulate_in_slice` off.
    """

    def __init__(self) -> None:
        self.buffer: torch.Tensor | None = None
        self.written: tuple[int, ...] = ()

    def add(self, weight: torch.Tensor, shape: tuple[int, ...], grad: torch.Tensor) -> None:
        if weight.grad is None:  # a new step: zero_grad(set_to_none=True) dropped the last one
            buffer = self.buffer
            if buffer is None or buffer.shape != weight.shape or buffer.dtype != weight.dtype or buffer.device != weight.device:
                buffer = self.buffer = torch.zeros_like(weight)
            else:
                _zero_outside(buffer, self.written, shape)
            self.written = shape
            weight.grad = buffer
            _prefix(buffer, torch.Size(shape)).copy_(grad)  # overwrites the last step's values there
            return
        if weight.grad is self.buffer:
            self.written = tuple(max(a, b) for a, b in zip(self.written, shape))
        _prefix(weight.grad, torch.Size(shape)).add_(grad)


def _zero_outside(tensor: torch.Tensor, written: tuple[int, ...], keep: tuple[int, ...]) -> None:
    """Zero the leading ``written`` block of ``tensor`` except its leading ``keep`` block (a union of
    one box per dimension), so that clearing costs nothing where the next values are copied in."""
    for dim in range(len(written)):
        if keep[dim] < written[dim]:
            box = [slice(0, n) for n in keep[:dim]] + [slice(keep[dim], written[dim])] + [slice(0, n) for n in written[dim + 1:]]
            tensor[tuple(box)].zero_()


class _InSliceGrad(torch.autograd.Function):
    @staticmethod
    def forward(weight: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:  # type: ignore[override]
        return _prefix(weight, torch.Size(shape))

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[torch.Tensor, tuple[int, ...]], output: torch.Tensor) -> None:
        ctx.weight, ctx.shape = inputs

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, None]:  # type: ignore[override]
        ctx.weight._efnas_slice_gradient.add(ctx.weight, ctx.shape, grad)
        return None, None


def _used(weight: torch.Tensor, *sizes: int) -> torch.Tensor:
    """The leading ``sizes`` block of ``weight`` (all of its other dimensions)."""
    shape = tuple(sizes) + tuple(weight.shape[len(sizes):])
    if (
        hasattr(weight, "_efnas_slice_gradient")
        and weight.requires_grad
        and torch.is_grad_enabled()
        and not torch.compiler.is_compiling()
    ):
        return _InSliceGrad.apply(weight, shape)
    return _prefix(weight, torch.Size(shape))


# -- sliced functional ops -------------------------------------------------------------------


def _conv(conv: nn.Conv2d, x: torch.Tensor, out_channels: int) -> torch.Tensor:
    weight = _used(conv.weight, out_channels, x.shape[1])
    return F.conv2d(x, weight, conv.bias[:out_channels], conv.stride, conv.padding)


def _batch_norm(norm: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    c = x.shape[1]
    return F.batch_norm(
        x,
        norm.running_mean[:c],
        norm.running_var[:c],
        norm.weight[:c],
        norm.bias[:c],
        norm.training,
        norm.momentum if norm.momentum is not None else 0.0,
        norm.eps,
    )


def _layer_norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    c = x.shape[-1]
    return F.layer_norm(x, (c,), norm.weight[:c], norm.bias[:c], norm.eps)


def _linear(linear: nn.Linear, x: torch.Tensor, out_features: int) -> torch.Tensor:
    return F.linear(x, _used(linear.weight, out_features, x.shape[-1]), linear.bias[:out_features])


# -- elastic blocks (same parameter names as the static ones) ------------------------------------


class ElasticStem(Stem):
    def forward(self, x: torch.Tensor, width: int) -> torch.Tensor:  # type: ignore[override]
        x = F.relu(_batch_norm(self.norm1, _conv(self.conv1, x, width // 2)))
        return F.relu(_batch_norm(self.norm2, _conv(self.conv2, x, width)))


class ElasticDownsample(Downsample):
    def forward(self, x: torch.Tensor, width: int) -> torch.Tensor:  # type: ignore[override]
        return _batch_norm(self.norm, _conv(self.conv, x, width))


class ElasticMeta4D(Meta4D):
    def forward(self, x: torch.Tensor, mlp_ratio: int) -> torch.Tensor:  # type: ignore[override]
        width = x.shape[1]
        x = x + self.token_mixer(x) * self.ls1.gamma[:width].view(1, -1, 1, 1)
        mlp: ConvMlp = self.mlp
        h = F.gelu(_batch_norm(mlp.norm1, _conv(mlp.fc1, x, width * mlp_ratio)))
        h = _batch_norm(mlp.norm2, _conv(mlp.fc2, h, width))
        return x + h * self.ls2.gamma[:width].view(1, -1, 1, 1)


class ElasticMeta3D(Meta3D):
    def forward(self, x: torch.Tensor, mlp_ratio: int) -> torch.Tensor:  # type: ignore[override]
        width = x.shape[-1]
        attn: Attention = self.token_mixer
        # Only the input of qkv and the output of proj are elastic: heads and key dim are fixed.
        h = attn.attend(_linear(attn.qkv, _layer_norm(self.norm1, x), attn.qkv.out_features))
        x = x + _linear(attn.proj, h, width) * self.ls1.gamma[:width]
        mlp: Mlp = self.mlp
        h = F.gelu(_linear(mlp.fc1, _layer_norm(self.norm2, x), width * mlp_ratio))
        return x + _linear(mlp.fc2, h, width) * self.ls2.gamma[:width]


class LastStagePosition(nn.Module):
    """One position of the last stage: a Meta4D block, a Meta3D block, or both to choose from."""

    def __init__(self, meta4d: ElasticMeta4D | None, meta3d: ElasticMeta3D | None) -> None:
        super().__init__()
        self.meta4d = meta4d
        self.meta3d = meta3d


class ElasticStage(nn.Module):
    def __init__(self, blocks: list[nn.Module], downsample: ElasticDownsample | None) -> None:
        super().__init__()
        self.downsample = downsample if downsample is not None else nn.Identity()
        self.blocks = nn.ModuleList(blocks)


def _last_stage_kinds(space: SearchSpace) -> list[set[str]]:
    """For each position of the last stage, the block kinds some architecture of the space puts there."""
    kinds: list[set[str]] = [set() for _ in range(space.stages[-1].depth_max)]
    for depth, num_meta3d in space.last_stage_choices():
        for position in range(depth):
            kinds[position].add("meta3d" if position >= depth - num_meta3d else "meta4d")
    return kinds


class Supernet(nn.Module):
    """All architectures of ``space`` in one network; ``supernet(x, spec)`` runs one of them."""

    def __init__(self, space: SearchSpace) -> None:
        super().__init__()
        self.space = space
        largest = space.largest()
        widths, ratios = largest.widths, largest.mlp_ratios
        self.stem = ElasticStem(widths[0])
        stages = []
        last = space.num_stages - 1
        for i, stage in enumerate(space.stages):
            downsample = ElasticDownsample(widths[i - 1], widths[i]) if i else None
            if i < last:
                blocks: list[nn.Module] = [ElasticMeta4D(widths[i], ratios[i]) for _ in range(stage.depth_max)]
            else:
                resolution = largest.stage_resolutions[i]
                blocks = [
                    LastStagePosition(
                        ElasticMeta4D(widths[i], ratios[i]) if "meta4d" in kinds else None,
                        ElasticMeta3D(widths[i], ratios[i], space.attn_heads, space.attn_key_dim, resolution)
                        if "meta3d" in kinds
                        else None,
                    )
                    for kinds in _last_stage_kinds(space)
                ]
            stages.append(ElasticStage(blocks, downsample))
        self.stages = nn.ModuleList(stages)
        self.norm = nn.LayerNorm(widths[-1])
        self.head = nn.Linear(widths[-1], space.num_classes)
        self.head_dist = nn.Linear(widths[-1], space.num_classes)
        # Same initialisation as the static model, so a freshly built supernet's largest subnet
        # starts where a freshly built static model would.
        self.apply(_init_linear)
        self.accumulate_in_slice(True)

    def accumulate_in_slice(self, enabled: bool) -> None:
        """Whether the gradients of large conv/linear weights are added into the slice each subnet
        uses (on: the default, faster at small batches on large spaces) or built at full size by
        autograd's slice backward (off: what DistributedDataParallel needs, since it waits for each
        weight's own gradient hook)."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                weight = module.weight
                if enabled and weight.numel() >= _IN_SLICE_MIN_NUMEL:
                    weight._efnas_slice_gradient = _SliceGradient()  # type: ignore[attr-defined]
                elif hasattr(weight, "_efnas_slice_gradient"):
                    del weight._efnas_slice_gradient  # type: ignore[attr-defined]

    def forward(self, x: torch.Tensor, spec: ArchSpec) -> torch.Tensor:
        """Logits of architecture ``spec`` (which must belong to this supernet's space)."""
        x = self.stem(x, spec.widths[0])
        last = spec.num_stages - 1
        for i, stage in enumerate(self.stages):
            if i:
                x = stage.downsample(x, spec.widths[i])
            ratio = spec.mlp_ratios[i]
            if i < last:
                for block in stage.blocks[: spec.depths[i]]:
                    x = block(x, ratio)
                continue
            positions = iter(stage.blocks)
            for kind in stage_block_layout(spec, i):
                if kind == "flat":
                    x = x.flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, N, C)
                else:
                    x = getattr(next(positions), kind)(x, ratio)
        x = _layer_norm(self.norm, x).mean(dim=1)
        classes = spec.num_classes
        return (_linear(self.head, x, classes) + _linear(self.head_dist, x, classes)) / 2

    def compile_blocks(self, *, backend: str = "inductor") -> None:
        """``torch.compile`` each block (stem, downsamples, Meta4D and Meta3D blocks) in place, with
        dynamic shapes: a block's code does not depend on the architecture beyond its input's
        shape and the MLP ratio, so a few graphs serve every subnet (compiling the whole forward
        would recompile for every new architecture). Parameter names do not change."""
        for module in self.modules():
            if isinstance(module, (ElasticStem, ElasticDownsample, ElasticMeta4D, ElasticMeta3D)):
                module.compile(dynamic=True, backend=backend)

    # -- static models in and out -------------------------------------------------------------

    def check(self, spec: ArchSpec) -> ArchSpec:
        """``spec`` itself, or a one-line error if it is not an architecture of this supernet."""
        return self.space.validate(spec)

    def extract(self, spec: ArchSpec) -> EfficientFormer:
        """The plain static model of ``spec`` with this supernet's weights (and BN statistics) copied in."""
        self.check(spec)
        model = build_model(spec)
        source = dict(self.state_dict(keep_vars=False))
        with torch.no_grad():
            for name, tensor in model.state_dict(keep_vars=False).items():
                tensor.copy_(_prefix(source[supernet_key(spec, name)], tensor.shape))
        return model.train(self.training)

    def load_static_state_dict(self, state_dict: Mapping[str, torch.Tensor], spec: ArchSpec) -> list[str]:
        """Copy a static model's weights (ours or timm's, same layout) into the slices ``spec`` uses.

        Returns the keys that were skipped because their shape does not fit (e.g. a 1000-class head
        when the supernet is built for 37 classes); raises if anything else is missing or extra.
        """
        self.check(spec)
        expected = build_model(spec).state_dict()
        missing = sorted(set(expected) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(expected))
        if missing or unexpected:
            raise EfnasError(
                f"checkpoint does not match architecture {spec.label()}: "
                f"{len(missing)} missing key(s) (first: {missing[:1]}), {len(unexpected)} unexpected (first: {unexpected[:1]})"
            )
        skipped = []
        target = self.state_dict(keep_vars=False)
        with torch.no_grad():
            for name, value in state_dict.items():
                if value.shape != expected[name].shape:
                    skipped.append(name)
                    continue
                _prefix(target[supernet_key(spec, name)], value.shape).copy_(value)
        return skipped


_LAST_BLOCK = re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.(.*)$")


def supernet_key(spec: ArchSpec, static_key: str) -> str:
    """The supernet parameter that holds (a superset of) static parameter ``static_key`` of ``spec``."""
    match = _LAST_BLOCK.match(static_key)
    if not match or int(match.group(1)) != spec.num_stages - 1:
        return static_key
    stage, index, rest = int(match.group(1)), int(match.group(2)), match.group(3)
    layout = stage_block_layout(spec, stage)
    kind = layout[index]
    position = index - (1 if "flat" in layout[:index] else 0)
    return f"stages.{stage}.blocks.{position}.{kind}.{rest}"


def _prefix(tensor: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The leading block of ``tensor`` with the given shape: how every elastic dimension is shared."""
    return tensor[tuple(slice(0, n) for n in shape)]


def infer_spec(state_dict: Mapping[str, torch.Tensor], space: SearchSpace) -> ArchSpec:
    """The architecture of a static (timm-layout) state dict, read off its keys and shapes."""
    try:
        stage_ids = sorted({int(k.split(".")[1]) for k in state_dict if k.startswith("stages.")})
        widths, depths, ratios = [], [], []
        num_meta3d = 0
        for stage in stage_ids:
            blocks = sorted(
                {int(k.split(".")[3]) for k in state_dict if k.startswith(f"stages.{stage}.blocks.")}
            )
            fc1 = state_dict[f"stages.{stage}.blocks.{blocks[0]}.mlp.fc1.weight"]
            widths.append(int(fc1.shape[1]))
            ratios.append(int(fc1.shape[0]) // int(fc1.shape[1]))
            depths.append(len(blocks))
            if stage == stage_ids[-1]:
                num_meta3d = sum(
                    1 for b in blocks if f"stages.{stage}.blocks.{b}.token_mixer.qkv.weight" in state_dict
                )
        num_classes = int(state_dict["head.weight"].shape[0])
    except (KeyError, IndexError, ValueError) as exc:
        raise EfnasError(f"not an EfficientFormer state dict (could not read its architecture: {exc})") from None
    if len(stage_ids) != space.num_stages:
        raise EfnasError(f"the checkpoint has {len(stage_ids)} stages but space '{space.name}' has {space.num_stages}")
    return ArchSpec(
        widths=tuple(widths),
        depths=tuple(depths),
        num_meta3d=num_meta3d,
        mlp_ratios=tuple(ratios),
        resolution=space.resolution,
        num_classes=num_classes,
        attn_heads=space.attn_heads,
        attn_key_dim=space.attn_key_dim,
    )
