"""``model_card.md``: the export record (``export.json``) as a page a person reads, with Hugging
Face model-card front matter (YAML) so that the folder can be pushed to the Hub as it is.

Everything on the card comes from the record, so the two never disagree.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from supernet.model import stage_block_layout
from supernet.space import ArchSpec

__all__ = ["human_size", "render_model_card"]


def human_size(num_bytes: float) -> str:
    """1536 -> '1.5 KB' (powers of 1024)."""
    for unit in ("B", "KB", "MB"):
        if num_bytes < 1024:
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    return f"{num_bytes:.2f} GB"


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell (the checks say |Δ|)."""
    return text.replace("|", "\\|")


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}%"


def _source(source: dict[str, Any]) -> str:
    kind = source["kind"]
    if kind == "preset":
        return f"preset {source['name']} of the space"
    if kind == "file":
        return f"architecture file `{source['path']}`"
    latency = ", ".join(f"{ms:.3f} ms on {name}" for name, ms in source.get("latency_ms", {}).items())
    return (
        f"best feasible trial #{source['trial']} of Optuna study `{source['study']}` in `{source['storage']}` "
        f"(search accuracy {_percent(source.get('accuracy'))}" + (f", predicted {latency})" if latency else ")")
    )


def _finetune_line(finetune: dict[str, Any] | None) -> str:
    if not finetune:
        return "none"
    return (
        f"{finetune['epochs']} epoch(s), {finetune['steps']} steps of {finetune['batch_size']} images, seed "
        f"{finetune['seed']}; distillation loss {finetune['first_loss']:.3f} -> {finetune['last_loss']:.3f}"
    )


def _architecture(spec: ArchSpec) -> list[str]:
    lines = [
        "| stage | feature map | width | blocks | MLP ratio |",
        "|---|---|---|---|---|",
    ]
    for stage in range(spec.num_stages):
        layout = [kind for kind in stage_block_layout(spec, stage) if kind != "flat"]
        meta3d = layout.count("meta3d")
        meta4d = layout.count("meta4d")
        blocks = " + ".join(f"{n} {kind}" for n, kind in ((meta4d, "Meta4D"), (meta3d, "Meta3D")) if n)
        res = spec.stage_resolutions[stage]
        lines.append(f"| {stage + 1} | {res}×{res} | {spec.widths[stage]} | {blocks} | {spec.mlp_ratios[stage]} |")
    return lines


_TABLE_ORIGIN = {"given": "table", "study": "the search's table", "shipped": "shipped table"}
# On the CPU model a table was measured on, a whole-model measurement within this band of the
# table's prediction is agreement; outside it, the card says what to suspect.
_AGREEMENT = (0.8, 1.25)


def _latency_rows(record: dict[str, Any]) -> list[str]:
    latency, source = record["latency"], record["source"]
    measured = latency.get("measured")
    origin = _TABLE_ORIGIN[latency.get("tables_from", "shipped" if latency.get("default_tables") else "given")]
    rows = []
    if measured:
        rows.append(
            f"| this machine ({measured['device']}) | measured: onnxruntime fp32, 1 thread, batch 1, "
            f"{measured['runs']} runs | median {measured['median_ms']:.3f} ms, p10 {measured['p10_ms']:.3f} ms |"
        )
    if source["kind"] == "study":
        for name, ms in source.get("latency_ms", {}).items():
            rows.append(f"| the search's table `{name}` | predicted by the search for trial #{source['trial']} | {ms:.3f} ms |")
    for item in latency.get("predicted", []):
        where = f"{origin} `{item['path']}` ({item['describe']})"
        if item.get("predicted_ms") is None:
            rows.append(f"| {where} | not predicted | {_cell(item['note'])} |")
        else:
            rows.append(
                f"| {where} | predicted ({item['statistic']}, {'calibrated' if item['calibrated'] else 'raw sum'}) "
                f"| {item['predicted_ms']:.3f} ms |"
            )
    return rows


def _comparison_note(compare: dict[str, Any]) -> str:
    ratio = compare["ratio"]
    text = (f"Measured here ({compare['statistic']}) {compare['measured_ms']:.3f} ms vs the CPU table's prediction "
            f"{compare['predicted_ms']:.3f} ms: ratio {ratio:.2f}.")
    if not compare["same_device"]:
        return text + (f" The table was measured on another machine ({compare['table_device']}); absolute latency is a "
                       "property of the machine, so compare ratios between models rather than milliseconds.")
    low, high = _AGREEMENT
    if low <= ratio <= high:
        return text + f" The table was measured on this CPU model, and the two agree within {high - 1:.0%}."
    return text + (
        f" The table was measured on this CPU model, where the two should agree within about {high - 1:.0%}: either this "
        "measurement ran on a busy machine (other processes share caches and memory bandwidth even with one thread each), "
        "or the table's sum of per-block timings is off for this architecture. Measure again on a quiet machine with more "
        "`--latency-rounds`, and check the table with `efnas lut check` (it measures sampled architectures against their predictions)."
    )


