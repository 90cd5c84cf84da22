"""ArchSpec and SearchSpace: JSON round trips, validation messages, space files, fingerprints."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supernet import ArchSpec, EfnasError, SearchSpace, load_arch, load_space
from supernet.space import builtin_space_names

V1 = load_space("efficientformer-v1")


@st.composite
def v1_specs(draw):
    return V1.sample(random.Random(draw(st.integers(0, 2**32 - 1))))


@settings(max_examples=60, deadline=None)
@given(v1_specs())
def test_spec_json_round_trip(spec):
    assert V1.contains(spec)
    again = ArchSpec.from_json(spec.to_json())
    assert again == spec and hash(again) == hash(spec)
    assert ArchSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_presets_are_the_published_models():
    assert V1.preset("L1").widths == (48, 96, 224, 448) and V1.preset("L1").depths == (3, 2, 6, 4)
    assert V1.preset("l3").num_meta3d == 4 and V1.preset("L3").depths == (4, 4, 12, 6)
    assert V1.largest() == V1.preset("L7")
    for name in V1.preset_names:
        assert V1.contains(V1.preset(name))


def test_the_narrowest_deepest_subnet_is_the_smallest_at_full_depth():
    corner = V1.narrowest_deepest()
    assert V1.contains(corner)
    assert corner.widths == V1.smallest().widths and corner.mlp_ratios == V1.smallest().mlp_ratios
    assert corner.depths == V1.largest().depths and corner.num_meta3d == V1.meta3d_min


def test_widths_move_in_steps_of_16():
    for stage in V1.stages:
        assert all(b - a == 16 for a, b in zip(stage.widths, stage.widths[1:]))
    assert V1.stages[3].widths[0] == 320 and V1.stages[3].widths[-1] == 768


@pytest.mark.parametrize(
    "change, message",
    [
        ({"widths": (48, 96, 224, 500)}, "width 500 is not a choice of stage 4: choices are 320 to 768 in steps of 16"),
        ({"depths": (3, 2, 19, 4)}, "depth 19 is not a choice of stage 3: choices are 1 to 18"),
        ({"mlp_ratios": (4, 4, 5, 4)}, "MLP ratio 5 is not a choice of stage 3"),
        ({"num_meta3d": 0, "depths": (3, 2, 6, 4), "resolution": 256}, "resolution 256 is not the space's resolution 224"),
        ({"num_classes": 10}, "num_classes 10 is not the space's num_classes 1000"),
        ({"attn_heads": 4}, "attn_heads 4 is not the space's attn_heads 8"),
    ],
)
def test_validation_names_the_dimension(change, message):
    spec = ArchSpec(**{**V1.preset("L1").to_dict(), **change})
    with pytest.raises(EfnasError) as info:
        V1.validate(spec)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_meta3d_count_outside_space():
    tiny = load_space("tiny")
    spec = ArchSpec(**{**tiny.preset("L7").to_dict(), "depths": (2, 2, 3, 2), "num_meta3d": 2})
    assert tiny.contains(spec)
    with pytest.raises(EfnasError, match="num_meta3d 3 must be between 0 and the last stage's depth 2"):
        ArchSpec(**{**spec.to_dict(), "num_meta3d": 3})


@pytest.mark.parametrize(
    "data, message",
    [
        ({"widths": [48, 96], "depths": [1, 1, 1], "num_meta3d": 0, "mlp_ratios": [4, 4]}, "one entry per stage"),
        ({"widths": [48, 95], "depths": [1, 1], "num_meta3d": 0, "mlp_ratios": [4, 4]}, "width 95 of stage 2 must be a positive even number"),
        ({"widths": [48, 96], "depths": [1, 0], "num_meta3d": 0, "mlp_ratios": [4, 4]}, "depth 0 of stage 2 must be at least 1"),
        ({"widths": [48, 96], "depths": [1, 1], "num_meta3d": 2, "mlp_ratios": [4, 4]}, "num_meta3d 2 must be between 0"),
        ({"widths": [48, 96], "depths": [1, 1], "num_meta3d": 0, "mlp_ratios": [4, 0]}, "MLP ratio 0 of stage 2"),
        ({"widths": "48", "depths": [1, 1], "num_meta3d": 0}, "must be a list of integers"),
        ({"widths": [48, 96], "depths": [1, 1]}, "missing field(s) num_meta3d"),
        ({"widths": [48, 96], "depths": [1, 1], "num_meta3d": 0, "width": 3}, "unknown architecture field(s) width"),
        ({"widths": [48, 96], "depths": [1, 1], "num_meta3d": 0, "mlp_ratios": [4, 4], "resolution": "224"}, "resolution must be an integer"),
    ],
)
def test_spec_intrinsic_errors(data, message):
    with pytest.raises(EfnasError) as info:
        ArchSpec.from_dict(data)
    assert message in str(info.value)


def test_load_arch_reads_bare_and_wrapped(tmp_path):
    spec = V1.preset("L3")
    (tmp_path / "a.json").write_text(spec.to_json())
    (tmp_path / "best.json").write_text(json.dumps({"arch": spec.to_dict(), "accuracy": 0.5}))
    assert load_arch(tmp_path / "a.json") == spec == load_arch(tmp_path / "best.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(EfnasError, match="not valid JSON"):
        load_arch(tmp_path / "bad.json")
    with pytest.raises(EfnasError, match="does not exist"):
        load_arch(tmp_path / "missing.json")


def test_sampling_is_seeded_and_valid(tiny_space):
    first = [tiny_space.sample(random.Random(7)) for _ in range(3)]
    assert first == [tiny_space.sample(random.Random(7)) for _ in range(3)]
    rng = random.Random(0)
    for _ in range(200):
        assert tiny_space.contains(tiny_space.sample(rng))


def test_space_size_counts_every_valid_spec(tiny_space):
    # Brute-force count of the last stage's (depth, meta3d) pairs against the closed form.
    last = tiny_space.stages[-1]
    pairs = sum(1 for d in last.depths for m in range(tiny_space.meta3d_min, tiny_space.meta3d_max + 1) if m <= d)
    per_stage = 1
    for stage in tiny_space.stages[:-1]:
        per_stage *= len(stage.widths) * len(stage.depths) * len(stage.mlp_ratios)
    assert tiny_space.size() == per_stage * pairs * len(last.widths) * len(last.mlp_ratios)


def test_last_stage_choices_are_exactly_the_valid_pairs(tiny_space):
    last = tiny_space.stages[-1]
    brute = [(d, m) for d in last.depths for m in range(tiny_space.meta3d_min, tiny_space.meta3d_max + 1) if m <= d]
    assert list(tiny_space.last_stage_choices()) == brute
    rng = random.Random(3)
    assert all((s.depths[-1], s.num_meta3d) in brute for s in (tiny_space.sample(rng) for _ in range(200)))


def test_edit_changes_one_stage_and_stays_in_the_space(tiny_space):
    spec = tiny_space.preset("L3")
    edited = tiny_space.edit(spec, stage=2, width=80, mlp_ratio=2)
    assert edited.widths == (24, 32, 80, 96) and edited.mlp_ratios == (4, 4, 2, 4) and edited.depths == spec.depths
    assert tiny_space.edit(spec, stage=3, depth=1, num_meta3d=0).depths[-1] == 1
    with pytest.raises(EfnasError, match="width 40 is not a choice of stage 3"):
        tiny_space.edit(spec, stage=2, width=40)
    with pytest.raises(EfnasError, match="num_meta3d 2 must be between 0 and the last stage's depth 1"):
        tiny_space.edit(spec, stage=3, depth=1, num_meta3d=2)
    with pytest.raises(EfnasError, match="needs the stage"):
        tiny_space.edit(spec, width=48)
    with pytest.raises(EfnasError, match="stage index 4 is outside 0..3"):
        tiny_space.edit(spec, stage=4, depth=1)


def test_fingerprint_is_stable_and_structural(v1_space):
    assert v1_space.fingerprint() == load_space("efficientformer-v1").fingerprint()
    assert v1_space.with_num_classes(10).fingerprint() == v1_space.fingerprint()
    renamed = SearchSpace.from_dict({**v1_space.to_dict(), "name": "copy"})
    assert renamed.fingerprint() == v1_space.fingerprint()
    narrowed = v1_space.to_dict()
    narrowed["stages"][0]["widths"] = [48, 64]
    assert SearchSpace.from_dict({**narrowed, "presets": {}}).fingerprint() != v1_space.fingerprint()
    assert len({load_space(name).fingerprint() for name in builtin_space_names()}) == len(builtin_space_names())


def test_space_dict_round_trip(v1_space, tiny_space):
    for space in (v1_space, tiny_space):
        assert SearchSpace.from_dict(json.loads(json.dumps(space.to_dict()))) == space


def test_user_space_file(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(
        """
