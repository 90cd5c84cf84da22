"""``efnas demo``: the whole pipeline on the embedded data, in one command."""

from __future__ import annotations

import argparse

from supernet.cli import DocFormatter

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    from nas.demo import DemoConfig

    defaults = DemoConfig()
    parser = subparsers.add_parser(
        "demo",
        help="the whole pipeline on the bundled data in a few minutes: train, search, export",
        description=(
            "Run the whole pipeline on the embedded digits-mosaic task: train the tiny space's supernet "
            "once (a finished one in OUT/supernet is reused, an interrupted one resumed), take the latency "
            "table shipped for this space (or measure one here with --measure), search under --budget with "
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
            "  efnas demo --measure                 # measure this machine's latency table first"
        ),
    )
    parser.add_argument("--out", default=defaults.out, help="folder for every artefact (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=defaults.epochs, help="supernet training epochs of 15,000 images each (default: %(default)s)")
    parser.add_argument("--steps-per-epoch", type=int, default=None, help="cap on the steps of each training epoch, for a quick look")
    parser.add_argument("--budget", default=defaults.budget, help="latency budget: a preset of the space (its predicted latency) or milliseconds (default: %(default)s)")
    parser.add_argument("--trials", type=int, default=defaults.trials, help="architectures the TPE search evaluates; the slimming runs until it is done (default: %(default)s)")
    parser.add_argument("--val-subset", type=int, default=defaults.val_subset, help="validation images that score an architecture during the searches (default: %(default)s)")
    parser.add_argument("--measure", action="store_true", help="measure a latency table on this machine (a few minutes) instead of using the shipped one")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of training, search and export (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="intra-op CPU threads (default: torch's choice)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from nas.demo import DemoConfig, run_demo

    config = DemoConfig(
        out=args.out,
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        budget=args.budget,
        trials=args.trials,
        val_subset=args.val_subset,
        measure=args.measure,
        seed=args.seed,
        threads=args.threads,
    )
    run_demo(config, show_progress=not args.no_progress)
    return 0
