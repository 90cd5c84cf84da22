"""Exports that fit the ecosystem (issue 14): the eval transform in timm's pretrained_cfg form and
the documented recipes that follow it, safetensors + a hub config.json that timm loads in one line,
a Hugging Face model card, a Core ML classifier; and (issue 13) masked storage passwords, a warning
for an unfinished checkpoint, a bad --out refused before any work."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from nas._export_formats import FILES, HUB_CONFIG, Preprocessing, Reference, WriteSettings, metadata_strings, timm_shape
from nas._export_formats import write_coreml, write_pt, write_safetensors
from nas.cli import main
from nas.export import ExportConfig, export_subnet, load_export
from supernet import EfnasError, build_model, load_space
from supernet.data import load_data

TINY = load_space("tiny")
V1 = load_space("efficientformer-v1")
DOCS = Path(__file__).resolve().parent.parent / "docs" / "export.md"
FAST = {"calib_batches": 2, "batch_size": 32, "latency_rounds": 0, "threads": 1}


# -- an image folder of the embedded task's own images -------------------------------------------


def _digit_folder(root: Path, per_class: int = 3, train_images: int = 64) -> Path:
    """The digits-mosaic validation images as PNGs of 40x40 padded to 46x40 (not square, so the
    resize and the crop both matter), in class folders c00..c36 sorted like the task's labels."""
    from torchvision.io import write_png

    data = load_data("digits-mosaic", 40)
    mean, std = torch.tensor(data.mean).view(1, 3, 1, 1), torch.tensor(data.std).view(1, 3, 1, 1)
    images, labels = next(data.val_batches(2000))
    pixels = ((images * std + mean).clamp(0, 1) * 255).round().to(torch.uint8)
    pixels = torch.nn.functional.pad(pixels, (0, 0, 2, 4))  # (B, 3, 46, 40)
    counts = {"train": 0, "val": {}}
    for split in ("train", "val"):
        for label in range(data.num_classes):
            (root / split / f"c{label:02d}").mkdir(parents=True, exist_ok=True)
    for index, label in enumerate(labels.tolist()):
        if counts["val"].get(label, 0) < per_class:
            split, counts["val"][label] = "val", counts["val"].get(label, 0) + 1
        elif counts["train"] < train_images:
            split, counts["train"] = "train", counts["train"] + 1
        else:
            continue
        write_png(pixels[index], str(root / split / f"c{label:02d}" / f"{index:04d}.png"))
    return root


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory) -> Path:
    return _digit_folder(tmp_path_factory.mktemp("digit-folder"))


@pytest.fixture(scope="module")
def folder_export(trained_tiny_supernet, digit_folder, tmp_path_factory):
    """The tiny supernet's L1 exported, calibrated and scored on the image folder."""
    out = tmp_path_factory.mktemp("folder-export") / "l1"
    config = ExportConfig(supernet=str(trained_tiny_supernet), preset="L1", out=str(out), data=f"imagefolder:{digit_folder}",
                          formats=("pt", "onnx"), **FAST)
    return export_subnet(config, show_progress=False)


def _val_files(folder: Path) -> list[tuple[Path, str]]:
    """The validation images in the order the ImageFolder reads them, with their class names."""
    return [(path, cls.name) for cls in sorted((folder / "val").iterdir()) for path in sorted(cls.glob("*.png"))]


def _our_predictions(export_folder: Path, image_folder: Path) -> list[int]:
    """Our own evaluation's predictions: the exported model on the validation batches."""
    model = load_export(export_folder)
    data = load_data(f"imagefolder:{image_folder}", 32)
    with torch.no_grad():
        return [int(i) for images, _ in data.val_batches(64) for i in model(images).argmax(1)]


def _recipe(name: str, export_folder: Path) -> dict:
    """The docs/export.md code block marked ``# recipe: NAME``, run against ``export_folder``."""
    blocks = re.findall(r"```python\n(# recipe: " + name + r"\n.*?)```", DOCS.read_text(), flags=re.S)
    assert len(blocks) == 1, f"docs/export.md has {len(blocks)} '# recipe: {name}' blocks"
    namespace: dict = {}
    exec(blocks[0].replace("exports/l1", str(export_folder)), namespace)  # noqa: S102 - our own documentation
    return namespace


