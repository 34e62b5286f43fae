"""torchrun with 2 CPU processes (gloo): no process may wait forever for another."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest
from image_factory import write_labelled_folder

from quorum.data.split import load_or_make_split

pytestmark = pytest.mark.slow
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}


@pytest.mark.parametrize("cache", [[], ["--no-cache"]], ids=["cached phase 1", "plain loop"])
def test_a_process_whose_batch_is_all_unreadable_does_not_hang_the_others(tmp_path, cache):
    """Files broken after the split: with batch size 1, some step finds one process with an image and
    the other without. Before, that one skipped its backward pass while the other waited in all-reduce
    (the plain loop hung; with the cache, a process whose whole share was unreadable crashed)."""
    data = write_labelled_folder(tmp_path / "data", per_class=8)
    split, _ = load_or_make_split(data, tmp_path / "models", 0.2, 0)
    train = split.table[split.table.subset == "train"].path.tolist()
    for path in train[1::2]:  # every other training image, in both phases (cached features and plain)
        (data / path).write_bytes(b"")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "quorum", "finetune", "tinyvgg", "--data", "data", "--image-size", "32", "--epochs", "2",
               "--unfreeze-after", "1", "--batch-size", "1", "--weights", "none", "--workers", "0", "--quiet", *cache]
    done = subprocess.run(command, env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    history = pd.read_csv(tmp_path / "models" / "tinyvgg-32" / "history.csv")
    assert history["phase"].tolist() == [1, 2]
