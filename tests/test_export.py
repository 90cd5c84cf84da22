"""efnas export: every format written and checked against the supernet, timm compatibility, --study,
fine-tuning, and the error cases (one line, nothing left behind)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from latency_lut import BuildConfig, build_lut
from nas.cli import main
from nas.export import ExportConfig, export_subnet, load_export
from supernet import EfnasError, build_model, load_arch, load_space
from supernet.checkpoint import load_supernet
from supernet.data import load_data
from supernet.evaluate import calibration_batches, recalibrate_bn

TINY = load_space("tiny")
# Small but real settings: 2 calibration batches, 256 validation images, one thread.
FAST = {"calib_batches": 2, "batch_size": 64, "val_subset": 256, "latency_rounds": 0, "threads": 1}
FAST_ARGS = ["--calib-batches", "2", "--batch-size", "64", "--val-subset", "256", "--latency-rounds", "0", "--threads", "1", "--no-progress"]


def _inputs(resolution: int, seed: int = 123) -> torch.Tensor:
    return torch.randn(3, 3, resolution, resolution, generator=torch.Generator().manual_seed(seed))


def _onnx_logits(path: Path, x: torch.Tensor) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input": x.numpy()})[0]


def _recalibrated_reference(checkpoint: Path, spec, calib_batches: int, batch_size: int, seed: int = 0):
    """What the export should contain, computed from the supernet with the public API only."""
    supernet, info = load_supernet(checkpoint)
    model = supernet.extract(spec)
    data = load_data(info.config["data"], spec.resolution, seed=info.config["seed"])
    return recalibrate_bn(model, calibration_batches(data, calib_batches, batch_size, seed)).eval()


def _one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("efnas: error: ") and "\n" not in err, err
    assert "Traceback" not in err
    return err


def _entries(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


@pytest.fixture(scope="module")
def tiny_lut(tmp_path_factory) -> Path:
    """A real onnxruntime table of the tiny space, measured with few runs (~3 s)."""
    path = tmp_path_factory.mktemp("lut") / "tiny-ort.json"
    config = BuildConfig(rounds=2, warmup=0, retries=0, calibration_samples=0, calibration_rounds=1, calibration_runs=1)
    build_lut(TINY, path, config)
    return path


@pytest.fixture(scope="module")
def full_export(trained_tiny_supernet, tiny_lut, tmp_path_factory):
    """Preset L1 of the trained tiny supernet in every format, with a table and a latency measurement."""
    out = tmp_path_factory.mktemp("export") / "tiny-l1"
    config = ExportConfig(
        supernet=str(trained_tiny_supernet), preset="L1", out=str(out), luts=(str(tiny_lut),), **{**FAST, "latency_rounds": 2}
    )
    return export_subnet(config, show_progress=False)


@pytest.mark.slow
def test_every_format_is_written_and_checked(full_export, capsys):
    from nas._export_cli import print_summary

    out = full_export.out
    assert _entries(out) == {
        "model.pt", "model.safetensors", "config.json", "model.torchscript.pt", "model.onnx", "model.mlpackage", "arch.json",
        "export.json", "model_card.md"
    }
    record = json.loads((out / "export.json").read_text())
    assert set(record["formats"]) == {"pt", "safetensors", "torchscript", "onnx", "coreml"}
    checks = {name: item["checks"] for name, item in record["formats"].items()}
    assert checks["pt"]["strict_reload"] and checks["pt"]["max_abs_diff"] == 0.0
    assert checks["torchscript"]["max_abs_diff"] <= 1e-4
    assert checks["onnx"]["max_abs_diff"] <= 1e-4 and checks["onnx"]["opset"] == 17
    assert checks["coreml"]["convolutions"] == 13 and checks["coreml"]["operations"] > 13
    assert record["supernet"]["extraction_max_abs_diff"] <= 1e-5
    assert 0.0 <= record["metrics"]["val_top1"] <= 1.0 and record["data"]["validation"]["images"] == 256
    print_summary(full_export)
    shown = capsys.readouterr().out
    for name in ("model.pt", "model.torchscript.pt", "model.onnx", "model.mlpackage", "model_card.md"):
        assert name in shown


@pytest.mark.slow
def test_onnx_and_torchscript_match_the_supernet(full_export, trained_tiny_supernet):
    spec = TINY.preset("L1")
    reference = _recalibrated_reference(trained_tiny_supernet, spec, FAST["calib_batches"], FAST["batch_size"])
    x = _inputs(spec.resolution)
    with torch.no_grad():
        expected = reference(x)
        scripted = torch.jit.load(str(full_export.out / "model.torchscript.pt"))(x)
        loaded = load_export(full_export.out)(x)
    assert (scripted - expected).abs().max() <= 1e-4
    assert np.abs(_onnx_logits(full_export.out / "model.onnx", x) - expected.numpy()).max() <= 1e-4
    assert (loaded - expected).abs().max() <= 1e-5


@pytest.mark.slow
def test_coreml_package_reopens_with_the_right_shapes(full_export):
    import coremltools as ct

    spec_proto = ct.models.MLModel(str(full_export.out / "model.mlpackage"), skip_model_load=True).get_spec()
    (inp,) = spec_proto.description.input
    # A classifier (the tiny task's class names are known) keeps logits next to classLabel.
    (outp,) = [o for o in spec_proto.description.output if o.name == "logits"]
    assert inp.name == "image" and (inp.type.imageType.width, inp.type.imageType.height) == (32, 32)
    assert outp.name == "logits" and list(outp.type.multiArrayType.shape) == [1, 37]
    assert spec_proto.WhichOneof("Type") == "mlProgram"
    assert json.loads(spec_proto.description.metadata.userDefined["arch"]) == TINY.preset("L1").to_dict()


@pytest.mark.slow
def test_model_pt_loads_into_build_model(full_export):
    spec = load_arch(full_export.out / "arch.json")
    assert spec == TINY.preset("L1")
    model = build_model(spec)
    model.load_state_dict(torch.load(full_export.out / "model.pt", weights_only=True), strict=True)


@pytest.mark.slow
def test_model_card_says_how_it_was_made(full_export, trained_tiny_supernet, tiny_lut):
    card = (full_export.out / "model_card.md").read_text()
    record = full_export.record
    digest = hashlib.sha256(Path(trained_tiny_supernet).read_bytes()).hexdigest()
    assert record["supernet"]["sha256"] == digest and digest in card
    assert TINY.preset("L1").label() in card and f"{record['params']:,}" in card
    assert f"{100 * record['metrics']['val_top1']:.2f}%" in card
    (prediction,) = record["latency"]["predicted"]
    assert prediction["path"] == str(tiny_lut) and prediction["predicted_ms"] > 0
    assert f"{prediction['predicted_ms']:.3f} ms" in card
    measured = record["latency"]["measured"]
    assert measured["runs"] == 6 and f"median {measured['median_ms']:.3f} ms" in card
    assert record["latency"]["cpu_comparison"]["predicted_ms"] == prediction["predicted_ms"]
    assert "|Δ|" not in card.replace("\\|Δ\\|", "")  # pipes in table cells are escaped
    assert record["provenance"]["versions"]["coremltools"]


def test_arch_file_without_recalibration_equals_the_supernet(trained_tiny_supernet, tmp_path, capsys):
    spec = TINY.sample(random.Random(7))
    # A hand-written spec may leave out what the space fixes (resolution, classes, attention).
    bare = {key: value for key, value in spec.to_dict().items() if key in ("widths", "depths", "num_meta3d", "mlp_ratios")}
    (tmp_path / "arch.json").write_text(json.dumps(bare))
    # An export killed earlier left its staging folder behind; the next export removes it.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".out.partial-{dead.pid}-0a1b2c3d"
    stale.mkdir()
    argv = ["export", "--supernet", str(trained_tiny_supernet), "--arch", str(tmp_path / "arch.json"), "--out", str(tmp_path / "out"),
            "--formats", "torchscript,onnx", *FAST_ARGS, "--calib-batches", "0"]
    assert main(argv) == 0
    assert "model.onnx" in capsys.readouterr().out
    assert _entries(tmp_path) == {"arch.json", "out"}
    supernet, _ = load_supernet(trained_tiny_supernet)
    x = _inputs(spec.resolution)
    with torch.no_grad():
        expected = supernet(x, spec)
        scripted = torch.jit.load(str(tmp_path / "out" / "model.torchscript.pt"))(x)
    assert (scripted - expected).abs().max() <= 1e-4
    assert np.abs(_onnx_logits(tmp_path / "out" / "model.onnx", x) - expected.numpy()).max() <= 1e-4
    assert load_arch(tmp_path / "out" / "arch.json") == spec


def test_finetune_is_distilled_and_seeded(trained_tiny_supernet, tmp_path):
    base = {"supernet": str(trained_tiny_supernet), "preset": "L1", "formats": ("pt",), **FAST}
    tuned = [
        export_subnet(ExportConfig(out=str(tmp_path / f"tuned{i}"), finetune_epochs=1, finetune_steps=3, **base), show_progress=False)
        for i in range(2)
    ]
    plain = export_subnet(ExportConfig(out=str(tmp_path / "plain"), **base), show_progress=False)
    first, second, untuned = (torch.load(r.out / "model.pt", weights_only=True) for r in (*tuned, plain))
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert not torch.equal(first["head.weight"], untuned["head.weight"])
    finetune = tuned[0].record["finetune"]
    assert finetune["steps"] == 3 and finetune["first_loss"] > 0
    assert tuned[0].record["metrics"]["val_top1_inherited"] == plain.record["metrics"]["val_top1"]
    assert "after fine-tuning 1 epoch(s), 3 steps" in (tuned[0].out / "model_card.md").read_text()


def _image_folder(root: Path) -> Path:
    from torchvision.io import write_png

    generator = torch.Generator().manual_seed(0)
    for split, count in (("train", 2), ("val", 1)):
        for name in ("cat", "dog"):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                write_png(torch.randint(0, 256, (3, 48, 40), dtype=torch.uint8, generator=generator), str(root / split / name / f"{i}.png"))
    return root


@pytest.mark.slow
def test_l1_export_loads_strictly_into_timm(tmp_path):
    import timm

    from supernet.train import TrainConfig, train

    # A real v1 supernet checkpoint, written by `efnas train --epochs 0` (initialised, not trained).
    data = _image_folder(tmp_path / "images")
    config = TrainConfig(space="efficientformer-v1", data=f"imagefolder:{data}", out=str(tmp_path / "v1"), epochs=0,
                         batch_size=2, calib_batches=1, threads=1)
    checkpoint = train(config, show_progress=False).checkpoint
    result = export_subnet(
        ExportConfig(supernet=str(checkpoint), preset="L1", out=str(tmp_path / "l1"), formats=("pt",), calib_batches=1,
                     batch_size=2, latency_rounds=0, threads=1),
        show_progress=False,
    )
    assert result.record["formats"]["pt"]["checks"]["timm"]["model"] == "efficientformer_l1"
    state = torch.load(result.out / "model.pt", weights_only=True)
    model = timm.create_model("efficientformer_l1", pretrained=False, num_classes=2)
    model.load_state_dict(state, strict=True)
    assert len(state) == 281
    x = _inputs(224, seed=5)[:1]
    with torch.no_grad():
        assert (model.eval()(x) - load_export(result.out)(x)).abs().max() <= 1e-5


def test_study_exports_the_best_feasible_trial(trained_tiny_supernet, tmp_path):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    specs = [TINY.largest(), TINY.preset("L3"), TINY.smallest()]
    # The best value is infeasible (its constraint is > 0); the best feasible one is the second.
    outcomes = [(0.9, 1.5), (0.6, -0.2), (0.4, -1.0)]

    def objective(trial):
        # What `efnas search` records on a trial (nas.results reads it back).
        value, constraint = outcomes[trial.number]
        trial.set_user_attr("arch", specs[trial.number].to_json())
        trial.set_user_attr("accuracy", value)
        trial.set_user_attr("latency_ms", {"tiny-ort": 1.0 + constraint})
        trial.set_constraint("latency", constraint)
        return value

    optuna.create_study(study_name="tiny-budget", storage=storage, direction="maximize").optimize(objective, n_trials=3)
    result = export_subnet(
        ExportConfig(supernet=str(trained_tiny_supernet), study="tiny-budget", storage=storage, out=str(tmp_path / "out"),
                     formats=("pt",), **FAST),
        show_progress=False,
    )
    assert result.spec == TINY.preset("L3") == load_arch(result.out / "arch.json")
    assert result.record["source"] == {"kind": "study", "study": "tiny-budget", "storage": storage, "trial": 1,
                                       "accuracy": 0.6, "latency_ms": {"tiny-ort": 0.8}}
    assert "best feasible trial #1 of Optuna study `tiny-budget`" in (result.out / "model_card.md").read_text()
    with pytest.raises(EfnasError, match="no study 'other'.*tiny-budget"):
        export_subnet(ExportConfig(supernet=str(trained_tiny_supernet), study="other", storage=storage, out=str(tmp_path / "x")))
    with pytest.raises(EfnasError, match="cannot read study 'tiny-budget' from storage foo://bar"):
        export_subnet(ExportConfig(supernet=str(trained_tiny_supernet), study="tiny-budget", storage="foo://bar", out=str(tmp_path / "x")))
    assert _entries(tmp_path) == {"study.db", "out"}


# -- errors: one line, nothing left behind ------------------------------------------------------


def test_arch_outside_the_space(trained_tiny_supernet, tmp_path, capsys):
    (tmp_path / "l1.json").write_text(json.dumps({"arch": load_space("efficientformer-v1").preset("L1").to_dict()}))
    err = _one_line_error(capsys, ["export", "--supernet", str(trained_tiny_supernet), "--arch", str(tmp_path / "l1.json"),
                                   "--out", str(tmp_path / "out")])
    assert "outside the supernet's space 'tiny'" in err and "width 448 is not a choice of stage 4" in err
    assert _entries(tmp_path) == {"l1.json"}
    err = _one_line_error(capsys, ["export", "--supernet", str(trained_tiny_supernet), "--preset", "L9", "--out", str(tmp_path / "out")])
    assert "no preset 'L9'" in err


def test_corrupt_checkpoint(trained_tiny_supernet, tmp_path, capsys):
    corrupt = tmp_path / "supernet.pt"
    corrupt.write_bytes(Path(trained_tiny_supernet).read_bytes()[:5000])
    err = _one_line_error(capsys, ["export", "--supernet", str(corrupt), "--preset", "L1", "--out", str(tmp_path / "out")])
    assert "truncated or corrupt" in err
    assert _entries(tmp_path) == {"supernet.pt"}


def _read_only_folder(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    if os.path.isdir("/sys") and not os.access("/sys", os.W_OK | os.X_OK) or _mkdir_fails(Path("/sys")):
        return Path("/sys")  # root may write anywhere except a read-only filesystem
    pytest.skip("running as root with no read-only folder to write into")


def _mkdir_fails(folder: Path) -> bool:
    try:
        (folder / "efnas-probe").mkdir()
    except OSError:
        return True
    (folder / "efnas-probe").rmdir()
    return False


@pytest.mark.parametrize("where", ["parent is a file", "read-only folder"])
def test_unwritable_out_folder(trained_tiny_supernet, tmp_path, capsys, where):
    if where == "parent is a file":
        (tmp_path / "file").write_text("not a folder")
        out = tmp_path / "file" / "deeper" / "out"
    else:
        out = _read_only_folder(tmp_path) / "new" / "out"
    before = _entries(tmp_path)
    err = _one_line_error(capsys, ["export", "--supernet", str(trained_tiny_supernet), "--preset", "L1", "--out", str(out), *FAST_ARGS])
    assert "cannot write the export" in err
    assert _entries(tmp_path) == before and not out.parent.exists()


def test_unavailable_or_unknown_format(trained_tiny_supernet, tmp_path, capsys, monkeypatch):
    argv = ["export", "--supernet", str(trained_tiny_supernet), "--preset", "L1", "--out", str(tmp_path / "out")]
    err = _one_line_error(capsys, [*argv, "--formats", "onnx,tflite"])
    assert "unknown format(s) tflite" in err
    monkeypatch.setitem(sys.modules, "coremltools", None)  # as if coremltools were not installed
    err = _one_line_error(capsys, [*argv, "--formats", "pt,coreml"])
    assert "format coreml is unavailable here: coremltools cannot be imported" in err
    assert _entries(tmp_path) == set()


def test_existing_out_needs_force(trained_tiny_supernet, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    argv = ["export", "--supernet", str(trained_tiny_supernet), "--preset", "L1", "--out", str(out), "--formats", "pt", *FAST_ARGS]
    err = _one_line_error(capsys, argv)
    assert "already exists; pass --force" in err and _entries(out) == {"keep.txt"}
    assert main([*argv, "--force"]) == 0
    assert _entries(out) == {"model.pt", "arch.json", "export.json", "model_card.md"}
    assert _entries(tmp_path) == {"out"}


def test_a_failed_check_leaves_nothing_behind(trained_tiny_supernet, tmp_path, capsys):
    # No fp32 export is this exact: the ONNX check fails after model.onnx was written to staging.
    argv = ["export", "--supernet", str(trained_tiny_supernet), "--preset", "L1", "--out", str(tmp_path / "a" / "out"),
            "--formats", "pt,onnx", *FAST_ARGS, "--tolerance", "1e-15"]
    err = _one_line_error(capsys, argv)
    assert "ONNX model run by onnxruntime differs from the PyTorch model" in err
    assert _entries(tmp_path) == set()


def test_config_errors():
    with pytest.raises(EfnasError, match="exactly one of"):
        ExportConfig(supernet="s", out="o", preset="L1", arch="a.json")
    with pytest.raises(EfnasError, match="--study and --storage go together"):
        ExportConfig(supernet="s", out="o", study="x")
    with pytest.raises(EfnasError, match="--coreml-precision"):
        ExportConfig(supernet="s", out="o", preset="L1", coreml_precision="int8")
    assert dataclasses.replace(ExportConfig(supernet="s", out="o", preset="L1"), formats=["onnx"]).formats == ("onnx",)


def test_help_reads_like_documentation(capsys):
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    text = capsys.readouterr().out
    assert "examples:" in text and "--coreml-input" in text and "--force" in text