# -- 1. the eval transform -----------------------------------------------------------------------


def test_pretrained_cfg_is_exactly_what_validation_does(digit_folder):
    from torchvision.io import decode_image
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    data = load_data(f"imagefolder:{digit_folder}", 32)
    prep = Preprocessing.of(data, 32)
    cfg = prep.pretrained_cfg()
    assert (cfg["interpolation"], cfg["crop_mode"], cfg["input_size"]) == ("bilinear", "center", [3, 32, 32])
    assert prep.resize == 37 and math.floor(32 / cfg["crop_pct"]) == 37  # round(32 / 0.875), not timm's default floor: 36
    rebuilt = []
    for path, _ in _val_files(digit_folder):
        image = TF.resize(decode_image(str(path)), [math.floor(32 / cfg["crop_pct"])],
                          interpolation=InterpolationMode(cfg["interpolation"]), antialias=True)
        pixels = TF.center_crop(image, [32, 32]).float() / 255
        rebuilt.append(TF.normalize(pixels, cfg["mean"], cfg["std"]))
    validation = torch.cat([images for images, _ in data.val_batches(64)])
    assert torch.equal(torch.stack(rebuilt), validation)
    # The embedded tasks are rendered at the input size: nothing to resize or crop.
    assert Preprocessing.of(load_data("digits-mosaic", 32), 32).pretrained_cfg()["crop_pct"] == 1.0


def test_crop_pct_gives_back_the_resize_at_every_resolution():
    for resolution in range(8, 1025):
        prep = Preprocessing(resolution, (0.5,) * 3, (0.5,) * 3, (), round(resolution / 0.875))
        assert math.floor(resolution / prep.crop_pct) == round(resolution / prep.crop_pct) == prep.resize, resolution


@pytest.mark.slow
def test_onnxruntime_recipe_reproduces_the_reported_accuracy(folder_export, digit_folder):
    record = folder_export.record
    cfg = record["pretrained_cfg"]
    assert cfg == json.loads((folder_export.out / "arch.json").read_text())["pretrained_cfg"] and cfg["crop_pct"] < 0.9
    ours = _our_predictions(folder_export.out, digit_folder)
    files = _val_files(digit_folder)
    names = record["class_names"]
    assert np.mean([names[p] == truth for p, (_, truth) in zip(ours, files)]) == pytest.approx(record["metrics"]["val_top1"])
    recipe = _recipe("onnxruntime", folder_export.out)
    predicted = [recipe["predict"](path) for path, _ in files]
    assert predicted == [names[p] for p in ours]  # PIL's bilinear differs from torchvision's by at most 1/255 on a few pixels
    accuracy = np.mean([p == truth for p, (_, truth) in zip(predicted, files)])
    assert accuracy == pytest.approx(record["metrics"]["val_top1"]) and accuracy > 1 / 37
    # timm's own transform, built from the recorded pretrained_cfg, agrees too.
    import timm.data
    from PIL import Image

    transform = timm.data.create_transform(**timm.data.resolve_data_config(pretrained_cfg=cfg))
    with_timm = [names[int(recipe["session"].run(["logits"], {"input": transform(Image.open(path).convert("RGB"))[None].numpy()})[0].argmax())]
                 for path, _ in files]
    assert with_timm == predicted


def test_onnx_metadata_holds_the_pretrained_cfg(tmp_path):
    import onnx

    from nas._export_formats import write_onnx

    spec = TINY.preset("L1")
    model, settings = _model_and_settings(spec, seed=1)
    write_onnx(model, tmp_path, settings)
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "model.onnx")).metadata_props}
    assert json.loads(meta["pretrained_cfg"]) == settings.prep.pretrained_cfg()
    assert json.loads(meta["preprocessing"])["resize"] == 37


# -- 2. safetensors, config.json and timm ------------------------------------------------------------


