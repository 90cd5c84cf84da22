"""One description per command maps its config to flags and back: every config survives
to_argv -> the real parser -> from_args, and library errors about a field come out as its flag."""

from __future__ import annotations

import dataclasses

import pytest

from latency_lut import BuildConfig
from nas.budget import BudgetRequest
from nas.cli import build_parser, main
from nas.demo import DemoConfig
from nas.export import ExportConfig
from nas.study import SearchConfig
from supernet.cliconfig import ConfigFlags, Flag, check_type
from supernet.errors import ConfigError, EfnasError
from supernet.train import TrainConfig

CONFIGS = [
    (["train"], TrainConfig(space="efficientformer-v1", data="digits", epochs=3, steps_per_epoch=4, lr=1e-3,
                            teacher="t.pth", seed=2, threads=1, device="cpu")),
    (["search"], SearchConfig(supernet="runs/x", strategy="nsga2", trials=7, seed=3, eval_seed=2, val_subset=100,
                              budgets=(BudgetRequest(lut="a.json", preset="L1"), BudgetRequest(lut="b.json", ms=2.5)),
                              storage="s.db", study="st", device="auto", threads=1, top=3, population=4)),
    (["search"], SearchConfig(budgets=(BudgetRequest(ms=0.125),))),
    (["export"], ExportConfig(supernet="runs/x", out="exports/y", preset="L1", formats=("onnx", "coreml"), force=True,
                              luts=("a.json", "b.json"), seed=3, finetune_lr=1e-3, tolerance=2e-5, device="cuda", threads=2)),
    (["lut", "build", "--space", "tiny", "--out", "t.json"], BuildConfig(backend="torch", threads=2, rounds=5, max_minutes=1.5,
                                                                       num_classes=10, device="box")),
    (["demo"], DemoConfig(out="o", epochs=1, steps_per_epoch=2, budget="0.5", table="measure", seed=1, threads=1, trials=3)),
]


@pytest.mark.parametrize("words, config", CONFIGS, ids=lambda v: type(v).__name__ if not isinstance(v, list) else None)
def test_to_argv_reproduces_the_config(words, config):
    parser = build_parser()
    args = parser.parse_args([*words, *_flags(parser, words).to_argv(config)])
    parsed, given = args.config_flags.from_args(args)
    assert parsed == config
    assert given == {f.name for f in dataclasses.fields(config) if getattr(config, f.name) != f.default}


def _flags(parser, words) -> ConfigFlags:
    return parser.parse_args([*words, *(["--supernet", "s", "--out", "o"] if words == ["export"] else [])]).config_flags


def test_to_argv_leaves_defaults_out_and_refuses_what_no_flag_gives():
    flags = _flags(build_parser(), ["demo"])
    assert flags.to_argv(DemoConfig()) == []
    assert flags.to_argv(DemoConfig(), always=("out", "table", "threads")) == ["--out", "runs/demo", "--table", "recalibrate"]
    assert _flags(build_parser(), ["train"]).to_argv(TrainConfig(), always=("skip_validation", "threads")) == []
    with pytest.raises(EfnasError, match="DemoConfig.space = 'small' cannot be given on the command line"):
        flags.to_argv(DemoConfig(space="small"))
    with pytest.raises(EfnasError, match="DemoConfig.val_subset = None cannot be given"):
        flags.to_argv(DemoConfig(val_subset=None))


def test_every_field_needs_an_entry():
    with pytest.raises(TypeError, match=r"no entry for \['threads'\]"):
        ConfigFlags(DemoConfig, {name: Flag("x") for name in DemoConfig.__dataclass_fields__ if name != "threads"})


@pytest.mark.parametrize(
    "argv, message",
    [
        # The library names the field (EvalConfig's `seed`, SearchConfig's `eval_seed`); the CLI its flag.
        (["search", "--budget", "L1", "--eval-seed", "-1"], "efnas: error: --eval-seed must be at least 0, got -1"),
        (["search", "--budget", "L1", "--trials", "0"], "efnas: error: --trials must be at least 1, got 0"),
        (["lut", "build", "--space", "tiny", "--out", "t.json", "--min-group-seconds", "-1"],
         "efnas: error: --min-group-seconds must be at least 0, got -1.0"),
        (["demo", "--trials", "0"], "efnas: error: --trials must be at least 1, got 0"),
        # argparse reads "nan" and "inf" as floats: every command refuses them, whatever its config checks.
        (["export", "--supernet", "s", "--out", "o", "--tolerance", "inf"], "efnas: error: --tolerance must be a finite number, got inf"),
        (["train", "--lr", "nan"], "efnas: error: --lr must be a finite number, got nan"),
    ],
)
def test_config_errors_name_the_flag(argv, message, capsys):
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == message


def test_library_errors_name_the_field():
    with pytest.raises(ConfigError, match="^eval_seed must be at least 0, got -1$") as error:
        SearchConfig(eval_seed=-1)
    assert error.value.field == "eval_seed"
    with pytest.raises(TypeError):
        DemoConfig("runs/demo")  # keyword-only, as the CLI builds it


@pytest.mark.parametrize(
    "name, value, message",
    [("trials", "6", "trials must be an integer, got '6'"), ("seed", True, "seed must be an integer, got True"),
     ("supernet", "", "supernet must be a string, got ''"), ("data", 3, "data must be a string, got 3")],
)
def test_check_type_uses_the_type_hints(name, value, message):
    with pytest.raises(ConfigError, match=message):
        check_type(SearchConfig, name, value)
    check_type(SearchConfig, "threads", 2)