def _latency(record: dict[str, Any]) -> list[str]:
    latency = record["latency"]
    measured = latency.get("measured")
    predictions = latency.get("predicted", [])
    rows = _latency_rows(record)
    notes = list(latency.get("notes", []))
    if not rows:
        return ["No latency was measured (`--latency-rounds 0`) and there is no latency table to predict with: none was "
                "given (`--lut`), the search recorded none, and none is shipped for this space."] + notes
    compare = latency.get("cpu_comparison")
    if compare:
        notes.append(_comparison_note(compare))
    elif measured and predictions:
        notes.append("None of the tables above predicted an onnxruntime CPU latency at 1 thread (what is measured here), "
                     "so the measurement has no prediction to be compared with.")
    elif measured:
        notes.append("No latency table was given (`--lut`) or shipped for this space, so the measurement has no "
                     "prediction to be compared with.")
    return ["| where | how | latency |", "|---|---|---|", *rows] + ([""] + notes if notes else [])


def _calibration_text(calib: dict[str, Any]) -> str:
    if not calib["batches"]:
        return "BatchNorm statistics kept as the supernet holds them (no recalibration)"
    return f"BatchNorm statistics re-estimated on {calib['batches']} training batches of {calib['batch_size']} (seed {calib['seed']})"


def _dataset_id(name: str) -> str:
    """A dataset name fit for the front matter: an image folder's own name, not its path."""
    return (Path(name.split(":", 1)[1]).name or name) if name.startswith("imagefolder:") else name


def _yaml(value: Any) -> str:
    return json.dumps(value)  # a JSON string or number is a valid YAML scalar


def front_matter(record: dict[str, Any]) -> list[str]:
    """Hugging Face model-card metadata: library, license, tags, datasets, metrics, model-index."""
    config, timm = record["config"], record.get("timm", {})
    dataset = _dataset_id(record["data"]["name"])
    formats = list(record["formats"])
    tags = ["image-classification", "efficientformer", "neural-architecture-search", "efficientformer-nas"]
    tags += [name for name in ("safetensors", "onnx", "coreml") if name in formats]
    if timm.get("buildable"):
        tags.append("timm")
    lines = ["---", f"library_name: {'timm' if timm.get('buildable') else 'pytorch'}"]
    if config.get("license"):
        lines.append(f"license: {_yaml(config['license'])}")
    lines += ["pipeline_tag: image-classification", "tags:", *[f"- {_yaml(tag)}" for tag in tags],
              "datasets:", f"- {_yaml(dataset)}", "metrics:", "- accuracy", "model-index:",
              f"- name: {_yaml('EfficientFormer ' + record['label'])}", "  results:", "  - task:",
              "      type: image-classification", "    dataset:", f"      name: {_yaml(dataset)}", f"      type: {_yaml(dataset)}",
              "      split: validation", "    metrics:", "    - type: accuracy", "      name: top-1 accuracy",
              f"      value: {round(record['metrics']['val_top1'], 6)}", "---", ""]
    return lines


def _people(record: dict[str, Any]) -> str:
    config = record["config"]
    author = config.get("author") or "not given (`--author`)"
    license = f"`{config['license']}`" if config.get("license") else "not given (`--license`)"
    return f"Author: {author}. License of the weights: {license}."


def _header(record: dict[str, Any], spec: ArchSpec) -> list[str]:
    supernet, prov = record["supernet"], record["provenance"]
    warnings = [f"> **Warning:** {line}." for line in record.get("warnings", [])]
    return [
        *front_matter(record),
        f"# EfficientFormer {spec.label()}",
        "",
        *([*warnings, ""] if warnings else []),
        f"A subnet of the supernet `{supernet['path']}` (space '{supernet['space']}', fingerprint "
        f"{supernet['fingerprint']}), exported by efficientformer-nas {prov['versions']['efficientformer-nas']} "
        f"on {prov['date']}. Chosen by: {_source(record['source'])}.",
        "",
        _people(record),
        "",
        "## Architecture",
        "",
        *_architecture(spec),
        "",
        f"Input {spec.resolution}×{spec.resolution} RGB, {spec.num_classes} classes; attention "
        f"{spec.attn_heads} heads × key dim {spec.attn_key_dim}. **{record['params']:,} parameters, "
        f"{record['macs'] / 1e6:,.1f} M MACs** (batch 1).",
        "",
        "```json",
        spec.to_json(),
        "```",
    ]


def _accuracy(record: dict[str, Any]) -> list[str]:
    data, metrics, finetune = record["data"], record["metrics"], record.get("finetune")
    val = data["validation"]
    subset = (
        f"a fixed subset of {val['images']:,} of its {val['of']:,} validation images, seed {val['seed']}"
        if val["images"] < val["of"]
        else f"all {val['images']:,} validation images"
    )
    lines = [
        f"Validation top-1 on '{data['name']}' ({subset}):",
        "",
        "| model | top-1 |",
        "|---|---|",
        f"| weights inherited from the supernet, {_calibration_text(record['calibration'])} | {_percent(metrics['val_top1_inherited'])} |",
    ]
    if finetune:
        lines.append(
            f"| after fine-tuning {finetune['epochs']} epoch(s), {finetune['steps']} steps, distilled from the "
            f"largest subnet (AdamW lr {finetune['lr']:g}, cosine) | {_percent(metrics['val_top1'])} |"
        )
    return lines + ["", "The exported weights are those of the last row."]