def _randomised(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Weights and BatchNorm statistics away from their initial values, so outputs differ per weight."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in [*model.parameters(), *(m.running_var for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))]:
            tensor.copy_((tensor + 0.1 * torch.randn(tensor.shape, generator=generator)).abs() if tensor.dim() == 1 else
                         tensor + 0.05 * torch.randn(tensor.shape, generator=generator))
    return model.eval()


def _model_and_settings(spec, seed: int = 0, names: tuple[str, ...] | None = None, resize: int | None = None):
    model = _randomised(build_model(spec), seed)
    names = names if names is not None else tuple(f"class {i}" for i in range(spec.num_classes))
    prep = Preprocessing(spec.resolution, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), names,
                         resize or round(spec.resolution / 0.875))
    settings = WriteSettings(Reference.of(model, spec.resolution, seed), prep, metadata_strings(spec, prep), 1e-4, seed,
                             license="apache-2.0")
    return model, settings


# Shapes timm builds: uniform MLP ratio, attention of 8 heads x 32 on the 7x7 grid of 224 px.
_V1_SMALL = V1.smallest()
TIMM_SHAPES = {
    "one Meta3D": dataclasses.replace(_V1_SMALL, num_meta3d=1, mlp_ratios=(2,) * 4, num_classes=5),
    "all Meta3D": dataclasses.replace(_V1_SMALL, depths=(1, 2, 1, 3), num_meta3d=3, mlp_ratios=(3,) * 4, num_classes=7),
    "L1 at 10 classes": dataclasses.replace(V1.preset("L1"), num_classes=10),
}


@pytest.mark.parametrize("name", TIMM_SHAPES)
def test_every_shape_timm_builds_loads_with_create_model(name, tmp_path):
    import timm
    from safetensors.torch import load_file

    spec = TIMM_SHAPES[name]
    assert not V1.problems(dataclasses.replace(spec, num_classes=V1.num_classes))
    model, settings = _model_and_settings(spec)
    pt = write_pt(model, tmp_path, settings)
    report = write_safetensors(model, tmp_path, settings)
    assert report.files == [FILES["safetensors"], HUB_CONFIG]
    config = json.loads((tmp_path / HUB_CONFIG).read_text())
    assert config["architecture"] == pt.checks["timm"]["model"] and config["num_classes"] == spec.num_classes
    assert config["label_names"] == list(settings.prep.class_names) and config["pretrained_cfg"]["crop_pct"] == settings.prep.crop_pct
    assert report.checks["timm_local_dir"]["checked"] and pt.checks["timm"]["checked"]
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model(x)
        # The one line a timm user writes, on the folder as exported.
        hub = timm.create_model(f"local-dir:{tmp_path}", pretrained=True).eval()
        assert (hub(x) - expected).abs().max() <= 1e-5
        by_hand = timm.create_model(config["architecture"], **config["model_args"])
        by_hand.load_state_dict(load_file(str(tmp_path / "model.safetensors")), strict=True)
        assert (by_hand.eval()(x) - expected).abs().max() <= 1e-5
    assert hub.pretrained_cfg["crop_pct"] == settings.prep.crop_pct and hub.pretrained_cfg["interpolation"] == "bilinear"


def test_no_attention_loads_strictly_into_timm_but_its_forward_fails(tmp_path):
    import timm
    from timm.models.efficientformer import Flat

    spec = dataclasses.replace(_V1_SMALL, num_meta3d=0, mlp_ratios=(2,) * 4, num_classes=4)
    model, settings = _model_and_settings(spec)
    pt = write_pt(model, tmp_path, settings)
    write_safetensors(model, tmp_path, settings)
    shape = timm_shape(spec)
    assert not shape.buildable and shape.needs_flat and "num_vit >= 1" in shape.reason
    assert pt.checks["timm"]["checked"] and pt.checks["timm"]["max_abs_diff"] <= 1e-5  # checked with Flat appended
    config = json.loads((tmp_path / HUB_CONFIG).read_text())
    assert "architecture" not in config and "model_args" not in config  # timm refuses the folder rather than fail later
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    plain = timm.create_model(shape.name, **shape.model_args)
    plain.load_state_dict(state, strict=True)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad(), pytest.raises(RuntimeError, match=r"normalized_shape=\[320\]"):
        plain.eval()(x)
    plain.stages[-1].blocks.append(Flat())  # the workaround the card gives
    with torch.no_grad():
        assert (plain(x) - model(x)).abs().max() <= 1e-5


