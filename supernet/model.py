"""The plain (static) EfficientFormer that an :class:`ArchSpec` describes.

Module names and parameter shapes are those of timm's ``efficientformer_l1/l3/l7``, so a timm
checkpoint loads with ``strict=True`` into ``build_model(preset)`` and our weights load into timm.
Read it top to bottom: stem, stages of Meta4D blocks (with one ``Flat`` before the Meta3D blocks
of the last stage), final norm, two heads averaged.
"""

from __future__ import annotations

import torch
from torch import nn

from supernet.space import ArchSpec

__all__ = ["EfficientFormer", "build_model", "count_macs", "count_params"]

POOL_SIZE = 3
ATTN_RATIO = 4
LAYER_SCALE_INIT = 1e-5


def attention_bias_index(resolution: int) -> torch.Tensor:
    """For every pair of positions on a ``resolution``² grid, the index of their |dy|,|dx| offset."""
    ys, xs = torch.meshgrid(torch.arange(resolution), torch.arange(resolution), indexing="ij")
    pos = torch.stack((ys.flatten(), xs.flatten()))  # (2, N)
    rel = (pos[:, :, None] - pos[:, None, :]).abs()  # (2, N, N)
    return rel[0] * resolution + rel[1]


class Stem(nn.Sequential):
    """Two 3x3/s2 conv + BN + ReLU: width/2 channels, then width."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width // 2, kernel_size=3, stride=2, padding=1)
        self.norm1 = nn.BatchNorm2d(width // 2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(width // 2, width, kernel_size=3, stride=2, padding=1)
        self.norm2 = nn.BatchNorm2d(width)
        self.act2 = nn.ReLU()


class Downsample(nn.Module):
    """The embedding between stages: 3x3/s2 conv + BN."""

    def __init__(self, in_width: int, out_width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_width, out_width, kernel_size=3, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(out_width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class Flat(nn.Module):
    """(B, C, H, W) feature map -> (B, H*W, C) tokens, once, before the first Meta3D block."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).transpose(1, 2)


