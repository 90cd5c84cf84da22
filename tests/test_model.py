"""The static model against timm's EfficientFormer, the reference implementation."""

from __future__ import annotations

import random

import pytest
import timm
import torch

from supernet import build_model, count_macs, count_params
from supernet.model import stage_block_layout

PUBLISHED_PARAMS = {"L1": 12_289_928, "L3": 31_406_000, "L7": 82_229_328}


@pytest.mark.parametrize("preset", ["L1", "L3", "L7"])
def test_params_and_state_dict_match_timm(v1_space, preset):
    spec = v1_space.preset(preset)
    ours = build_model(spec)
    torch.manual_seed(0)
    theirs = timm.create_model(f"efficientformer_{preset.lower()}").eval()
    assert count_params(spec) == sum(p.numel() for p in ours.parameters()) == PUBLISHED_PARAMS[preset]
    assert sum(p.numel() for p in theirs.parameters()) == PUBLISHED_PARAMS[preset]
    theirs_sd = theirs.state_dict()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs_sd.items()}
    # Random BN statistics and layer scales, so that every parameter matters for the comparison.
    with torch.no_grad():
        for name, tensor in theirs_sd.items():
            if not tensor.is_floating_point():
                continue
            if name.endswith(("running_var",)):
                tensor.uniform_(0.5, 1.5)
            elif name.endswith(("running_mean", "gamma", "attention_biases")) or "norm" in name:
                tensor.normal_(0, 0.2 if "gamma" in name or "biases" in name else 0.1)
    ours.load_state_dict(theirs_sd, strict=True)
    ours.eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        delta = (ours(x) - theirs(x)).abs().max().item()
    assert delta <= 1e-5
    # and our weights load into timm
    theirs.load_state_dict(build_model(spec).state_dict(), strict=True)


def test_macs_close_to_published(v1_space):
    # The paper reports 1.30 / 3.93 / 10.17 GMACs; it also counts a few element-wise ops we leave out.
    for preset, published in (("L1", 1.30), ("L3", 3.93), ("L7", 10.17)):
        assert abs(count_macs(v1_space.preset(preset)) / 1e9 - published) / published < 0.015


def test_random_specs_build_and_count(tiny_space, v1_space):
    rng = random.Random(3)
    for space in (tiny_space,) * 20 + (v1_space,) * 3:
        spec = space.sample(rng)
        model = build_model(spec).eval()
        assert count_params(spec) == sum(p.numel() for p in model.parameters())
        with torch.no_grad():
            out = model(torch.randn(1, 3, spec.resolution, spec.resolution))
        assert out.shape == (1, spec.num_classes)


def test_flat_goes_before_meta3d_or_ends_the_last_stage(tiny_space):
    spec = tiny_space.spec((16, 24, 32, 48), (1, 1, 1, 2), 0)
    assert stage_block_layout(spec, 3) == ["meta4d", "meta4d", "flat"]
    spec = tiny_space.spec((16, 24, 32, 48), (1, 1, 1, 2), 2)
    assert stage_block_layout(spec, 3) == ["flat", "meta3d", "meta3d"]