def _preprocessing(record: dict[str, Any]) -> list[str]:
    prep, names = record["preprocessing"], record["class_names"]
    cfg = prep.get("pretrained_cfg")
    lines = [
        f"The validation transform the accuracy above was measured with: {prep['transform']}, with mean {prep['mean']} "
        f"and std {prep['std']}."
        if cfg else
        f"RGB at {prep['resolution']}×{prep['resolution']}, values in [0, 1], then `(x - mean) / std` per channel with "
        f"mean {prep['mean']} and std {prep['std']}.",
        "`model.pt`, `model.safetensors`, TorchScript and ONNX take the normalised tensor (`input`, shape (batch, 3, H, W)) "
        "and return `logits`.",
    ]
    if cfg:
        lines += ["", "In timm's `pretrained_cfg` form (also in `arch.json`, `config.json` and the ONNX and Core ML metadata):",
                  "", "```json", json.dumps(cfg), "```", ""]
    coreml = record["formats"].get("coreml")
    if coreml and coreml["checks"]["input"] == "image":
        lines.append(
            "The Core ML package takes the image itself (`image`): its input subtracts the mean "
            "(per-channel bias, scale 1/255) and the first convolution's weights are divided by the std, "
            "which is exact because that convolution pads with zeros. The resize and crop stay with the app: "
            "crop the centre square of side `crop_pct` × the shorter side, then let Vision scale it to the input size."
        )
    elif coreml:
        lines.append("The Core ML package takes the normalised tensor (`input`), like the other formats.")
    if coreml and coreml["checks"].get("classifier"):
        lines.append("It is a Core ML classifier: `classLabel` (the class name) and `classLabel_probs` (softmax per "
                     "class), so Vision returns labelled observations; `logits` stays an output.")
    shown = ", ".join(names[:12]) + (" …" if len(names) > 12 else "")
    return lines + [f"Class names ({len(names)}): {shown} (all of them are in `arch.json`)."]


def _how_it_was_made(record: dict[str, Any]) -> list[str]:
    supernet, data, prov = record["supernet"], record["data"], record["provenance"]
    return [
        f"- command: `{prov['command']}`",
        f"- supernet checkpoint: `{supernet['path']}`, sha256 `{supernet['sha256']}`, step {supernet['step']} of "
        f"{supernet['total_steps']}{'' if supernet['finished'] else ' (training not finished)'}",
        f"- data: '{data['name']}' (split seed {data['split_seed']}), {data['num_train']:,} training and "
        f"{data['num_val']:,} validation images",
        f"- seed {record['config']['seed']}; {_calibration_text(record['calibration'])}",
        f"- fine-tuning: {_finetune_line(record.get('finetune'))}",
        f"- machine: {prov['machine']['cpu']} ({prov['machine']['cores']} cores), {prov['machine']['platform']}",
        "- versions: " + ", ".join(f"{name} {version}" for name, version in prov["versions"].items()),
        f"- export took {record['seconds']['total']:.1f} s",
    ]


def _timm(record: dict[str, Any]) -> list[str]:
    timm = record.get("timm")
    if not timm:
        return []
    folder = "EXPORT_FOLDER"
    if timm["buildable"]:
        args = ", ".join(f"{key}={value!r}" for key, value in timm["model_args"].items())
        lines = [
            "timm builds this architecture. With `model.safetensors` and `config.json` in this folder:",
            "",
            "```python",
            "import timm",
            f'model = timm.create_model("local-dir:{folder}", pretrained=True)   # or "hf-hub:USER/REPO" once pushed',
            "```",
            "",
            f"or by hand: `timm.create_model({timm['model']!r}, {args})`, then `load_state_dict` of `model.pt` (strict).",
        ]
    elif timm.get("needs_flat"):
        lines = [f"timm cannot build this architecture as it is: {timm['reason']}. So `config.json` names no timm architecture."]
    else:
        lines = [f"timm cannot build this architecture: {timm['reason']}. So `config.json` names no timm architecture."]
    return lines


def render_model_card(record: dict[str, Any]) -> str:
    """The Markdown model card of an export record."""
    spec = ArchSpec.from_dict(record["arch"])
    files = [f"| `{item['name']}` | {human_size(item['size'])} | {_cell(item['check'])} |" for item in record["files"]]
    lines = [
        *_header(record, spec),
        "",
        "## Accuracy",
        "",
        *_accuracy(record),
        "",
        "## Latency",
        "",
        *_latency(record),
        "",
        *(["## Loading with timm", "", *_timm(record), ""] if record.get("timm") else []),
        "## Files and checks",
        "",
        "| file | size | check |",
        "|---|---|---|",
        *files,
        "",
        "## Preprocessing",
        "",
        *_preprocessing(record),
        "",
        "## How it was made",
        "",
        *_how_it_was_made(record),
        "",
    ]
    return "\n".join(lines)
