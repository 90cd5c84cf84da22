"""Run under torchrun by test_train.py: trains a few steps, then records this rank's parameter digest.

The digest file is the test's instrument (training itself writes only from rank 0).
"""

import os
import sys
from pathlib import Path

from supernet.train import TrainConfig, params_digest, train

out = Path(sys.argv[1])
result = train(TrainConfig(out=str(out), epochs=1, steps_per_epoch=4, batch_size=32, checkpoint_every=2, threads=1), show_progress=False)
(out / f"rank{os.environ['RANK']}.sha256").write_text(params_digest(result.supernet))
