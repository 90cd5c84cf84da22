"""``efnas demo``: the whole pipeline on the embedded data, in one command."""

from __future__ import annotations

import argparse

from nas.demo import TABLE_CHOICES, DemoConfig
from supernet.cli import DocFormatter
from supernet.cliconfig import ConfigFlags, Flag
from supernet.io import progress_lines

__all__ = ["DEMO_FLAGS", "register"]


DEMO_FLAGS = ConfigFlags(DemoConfig, {
    "out": Flag("folder for every artefact (default: %(default)s)"),
    "space": None,  # the demo is the tiny space on the embedded task; `efnas train` takes others
    "data": None,
    "epochs": Flag("supernet training epochs of 15,000 images each (default: %(default)s)"),
    "steps_per_epoch": Flag("cap on the steps of each training epoch, for a quick look"),
    "validate_every": Flag("epochs between validations of the largest and smallest subnets while training; "
                           "the weights do not depend on it (default: %(default)s)"),
    "budget": Flag("latency budget: a preset of the space (its predicted latency) or milliseconds (default: %(default)s)"),
    "trials": Flag("architectures the TPE search evaluates; the slimming runs until it is done (default: %(default)s)"),
    "val_subset": Flag("validation images that score an architecture during the searches (default: %(default)s)"),
    "table": Flag("latency table: recalibrate (the shipped one re-timed on this machine, seconds), "
                  "measure (a whole table here, a few minutes) or shipped (as measured elsewhere) (default: %(default)s)",
                  choices=TABLE_CHOICES),
    "seed": Flag("seed of training, search and export (default: %(default)s)"),
    "threads": Flag("intra-op CPU threads (default: torch's choice)"),
})
"""The flags of ``efnas demo``, one per field of :class:`DemoConfig` it lets the user change."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="the whole pipeline on the bundled data in a few minutes: train, search, export",
        description=(
            "Run the whole pipeline on the embedded digits-mosaic task: train the tiny space's supernet "
            "once (a finished one in OUT/supernet is reused, an interrupted one resumed), adapt the latency "
            "table shipped for this space to this machine (or measure one here with --table measure), search under --budget with "
            "TPE and with the paper's greedy slimming, export the better winner to PyTorch, TorchScript, "
            "ONNX and Core ML with every output checked, and print a summary.\n\n"
            "Every step first prints the efnas command that does the same by hand, so you can go on from "
            "there with your own data (imagefolder:PATH), space, device table and budget."
        ),
        formatter_class=DocFormatter,
        epilog=(
            "examples:\n"
            "  efnas demo                           # everything under runs/demo\n"
            "  efnas demo --budget 0.5 --trials 60  # a budget in milliseconds, longer searches\n"
            "  efnas demo --table measure           # measure this machine's whole latency table first"
        ),
    )
    DEMO_FLAGS.add_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no live progress bar: log lines instead, as when the output is not a terminal")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from nas.demo import run_demo

    config, _ = DEMO_FLAGS.from_args(args)
    with progress_lines(enabled=args.no_progress):
        run_demo(config)
    return 0
