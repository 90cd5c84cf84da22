"""The supernet health report and the training-recipe settings it judges."""

from __future__ import annotations

import json

import pytest
import torch

from nas.cli import main
from supernet.errors import EfnasError
from supernet.report import load_standalone, supernet_report
from supernet.train import SandwichLoss, TrainConfig


def test_report_scores_every_named_subnet_and_compares_with_stand_alone(trained_tiny_supernet, tiny_space, tmp_path, capsys):
    largest, smallest = tiny_space.largest(), tiny_space.smallest()
    # Stand-alone results far above anything a 50-step supernet reaches: the gap warning must fire.
    standalone = tmp_path / "standalone.json"
    standalone.write_text(json.dumps([
        {"arch": largest.to_dict(), "top1": 90.0},
        {"arch": smallest.to_dict(), "top1": 60.0},
        {"arch": tiny_space.preset("L1").to_dict(), "top1": 70.0},
    ]))
    out = tmp_path / "report.json"
    assert main(["supernet-report", str(trained_tiny_supernet), "--random", "2", "--standalone", str(standalone), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    names = [s["name"] for s in report["subnets"]]
    assert names == ["largest = L7", "smallest", "L1", "L3", "random 1", "random 2"]  # tiny's L7 is its largest
    by_name = {s["name"]: s for s in report["subnets"]}
    assert by_name["largest = L7"]["gap"] == pytest.approx(90.0 - by_name["largest = L7"]["inherited_top1"], abs=0.01)
    assert by_name["random 1"]["standalone_top1"] is None
    gaps = sorted(by_name[n]["gap"] for n in ("largest = L7", "smallest", "L1"))
    assert report["median_gap"] == pytest.approx(gaps[1], abs=0.01)
    assert any("median" in w and "below stand-alone" in w for w in report["warnings"])
    printed = capsys.readouterr().out
    assert "median gap" in printed and "warning:" in printed


def test_report_is_deterministic_and_reads_the_benchmark_layout(trained_tiny_supernet, tiny_space, tmp_path):
    bench_layout = tmp_path / "task_separability.json"
    arch = tiny_space.preset("L3").to_dict()
    bench_layout.write_text(json.dumps({"subnets": [{"name": "L3", "arch": arch, "runs": [{"seed": 0, "top1": 70.0}, {"seed": 1, "top1": 74.0}]}]}))
    standalone = load_standalone(bench_layout)
    assert list(standalone.values()) == [72.0]
    first = supernet_report(trained_tiny_supernet, num_random=1, standalone=standalone)
    second = supernet_report(trained_tiny_supernet, num_random=1, standalone=standalone)
    assert first.to_dict()["subnets"] == second.to_dict()["subnets"]
    assert first.kendall_tau is None  # one compared subnet cannot be ranked


def test_report_rejects_unreadable_stand_alone_results(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"top1": 50}]))
    with pytest.raises(EfnasError, match="entry 0 has no usable arch"):
        load_standalone(bad)
    assert main(["supernet-report", str(tmp_path / "missing"), "--standalone", str(bad)]) == 2


def test_subnet_label_weight_mixes_labels_into_the_other_subnets_loss(tiny_space):
    from supernet.elastic import Supernet

    torch.manual_seed(0)
    supernet = Supernet(tiny_space)
    images, labels = torch.randn(8, 3, 32, 32), torch.randint(0, 37, (8,))
    specs = [tiny_space.largest(), tiny_space.smallest()]
    losses = {}
    for weight in (0.0, 0.5, 1.0):
        loss_module = SandwichLoss(supernet, TrainConfig(subnet_label_weight=weight, label_smoothing=0.0))
        losses[weight] = loss_module(images, labels, specs, None)[0].detach()
    # The total is linear in the weight: the 0.5 mix lies halfway between pure distillation and pure labels.
    assert float(losses[0.5]) == pytest.approx((float(losses[0.0]) + float(losses[1.0])) / 2, rel=1e-5)
    assert float(losses[0.0]) != pytest.approx(float(losses[1.0]))


def test_recipe_settings_are_validated():
    for bad in ({"subnet_label_weight": 1.5}, {"final_lr_ratio": -0.1}, {"subnet_weight": -1.0}, {"largest_only_epochs": -2.0}):
        with pytest.raises(EfnasError):
            TrainConfig(**bad)


def test_largest_only_epochs_train_the_largest_alone_first(tmp_path):
    from supernet.train import train

    config = TrainConfig(out=str(tmp_path / "run"), epochs=2, steps_per_epoch=10, batch_size=16, largest_only_epochs=1,
                         threads=1, calib_batches=1)
    train(config, show_progress=False)
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    windows = {r["step"]: r for r in logged if "loss_sandwich" in r}
    # Steps 1-10: the largest alone, so the step's loss is the largest's; steps 11-20: the whole sandwich.
    assert windows[10]["loss_sandwich"] == pytest.approx(windows[10]["loss_largest"])
    assert windows[20]["loss_sandwich"] > windows[20]["loss_largest"] + 1e-3