def test_per_stage_mlp_ratios_and_tiny_attention_are_not_timm_shapes():
    mixed = dataclasses.replace(V1.preset("L1"), mlp_ratios=(4, 4, 3, 4))
    assert not timm_shape(mixed).buildable and "per-stage MLP ratios [4, 4, 3, 4]" in timm_shape(mixed).reason
    tiny = timm_shape(TINY.preset("L1"))
    assert not tiny.buildable and "2 heads x key dim 16 on a 1x1 grid" in tiny.reason


# -- 3. the model card -------------------------------------------------------------------------------


def test_card_has_hugging_face_front_matter_author_and_license(trained_tiny_supernet, tmp_path):
    from huggingface_hub import ModelCard

    spec = dataclasses.replace(TINY.preset("L3"), mlp_ratios=(2, 3, 4, 4))
    (tmp_path / "arch.json").write_text(spec.to_json())
    result = export_subnet(ExportConfig(supernet=str(trained_tiny_supernet), arch=str(tmp_path / "arch.json"), out=str(tmp_path / "out"),
                                        formats=("pt", "safetensors"), val_subset=256, author="Ada Lovelace", license="mit", **FAST),
                           show_progress=False)
    text = (result.out / "model_card.md").read_text()
    card = ModelCard(text)
    assert card.data.library_name == "pytorch" and card.data.license == "mit"
    assert card.data.datasets == ["digits-mosaic"] and card.data.metrics == ["accuracy"]
    assert {"image-classification", "efficientformer", "safetensors"} <= set(card.data.tags)
    (evaluation,) = card.data.eval_results
    assert evaluation.metric_type == "accuracy" and evaluation.metric_value == pytest.approx(result.val_top1, abs=1e-6)
    assert "Author: Ada Lovelace. License of the weights: `mit`." in text
    assert "per-stage MLP ratios [2, 3, 4, 4]" in text  # timm cannot build it: the card says why
    assert json.loads((result.out / HUB_CONFIG).read_text())["pretrained_cfg"]["license"] == "mit"


def test_bad_author_or_license_is_one_line(trained_tiny_supernet, tmp_path, capsys):
    for flag, value, message in (("--license", "Apache 2.0", "--license must be a Hugging Face license id"),
                                 ("--author", "a\nb", "--author must be one printable line")):
        assert main(["export", "--supernet", str(trained_tiny_supernet), "--preset", "L1", "--out", str(tmp_path / "o"), flag, value]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err


def _study_with_table(storage: str, lut: Path, digest: str) -> None:
    """A study as `efnas search` leaves it: trials with arch, accuracy and latency, and the study's
    settings naming the table its budget priced with."""
    import optuna

    from nas._storage import storage_url

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="priced", storage=storage_url(storage), direction="maximize")
    study.set_user_attr("efnas", {"budgets": [{"lut": "tiny-ort", "lut_path": str(lut), "lut_digest": digest, "limit_ms": 1.0}]})

    def objective(trial):
        trial.set_user_attr("arch", TINY.preset("L1").to_json())
        trial.set_user_attr("accuracy", 0.5)
        trial.set_user_attr("latency_ms", {"tiny-ort": 0.25})
        trial.set_constraint("latency:tiny-ort", -0.75)
        return 0.5

    study.optimize(objective, n_trials=1)


def test_study_export_prices_with_the_searchs_own_table(trained_tiny_supernet, tiny_lut, tmp_path):
    from latency_lut import load_lut

    table = tmp_path / "tables" / "tiny-ort.json"
    table.parent.mkdir()
    table.write_bytes(Path(tiny_lut).read_bytes())
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    _study_with_table(storage, table, load_lut(table).digest())
    base = {"supernet": str(trained_tiny_supernet), "study": "priced", "storage": storage, "formats": ("pt",), "val_subset": 256, **FAST}
    result = export_subnet(ExportConfig(out=str(tmp_path / "a"), **base), show_progress=False)
    latency = result.record["latency"]
    assert latency["tables_from"] == "study" and [row["path"] for row in latency["predicted"]] == [str(table)]
    card = (result.out / "model_card.md").read_text()
    assert f"the search's table `{table}`" in card and "| predicted by the search for trial #0 | 0.250 ms |" in card
    assert "shipped table" not in card and "no table was given or shipped" not in card
    # The table changed since the search: not used, and the card says why.
    (tmp_path / "study.db").unlink()
    _study_with_table(storage, table, "0123456789ab")
    changed = export_subnet(ExportConfig(out=str(tmp_path / "b"), **base), show_progress=False)
    assert changed.record["latency"]["tables_from"] != "study"
    assert "changed since the search (digest" in (changed.out / "model_card.md").read_text()


