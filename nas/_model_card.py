"""``model_card.md``: the export record (``export.json``) as a page a person reads.

Everything on the card comes from the record, so the two never disagree.
"""

from __future__ import annotations

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


def _latency(record: dict[str, Any]) -> list[str]:
    latency = record["latency"]
    measured = latency.get("measured")
    predictions = latency.get("predicted", [])
    lines = ["| where | how | latency |", "|---|---|---|"]
    if measured:
        lines.append(
            f"| this machine ({measured['device']}) | measured: onnxruntime fp32, 1 thread, batch 1, "
            f"{measured['runs']} runs | median {measured['median_ms']:.3f} ms, p10 {measured['p10_ms']:.3f} ms |"
        )
    for item in predictions:
        if item.get("predicted_ms") is None:
            lines.append(f"| table `{item['path']}` ({item['describe']}) | not predicted | {_cell(item['note'])} |")
        else:
            lines.append(
                f"| table `{item['path']}` ({item['describe']}) | predicted ({item['statistic']}, "
                f"{'calibrated' if item['calibrated'] else 'raw sum'}) | {item['predicted_ms']:.3f} ms |"
            )
    if not measured and not predictions:
        return ["No latency was measured (`--latency-rounds 0`) and no latency table was given or shipped for this space."]
    notes = []
    compare = latency.get("cpu_comparison")
    if compare:
        notes.append(
            f"Measured here ({compare['statistic']}) {compare['measured_ms']:.3f} ms vs the CPU table's prediction "
            f"{compare['predicted_ms']:.3f} ms: ratio {compare['ratio']:.2f}."
            + (
                f" The table was measured on another machine ({compare['table_device']}); absolute latency is a "
                "property of the machine, so compare ratios between models rather than milliseconds."
                if not compare["same_device"]
                else ""
            )
        )
    elif measured:
        notes.append("No onnxruntime CPU (1 thread) latency table was given or shipped for this space, so there is no prediction to compare with.")
    return lines + ([""] + notes if notes else [])


def _calibration_text(calib: dict[str, Any]) -> str:
    if not calib["batches"]:
        return "BatchNorm statistics kept as the supernet holds them (no recalibration)"
    return f"BatchNorm statistics re-estimated on {calib['batches']} training batches of {calib['batch_size']} (seed {calib['seed']})"


def _header(record: dict[str, Any], spec: ArchSpec) -> list[str]:
    supernet, prov = record["supernet"], record["provenance"]
    return [
        f"# EfficientFormer {spec.label()}",
        "",
        f"A subnet of the supernet `{supernet['path']}` (space '{supernet['space']}', fingerprint "
        f"{supernet['fingerprint']}), exported by efficientformer-nas {prov['versions']['efficientformer-nas']} "
        f"on {prov['date']}. Chosen by: {_source(record['source'])}.",
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
    lines = [
        f"RGB at {prep['resolution']}×{prep['resolution']}, values in [0, 1], then `(x - mean) / std` per channel with "
        f"mean {prep['mean']} and std {prep['std']}. `model.pt`, TorchScript and ONNX take this normalised tensor "
        "(`input`, shape (batch, 3, H, W)) and return `logits`.",
    ]
    coreml = record["formats"].get("coreml")
    if coreml and coreml["checks"]["input"] == "image":
        lines.append(
            "The Core ML package takes the image itself (`image`): its input subtracts the mean "
            "(per-channel bias, scale 1/255) and the first convolution's weights are divided by the std, "
            "which is exact because that convolution pads with zeros."
        )
    elif coreml:
        lines.append("The Core ML package takes the normalised tensor (`input`), like the other formats.")
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
