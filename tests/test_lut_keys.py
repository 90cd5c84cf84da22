"""Latency units: every module of build_model(spec) priced exactly once, keys that parse back."""

from __future__ import annotations

import random
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from latency_lut import op_keys, op_units, parse_key, space_keys, space_units
from supernet import EfnasError, build_model, count_params, load_space

V1 = load_space("efficientformer-v1")
TINY = load_space("tiny")

# Modules that only hold others (or do nothing): they need no unit of their own.
_CONTAINER = re.compile(r"^(|stages|stages\.\d+|stages\.\d+\.blocks|stages\.0\.downsample)$")


def _specs(space):
    return st.integers(0, 2**32 - 1).map(lambda seed: space.sample(random.Random(seed)))


def _assert_covers_once(spec):
    with torch.device("meta"):  # structure only: no memory, no initialisation
        model = build_model(spec)
        unit_params = sum(sum(p.numel() for p in placed.unit.build().parameters()) for placed in op_units(spec))
    paths = [path for placed in op_units(spec) for path in placed.paths]
    assert len(paths) == len(set(paths)), "a module is priced twice"
    names = dict(model.named_modules())
    assert all(path in names for path in paths), "a unit points at a module the model lacks"
    for name in names:
        owners = [p for p in paths if name == p or name.startswith(p + ".")]
        if _CONTAINER.match(name):
            assert not owners
        else:
            assert len(owners) == 1, f"module {name} is priced by {owners}"
    assert unit_params == count_params(spec)


@settings(max_examples=25, deadline=None)
@given(_specs(V1))
def test_v1_units_cover_every_module_once(spec):
    _assert_covers_once(spec)
    assert {key for key, _ in op_keys(spec)} <= space_keys(V1)


@settings(max_examples=40, deadline=None)
@given(_specs(TINY))
def test_tiny_units_cover_every_module_once(spec):
    _assert_covers_once(spec)
    keys = op_keys(spec)
    assert sum(count for _, count in keys) == len(op_units(spec))
    assert {key for key, _ in keys} <= space_keys(TINY)


def _run_units(spec, x):
    """Run the units one after the other with the model's own weights."""
    model = build_model(spec).eval()
    state = model.state_dict()
    with torch.no_grad():
        expected = model(x)
        for placed in op_units(spec):
            module = placed.unit.build().eval()
            if placed.unit.kind == "head":
                part = {k: v for k, v in state.items() if k.split(".")[0] in placed.paths}
            else:
                prefix = placed.paths[0] + "."
                part = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            module.load_state_dict(part, strict=True)
            assert tuple(x.shape) == placed.unit.input_shape(x.shape[0])
            x = module(x)
            assert tuple(x.shape) == placed.unit.output_shape(x.shape[0])
    return expected, x


@settings(max_examples=15, deadline=None)
@given(_specs(TINY))
def test_units_chained_compute_the_model(spec):
    x = torch.randn(2, 3, spec.resolution, spec.resolution, generator=torch.Generator().manual_seed(0))
    expected, got = _run_units(spec, x)
    assert torch.allclose(expected, got, atol=1e-5)


def test_units_chained_compute_l1():
    spec = V1.preset("L1")
    expected, got = _run_units(spec, torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0)))
    assert torch.allclose(expected, got, atol=1e-5)


def test_l1_keys_are_readable():
    assert op_keys(V1.preset("L1")) == [
        ("stem:w48:r224", 1),
        ("meta4d:w48:r56:m4", 3),
        ("embed:w48-96:r56", 1),
        ("meta4d:w96:r28:m4", 2),
        ("embed:w96-224:r28", 1),
        ("meta4d:w224:r14:m4", 6),
        ("embed:w224-448:r14", 1),
        ("meta4d:w448:r7:m4", 3),
        ("flat:w448:r7", 1),
        ("meta3d:w448:r7:m4:h8:k32", 1),
        ("head:w448:r7:c1000", 1),
    ]


def test_space_keys_are_exactly_what_specs_use():
    keys = space_keys(V1)
    kinds = {}
    for key in keys:
        kinds[key.split(":")[0]] = kinds.get(key.split(":")[0], 0) + 1
    # stem per stage-1 width; embed per (in, out) width pair; meta4d per width x ratio; one flat
    # and one head per last-stage width; meta3d per last-stage width x ratio.
    assert kinds == {"stem": 5, "embed": 5 * 9 + 9 * 15 + 15 * 29, "meta4d": 3 * (5 + 9 + 15 + 29), "flat": 29, "meta3d": 87, "head": 29}
    used = set()
    rng = random.Random(0)
    for _ in range(3000):
        used |= {key for key, _ in op_keys(TINY.sample(rng))}
    assert used == space_keys(TINY)
    assert space_keys(TINY.with_num_classes(10)) - space_keys(TINY) == {
        f"head:w{w}:r{TINY.largest().stage_resolutions[-1]}:c10" for w in TINY.stages[-1].widths
    }


def test_keys_parse_back():
    for key, unit in space_units(V1).items():
        assert parse_key(key) == unit and unit.key == key


@pytest.mark.parametrize(
    "key, message",
    [
        ("conv:w48:r56", "must start with one of stem, embed"),
        ("meta4d:w48:r56", "expected the form meta4d:w2:r8:m4"),
        ("embed:w48:r56", "expected the form embed:w2-2:r8"),
        ("meta4d:w48-96:r56:m4", "expected the form meta4d"),
        ("meta4d:r56:w48:m4", "expected the form meta4d"),
        ("meta4d:w0:r56:m4", "every number in it must be positive"),
        ("meta4d:w048:r56:m4", "not in canonical form; write it as meta4d:w48:r56:m4"),
    ],
)
def test_bad_keys_are_named(key, message):
    with pytest.raises(EfnasError) as info:
        parse_key(key)
    assert message in str(info.value) and "\n" not in str(info.value)
