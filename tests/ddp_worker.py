"""Run under torchrun by the tests: ``ddp_worker.py OUT`` trains a few steps, then records this
rank's parameter digest; ``ddp_worker.py score SUPERNET DATA OUT`` scores subnets with the
distributed Scorer and records what this rank saw and computed.

These files are the tests' instrument (training itself writes only from rank 0).
"""

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from supernet.train import TrainConfig, params_digest, train


def _train(out: Path) -> None:
    result = train(TrainConfig(out=str(out), epochs=1, steps_per_epoch=4, batch_size=32, checkpoint_every=2, threads=1), show_progress=False)
    (out / f"rank{os.environ['RANK']}.sha256").write_text(params_digest(result.supernet))


def _score(supernet_path: str, data_arg: str, out: Path) -> None:
    from supernet.checkpoint import load_supernet
    from supernet.data import load_data
    from supernet.evaluate import EvalConfig, Scorer

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    supernet, info = load_supernet(supernet_path)
    data = load_data(data_arg, info.space.resolution, seed=int(info.config.get("seed", 0)), workers=1)
    rank = dist.get_rank()
    record = {}
    for name, config in (("subset", EvalConfig(calib_batches=3, batch_size=64, val_subset=300, seed=1)),
                         ("full", EvalConfig(calib_batches=2, batch_size=50, seed=0))):
        scorer = Scorer(data, config)  # rank and world size from torch.distributed
        spec = info.space.preset("L1")
        model = scorer.recalibrate(supernet.extract(spec))
        torch.save({k: v for k, v in model.state_dict().items() if "running" in k}, out / f"bn-{name}-rank{rank}.pt")
        record[name] = {
            "top1": scorer.accuracy(model),
            "score_smallest": scorer.score(supernet, info.space.smallest()),
            "val_images_here": sum(len(labels) for _, labels in scorer.val_batches()),
        }
    alone = Scorer(data, EvalConfig(calib_batches=3, batch_size=64, val_subset=300, seed=1), rank=0, world_size=1)
    record["alone_images"] = sum(len(labels) for _, labels in alone.val_batches())
    (out / f"score-rank{rank}.json").write_text(json.dumps(record))
    dist.destroy_process_group()


if __name__ == "__main__":
    if sys.argv[1] == "score":
        _score(sys.argv[2], sys.argv[3], Path(sys.argv[4]))
    else:
        _train(Path(sys.argv[1]))
