"""One scorer: training validation, the search's Evaluator and export score a subnet the same way,
on the data the supernet was trained on."""

from __future__ import annotations

import dataclasses

import pytest

from nas._export_formats import FORMATS, WRITERS
from nas.evaluator import Evaluator
from nas.export import ExportConfig, export_subnet
from supernet import EfnasError
from supernet.checkpoint import load_supernet
from supernet.evaluate import EvalConfig, Scorer, evaluate_spec, task_data


def test_search_export_and_training_give_one_score(trained_tiny_supernet, tiny_space, tmp_path):
    supernet, info = load_supernet(trained_tiny_supernet)
    spec = tiny_space.preset("L1")
    config = EvalConfig(calib_batches=2, batch_size=64, val_subset=256, seed=1)
    searched = Evaluator(supernet, info, config).accuracy(spec)
    exported = export_subnet(
        ExportConfig(supernet=str(trained_tiny_supernet), preset="L1", out=str(tmp_path / "l1"), formats=("pt",),
                     latency_rounds=0, threads=1, **dataclasses.asdict(config)),
        show_progress=False,
    )
    assert exported.record["metrics"]["val_top1_inherited"] == searched
    assert exported.record["data"]["validation"] == {"images": 256, "of": task_data(info).num_val, "seed": 1}
    full = dataclasses.replace(config, val_subset=None)
    trained = evaluate_spec(supernet, spec, task_data(info), calib_batches=2, batch_size=64, seed=1)
    assert trained == Scorer(task_data(info), full).score(supernet, spec) == Evaluator(supernet, info, full).accuracy(spec)


def test_the_data_comes_from_the_checkpoint_or_a_one_line_error(trained_tiny_supernet):
    _, info = load_supernet(trained_tiny_supernet)
    assert task_data(info).name == task_data(info, info.config["data"]).name
    unrecorded = dataclasses.replace(info, config={k: v for k, v in info.config.items() if k != "data"})
    with pytest.raises(EfnasError, match="does not record the dataset it was trained on; give the dataset"):
        task_data(unrecorded)


def test_settings_the_data_cannot_honour_are_refused(trained_tiny_supernet):
    _, info = load_supernet(trained_tiny_supernet)
    data = task_data(info)
    with pytest.raises(EfnasError, match=f"val_subset {data.num_val + 1} exceeds the {data.num_val} validation images"):
        Scorer(data, EvalConfig(val_subset=data.num_val + 1))
    with pytest.raises(EfnasError, match="not one full batch"):
        Scorer(data, EvalConfig(batch_size=data.num_train + 1))
    Scorer(data, EvalConfig(calib_batches=0, batch_size=data.num_train + 1))  # no calibration: no batch needed
    for bad in ({"calib_batches": -1}, {"batch_size": 0}, {"val_subset": 0}, {"seed": -1}):
        with pytest.raises(EfnasError, match=f"{next(iter(bad))} must be at least"):
            EvalConfig(**bad)


def test_one_writer_per_format_in_export_order():
    assert tuple(WRITERS) == FORMATS