def test_card_latency_notes_say_what_happened():
    from nas._model_card import _comparison_note, _latency

    same = {"statistic": "p10", "measured_ms": 1.51, "predicted_ms": 1.0, "ratio": 1.51, "table_device": "X", "same_device": True}
    assert "busy machine" in _comparison_note(same) and "efnas lut check" in _comparison_note(same)
    assert "agree within 25%" in _comparison_note(same | {"measured_ms": 1.1, "ratio": 1.1})
    measured = {"device": "X", "runs": 6, "median_ms": 1.0, "p10_ms": 0.9}
    coreml_only = {"path": "iphone.json", "describe": "iPhone, coreml", "statistic": "median", "calibrated": False, "predicted_ms": 2.0}
    record = {"source": {"kind": "preset"}, "latency": {"measured": measured, "predicted": [coreml_only], "tables_from": "given",
                                                        "cpu_comparison": None}}
    text = "\n".join(_latency(record))
    assert "iphone.json" in text and "None of the tables above predicted an onnxruntime CPU latency at 1 thread" in text
    assert "given or shipped" not in text


def test_shipped_table_note_never_points_into_the_installed_package(trained_tiny_supernet, tmp_path):
    from nas.export import _shipped_note
    from latency_lut import load_lut, shipped_lut

    shipped = shipped_lut(TINY)
    if shipped is None:
        pytest.skip("no shipped tiny table")
    lut = load_lut(shipped)
    spec = dataclasses.replace(TINY.preset("L1"), num_classes=5)  # a head the shipped table has no entry for
    assert lut.missing(spec)
    note = _shipped_note(lut, spec, tmp_path)
    command = note.split("&& ", 1)[1]
    assert f"--out {tmp_path / shipped.name}" in command and str(shipped.parent) not in command
    assert f"cp {shipped} {tmp_path / shipped.name}" in note


# -- 4. Core ML classifier ---------------------------------------------------------------------------


@pytest.mark.slow
def test_coreml_is_a_classifier_with_logits_kept(tmp_path):
    import coremltools as ct

    spec = TINY.preset("L1")
    names = tuple(f"kind {i}" for i in range(spec.num_classes))
    model, settings = _model_and_settings(spec, names=names)
    report = write_coreml(model, tmp_path, settings)
    proto = ct.models.MLModel(str(tmp_path / "model.mlpackage"), skip_model_load=True).get_spec()
    outputs = {o.name: o.type.WhichOneof("Type") for o in proto.description.output}
    assert outputs == {"classLabel": "stringType", "classLabel_probs": "dictionaryType", "logits": "multiArrayType"}
    assert proto.description.predictedFeatureName == "classLabel"
    assert proto.description.predictedProbabilitiesName == "classLabel_probs"
    ops = [op.type for op in proto.mlProgram.functions["main"].block_specializations["CoreML6"].operations]
    assert "softmax" in ops and ops[-1] == "classify"  # probabilities are the softmax of the logits
    assert json.loads(proto.description.metadata.userDefined["pretrained_cfg"]) == settings.prep.pretrained_cfg()
    assert report.checks["classifier"] and report.checks["prediction"] == {"compared": False, "reason": "Core ML prediction needs macOS"}
    # Without usable class names it stays a plain logits model.
    plain_model, plain = _model_and_settings(spec, names=("same",) * spec.num_classes)
    (tmp_path / "plain").mkdir()
    write_coreml(plain_model, tmp_path / "plain", plain)
    plain_proto = ct.models.MLModel(str(tmp_path / "plain" / "model.mlpackage"), skip_model_load=True).get_spec()
    assert [o.name for o in plain_proto.description.output] == ["logits"]