class Pooling(nn.Module):
    """PoolFormer's token mixer: average of the neighbourhood minus the token itself."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(POOL_SIZE, stride=1, padding=POOL_SIZE // 2, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x) - x


class ConvMlp(nn.Module):
    """1x1-conv MLP with BatchNorm after each conv (Meta4D)."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(width, hidden, 1)
        self.norm1 = nn.BatchNorm2d(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, width, 1)
        self.norm2 = nn.BatchNorm2d(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm2(self.fc2(self.act(self.norm1(self.fc1(x)))))


class Mlp(nn.Module):
    """Linear MLP on tokens (Meta3D)."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    """Per-channel scale on a residual branch; ``channel_dim`` 1 for feature maps, -1 for tokens."""

    def __init__(self, width: int, channel_dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((width,), LAYER_SCALE_INIT))
        self.channel_dim = channel_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channel_dim == 1:
            return x * self.gamma.view(1, -1, 1, 1)
        return x * self.gamma


class Attention(nn.Module):
    """Multi-head self-attention with a learned bias per head and relative offset."""

    def __init__(self, width: int, heads: int, key_dim: int, resolution: int) -> None:
        super().__init__()
        self.heads = heads
        self.key_dim = key_dim
        self.value_dim = ATTN_RATIO * key_dim
        self.scale = key_dim**-0.5
        self.qkv = nn.Linear(width, heads * (2 * key_dim + self.value_dim))
        self.proj = nn.Linear(heads * self.value_dim, width)
        self.attention_biases = nn.Parameter(torch.zeros(heads, resolution * resolution))
        self.register_buffer("attention_bias_idxs", attention_bias_index(resolution))

    def attend(self, qkv: torch.Tensor) -> torch.Tensor:
        """From the (B, N, heads * (2k + v)) output of ``qkv`` to the (B, N, heads * v) input of
        ``proj``: the part the elastic supernet shares unchanged (it slices only qkv and proj)."""
        batch, tokens, _ = qkv.shape
        qkv = qkv.reshape(batch, tokens, self.heads, -1).permute(0, 2, 1, 3)  # (B, h, N, 2k+v)
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.value_dim], dim=3)
        attn = (q @ k.transpose(-2, -1)) * self.scale + self.attention_biases[:, self.attention_bias_idxs]
        return (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(batch, tokens, -1)  # (B, N, h*v)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.attend(self.qkv(x)))


class Meta4D(nn.Module):
    """Pooling token mixer and conv MLP on a (B, C, H, W) feature map."""

    def __init__(self, width: int, mlp_ratio: int) -> None:
        super().__init__()
        self.token_mixer = Pooling()
        self.ls1 = LayerScale(width, channel_dim=1)
        self.mlp = ConvMlp(width, width * mlp_ratio)
        self.ls2 = LayerScale(width, channel_dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.token_mixer(x))
        return x + self.ls2(self.mlp(x))


class Meta3D(nn.Module):
    """LayerNorm + attention and LayerNorm + linear MLP on (B, N, C) tokens."""

    def __init__(self, width: int, mlp_ratio: int, heads: int, key_dim: int, resolution: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.token_mixer = Attention(width, heads, key_dim, resolution)
        self.ls1 = LayerScale(width, channel_dim=-1)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = Mlp(width, width * mlp_ratio)
        self.ls2 = LayerScale(width, channel_dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.token_mixer(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


def stage_block_layout(spec: ArchSpec, stage: int) -> list[str]:
    """The kinds of module in ``stages.{stage}.blocks``, in order: 'meta4d', 'flat' or 'meta3d'.

    As in timm, ``Flat`` sits right before the first Meta3D block. With no Meta3D block at all, it
    ends the last stage, because the final norm and the heads work on tokens.
    """
    depth = spec.depths[stage]
    if stage != spec.num_stages - 1:
        return ["meta4d"] * depth
    num_meta4d = depth - spec.num_meta3d
    return ["meta4d"] * num_meta4d + ["flat"] + ["meta3d"] * spec.num_meta3d


class Stage(nn.Module):
    def __init__(self, spec: ArchSpec, stage: int) -> None:
        super().__init__()
        width = spec.widths[stage]
        if stage == 0:
            self.downsample: nn.Module = nn.Identity()
        else:
            self.downsample = Downsample(spec.widths[stage - 1], width)
        blocks: list[nn.Module] = []
        for kind in stage_block_layout(spec, stage):
            if kind == "meta4d":
                blocks.append(Meta4D(width, spec.mlp_ratios[stage]))
            elif kind == "flat":
                blocks.append(Flat())
            else:
                blocks.append(
                    Meta3D(
                        width,
                        spec.mlp_ratios[stage],
                        spec.attn_heads,
                        spec.attn_key_dim,
                        spec.stage_resolutions[stage],
                    )
                )
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class EfficientFormer(nn.Module):
    """A static EfficientFormer; ``spec`` is kept so the model can describe itself."""

    def __init__(self, spec: ArchSpec) -> None:
        super().__init__()
        self.spec = spec
        self.stem = Stem(spec.widths[0])
        self.stages = nn.Sequential(*(Stage(spec, i) for i in range(spec.num_stages)))
        self.norm = nn.LayerNorm(spec.widths[-1])
        self.head = nn.Linear(spec.widths[-1], spec.num_classes)
        self.head_dist = nn.Linear(spec.widths[-1], spec.num_classes)
        self.apply(_init_linear)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.stages(self.stem(x)))  # (B, N, C)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        x = x.mean(dim=1)
        # The distillation head was trained against a teacher; at inference both heads vote.
        return (self.head(x) + self.head_dist(x)) / 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _init_linear(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)


def build_model(spec: ArchSpec) -> EfficientFormer:
    """The plain EfficientFormer for ``spec``, freshly initialised."""
    return EfficientFormer(spec)


# -- analytic size and cost ------------------------------------------------------------------


def count_params(spec: ArchSpec) -> int:
    """Number of parameters of ``build_model(spec)``, computed from the spec alone."""
    conv = lambda cin, cout, k: cin * cout * k * k + cout  # noqa: E731
    bn = lambda c: 2 * c  # noqa: E731
    w0 = spec.widths[0]
    total = conv(3, w0 // 2, 3) + bn(w0 // 2) + conv(w0 // 2, w0, 3) + bn(w0)
    heads, key_dim = spec.attn_heads, spec.attn_key_dim
    qkv_out = heads * (2 + ATTN_RATIO) * key_dim
    for stage, (width, ratio, res) in enumerate(zip(spec.widths, spec.mlp_ratios, spec.stage_resolutions)):
        if stage:
            total += conv(spec.widths[stage - 1], width, 3) + bn(width)
        hidden = width * ratio
        for block in range(spec.depths[stage]):
            if spec.is_meta3d(stage, block):
                total += 2 * width * 2  # norm1, norm2
                total += width * qkv_out + qkv_out + heads * ATTN_RATIO * key_dim * width + width
                total += heads * res * res  # attention biases
                total += width * hidden + hidden + hidden * width + width
            else:
                total += conv(width, hidden, 1) + bn(hidden) + conv(hidden, width, 1) + bn(width)
            total += 2 * width  # ls1, ls2
    last = spec.widths[-1]
    return total + 2 * last + 2 * (last * spec.num_classes + spec.num_classes)


def count_macs(spec: ArchSpec) -> int:
    """Multiply-accumulates of one forward pass at batch 1 (convs, linears and attention matmuls;
    norms, activations and pooling are left out, as is customary)."""
    w0 = spec.widths[0]
    r_half = (spec.resolution - 1) // 2 + 1
    res = spec.stage_resolutions
    macs = 3 * (w0 // 2) * 9 * r_half * r_half + (w0 // 2) * w0 * 9 * res[0] * res[0]
    heads, key_dim = spec.attn_heads, spec.attn_key_dim
    value_dim = ATTN_RATIO * key_dim
    qkv_out = heads * (2 * key_dim + value_dim)
    for stage, (width, ratio) in enumerate(zip(spec.widths, spec.mlp_ratios)):
        pixels = res[stage] * res[stage]
        if stage:
            macs += spec.widths[stage - 1] * width * 9 * pixels
        hidden = width * ratio
        for block in range(spec.depths[stage]):
            macs += 2 * width * hidden * pixels
            if spec.is_meta3d(stage, block):
                macs += width * qkv_out * pixels + heads * value_dim * width * pixels
                macs += heads * pixels * pixels * (key_dim + value_dim)
    return macs + 2 * spec.widths[-1] * spec.num_classes