name = "mine"
resolution = 64
num_classes = 5
attn_heads = 2
attn_key_dim = 8
mlp_ratios = [2, 4]
meta3d = [0, 1]
[[stages]]
widths = {min = 8, max = 16, step = 8}
depths = [1, 2]
[[stages]]
widths = [16, 32]
depths = [1, 2]
mlp_ratios = [4]
[presets.S]
widths = [8, 16]
depths = [1, 1]
num_meta3d = 1
"""
    )
    space = load_space(path)
    assert space.stages[0].widths == (8, 16) and space.stages[1].mlp_ratios == (4,)
    assert space.preset("S").mlp_ratios == (4, 4) and space.preset("S").resolution == 64


@pytest.mark.parametrize(
    "text, message",
    [
        ("name = 'x'\nresolution = 32\nnum_classes = 2\nstages = []\n", "'stages' must be a list of at least 2"),
        ("name = 'x'\nresolution = 32\nnum_classes = 2\nmlp_ratios=[2]\n[[stages]]\nwidths=[8]\ndepths=[2,1]\n[[stages]]\nwidths=[8]\ndepths=[1,1]\n", "stage 1 depths must be [min, max]"),
        ("name = 'x'\nresolution = 32\nnum_classes = 2\nmlp_ratios=[2]\n[[stages]]\nwidths=[9]\ndepths=[1,1]\n[[stages]]\nwidths=[8]\ndepths=[1,1]\n", "widths must be even"),
        ("name = 'x'\nresolution = 32\nnum_classes = 2\nmlp_ratios=[2]\nmeta3d=[0,3]\n[[stages]]\nwidths=[8]\ndepths=[1,1]\n[[stages]]\nwidths=[8]\ndepths=[1,2]\n", "meta3d maximum 3 exceeds"),
        ("name = 'x'\nresolution = 32\nnum_classes = 2\nmlp_ratios=[2]\ncolour='red'\n", "unknown key(s) colour"),
        ("name = 'x'\nnum_classes = 2\nmlp_ratios=[2]\n[[stages]]\nwidths=[8]\ndepths=[1,1]\n[[stages]]\nwidths=[8]\ndepths=[1,1]\n", "missing key 'resolution'"),
        ("name = 'x'\nresolution = 32\nnum_classes = 2\nmlp_ratios=[2]\n[[stages]]\nwidths=[8]\ndepths=[1,1]\n[[stages]]\nwidths=[8]\ndepths=[1,1]\n[presets.P]\nwidths=[16,8]\ndepths=[1,1]\nnum_meta3d=0\n", "preset P: architecture is outside space 'x': width 16 is not a choice of stage 1"),
        ("name = [", "is not valid TOML"),
    ],
)
def test_space_file_errors_are_one_line(tmp_path, text, message):
    path = tmp_path / "space.toml"
    path.write_text(text)
    with pytest.raises(EfnasError) as info:
        load_space(path)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_unknown_space_name():
    with pytest.raises(EfnasError, match="built-in spaces are efficientformer-v1"):
        load_space("efficientformer-v9")
