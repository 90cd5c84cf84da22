"""The elastic supernet: every subnet equals its extracted static model; timm warm start."""

from __future__ import annotations

import random

import pytest
import timm
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supernet import EfnasError, build_model, load_space
from supernet.elastic import Supernet, infer_spec

TINY = load_space("tiny")
V1 = load_space("efficientformer-v1")


def _randomise_statistics(module: torch.nn.Module, seed: int) -> None:
    """Non-trivial BN statistics, layer scales and attention biases, so that slicing mistakes show."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if not tensor.is_floating_point():
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif name.endswith(("running_mean", "gamma", "attention_biases")) or ".norm" in name:
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.2 + (1.0 if name.endswith("norm1.weight") else 0.0))


@pytest.fixture(scope="module")
def tiny_supernet():
    torch.manual_seed(0)
    supernet = Supernet(TINY)
    _randomise_statistics(supernet, 1)
    return supernet.eval()


@pytest.fixture(scope="module")
def v1_supernet():
    torch.manual_seed(0)
    supernet = Supernet(V1)
    _randomise_statistics(supernet, 2)
    return supernet.eval()


def _check_extraction(supernet, space, seed):
    spec = space.sample(random.Random(seed))
    static = supernet.extract(spec).eval()
    x = torch.randn(2, 3, space.resolution, space.resolution, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        delta = (static(x) - supernet(x, spec)).abs().max().item()
    assert delta <= 1e-5, spec.label()
    assert infer_spec(static.state_dict(), space) == spec


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 2**31))
def test_tiny_extract_equals_supernet(tiny_supernet, seed):
    _check_extraction(tiny_supernet, TINY, seed)


@pytest.mark.slow
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 2**31))
def test_v1_extract_equals_supernet(v1_supernet, seed):
    # Below 224px the attention grid differs, so this runs the real resolution: a few seconds each.
    _check_extraction(v1_supernet, V1, seed)


def test_extremes_and_presets_extract(tiny_supernet):
    x = torch.randn(3, 3, 32, 32)
    for spec in (TINY.largest(), TINY.smallest(), *(s for _, s in TINY.presets)):
        with torch.no_grad():
            assert torch.equal(tiny_supernet.extract(spec).eval()(x), tiny_supernet(x, spec))


def test_weights_are_shared_views(tiny_supernet):
    spec = TINY.smallest()
    before = tiny_supernet.stages[1].blocks[0].mlp.fc1.weight.detach().clone()
    small = tiny_supernet.extract(spec)
    small.stages[1].blocks[0].mlp.fc1.weight.data.add_(1.0)  # extraction copies: the supernet is untouched
    assert torch.equal(tiny_supernet.stages[1].blocks[0].mlp.fc1.weight, before)
    # One parameter tensor per module in the supernet, whatever the number of subnets.
    assert sum(p.numel() for p in tiny_supernet.parameters()) < 3 * sum(p.numel() for p in build_model(TINY.largest()).parameters())


def test_training_a_subnet_updates_only_its_slices():
    torch.manual_seed(0)
    supernet = Supernet(TINY).train()
    spec = TINY.smallest()
    supernet(torch.randn(4, 3, 32, 32), spec).sum().backward()
    fc1 = supernet.stages[0].blocks[0].mlp.fc1.weight.grad
    hidden, width = spec.widths[0] * spec.mlp_ratios[0], spec.widths[0]
    assert fc1[:hidden, :width].abs().sum() > 0
    assert fc1[hidden:].abs().sum() == 0 and fc1[:, width:].abs().sum() == 0
    assert supernet.stages[0].blocks[1].mlp.fc1.weight.grad is None  # depth 1: block 1 unused
    mean = supernet.stages[0].blocks[0].mlp.norm1.running_mean
    assert mean[:hidden].abs().sum() > 0 and mean[hidden:].abs().sum() == 0  # sliced BN statistics


@pytest.mark.parametrize("min_numel", [1, 1 << 15])
def test_gradients_kept_in_the_slice_equal_autograds(monkeypatch, min_numel):
    """Weights whose gradient is added into the used slice (every conv/linear weight with
    min_numel 1; with 1 << 15 the large ones only, beside plain-sliced small ones, as the default
    threshold splits v1's weights) train exactly as with autograd's slice backward:
    same gradients step after step (each step clears what the last one wrote), unused weights
    without a gradient, same weights after the optimizer."""
    import supernet.elastic as elastic

    monkeypatch.setattr(elastic, "_IN_SLICE_MIN_NUMEL", min_numel)
    torch.manual_seed(0)
    in_slice, plain = Supernet(TINY).train(), Supernet(TINY).train()
    in_slice.accumulate_in_slice(True)
    plain.load_state_dict(in_slice.state_dict())
    plain.accumulate_in_slice(False)
    assert any(hasattr(p, "_efnas_slice_gradient") for p in in_slice.parameters())
    assert not any(hasattr(p, "_efnas_slice_gradient") for p in plain.parameters())
    rng = random.Random(3)
    steps = [[TINY.largest(), TINY.smallest(), TINY.sample(rng)], [TINY.smallest(), TINY.sample(rng)], [TINY.sample(rng), TINY.largest()]]
    optimizers = [torch.optim.AdamW(m.parameters(), lr=1e-2) for m in (in_slice, plain)]
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for specs in steps:
        for model, optimizer in zip((in_slice, plain), optimizers):
            optimizer.zero_grad(set_to_none=True)
            sum(model(x, spec).logsumexp(dim=1).mean() for spec in specs).backward()
        for (name, a), b in zip(in_slice.named_parameters(), plain.parameters()):
            assert (a.grad is None) == (b.grad is None), name
            if a.grad is not None:
                assert (a.grad - b.grad).abs().max() <= 1e-6, name
        for optimizer in optimizers:
            optimizer.step()
    for a, b in zip(in_slice.parameters(), plain.parameters()):
        assert (a - b).abs().max() <= 1e-6


def test_spec_outside_space_is_rejected(tiny_supernet):
    outside = V1.preset("L1")
    with pytest.raises(EfnasError, match="outside space 'tiny'"):
        tiny_supernet.extract(outside)


def test_timm_l7_warm_start_reproduces_timm(tmp_path):
    torch.manual_seed(0)
    reference = timm.create_model("efficientformer_l7").eval()
    _randomise_statistics(reference, 3)
    path = tmp_path / "efficientformer_l7.pth"
    torch.save(reference.state_dict(), path)

    from supernet.train import load_static_checkpoint

    state = load_static_checkpoint(path)
    spec = infer_spec(state, V1)
    assert spec == V1.preset("L7")
    supernet = Supernet(V1)
    assert supernet.load_static_state_dict(state, spec) == []
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        delta = (supernet.eval()(x, spec) - reference(x)).abs().max().item()
    assert delta <= 1e-5