# -- 5. passwords, unfinished checkpoints, --out -------------------------------------------------------


def test_storage_password_is_masked_in_errors(trained_tiny_supernet, tmp_path, capsys):
    url = "postgresql://efnas:hunter2@127.0.0.1:1/nowhere"
    assert main(["export", "--supernet", str(trained_tiny_supernet), "--study", "s", "--storage", url, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "hunter2" not in err and "efnas:***@127.0.0.1:1" in err


@pytest.mark.slow
def test_storage_password_is_masked_in_every_file_and_line(trained_tiny_supernet, tiny_lut, tmp_path, capsys, postgres_url):
    from latency_lut import load_lut

    # The throwaway cluster trusts every local login, so the password is accepted whatever it is.
    url = postgres_url.replace("postgresql://efnas@", "postgresql://efnas:hunter2@")
    _study_with_table(url, Path(tiny_lut), load_lut(tiny_lut).digest())
    argv = ["export", "--supernet", str(trained_tiny_supernet), "--study", "priced", "--storage", url, "--out", str(tmp_path / "out"),
            "--formats", "pt", "--val-subset", "64", "--calib-batches", "1", "--batch-size", "32", "--latency-rounds", "0",
            "--threads", "1", "--no-progress"]
    assert main(argv) == 0
    shown = capsys.readouterr()
    record = json.loads((tmp_path / "out" / "export.json").read_text())
    for text in (shown.out, shown.err, (tmp_path / "out" / "export.json").read_text(), (tmp_path / "out" / "model_card.md").read_text()):
        assert "hunter2" not in text
    assert "efnas:***@127.0.0.1" in record["source"]["storage"] and "efnas:***@127.0.0.1" in record["config"]["storage"]


def test_unfinished_checkpoint_is_exported_with_a_warning(tmp_path, capsys):
    checkpoint = _unfinished_checkpoint(tmp_path)
    capsys.readouterr()
    result = export_subnet(ExportConfig(supernet=str(checkpoint), preset="L1", out=str(tmp_path / "out"), formats=("pt",),
                                        val_subset=64, **FAST), show_progress=False)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("efnas: warning: the supernet") and "unfinished training run (step" in err[0]
    assert result.record["warnings"] and not result.record["supernet"]["finished"]
    assert "> **Warning:** the supernet" in (result.out / "model_card.md").read_text()


def _unfinished_checkpoint(tmp_path: Path) -> Path:
    """A finished tiny checkpoint rewritten as a run stopped halfway (what a killed run leaves)."""
    from supernet.train import TrainConfig, train

    checkpoint = train(TrainConfig(out=str(tmp_path / "run"), space="tiny", epochs=0, batch_size=16, calib_batches=1, threads=1),
                       show_progress=False).checkpoint
    payload = torch.load(checkpoint, map_location="cpu", weights_only=True)
    payload["finished"] = False
    payload["total_steps"] = 60
    payload["step"] = 34
    torch.save(payload, checkpoint)
    return checkpoint


@pytest.mark.parametrize("where", ["out is a file", "parent is a file", "read-only parent"])
def test_bad_out_is_one_line_before_any_work(tmp_path, capsys, where):
    import os

    (tmp_path / "file").write_text("x")
    out = {"out is a file": tmp_path / "file", "parent is a file": tmp_path / "file" / "out", "read-only parent": tmp_path / "ro" / "new" / "out"}[where]
    if where == "read-only parent":
        if os.geteuid() == 0:
            pytest.skip("root writes into a read-only folder")
        (tmp_path / "ro").mkdir()
        (tmp_path / "ro").chmod(0o555)
    # The checkpoint does not exist: refusing --out first shows nothing else was looked at.
    assert main(["export", "--supernet", str(tmp_path / "missing.pt"), "--preset", "L1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and ("is a file" in err or "cannot write the export" in err) and "missing.pt" not in err
    with pytest.raises(EfnasError):
        ExportConfig(supernet="s", out=str(out), preset="L1", license="GPL 3")
