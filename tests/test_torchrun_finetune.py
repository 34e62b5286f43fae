"""torchrun with 2 CPU processes (gloo): no process may wait forever for another."""

from __future__ import annotations

import os
import socket
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


def test_an_unexpected_failure_on_rank_0_stops_the_others_with_its_reason(tmp_path):
    """Two processes started as a launcher without torchrun's watchdog would start them (srun, mpirun):
    nothing kills rank 1 when rank 0 dies, so rank 1 must learn of it. Rank 0 fails with an OSError
    (models/split.csv is a folder), not a QuorumError. Before, rank 1 stopped only when gloo noticed the
    closed connection, with gloo's 'Connection closed by peer' and not the reason (nccl may wait)."""
    write_labelled_folder(tmp_path / "data", per_class=4)
    (tmp_path / "models" / "split.csv").mkdir(parents=True)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "quorum", "finetune", "tinyvgg", "--data", "data", "--image-size", "32",
               "--epochs", "1", "--weights", "none", "--workers", "0", "--quiet"]
    processes = [subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env={**ENV, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
                                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
                 for rank in (0, 1)]
    try:
        errors = [process.communicate(timeout=90)[1] for process in processes]
    finally:
        for process in processes:
            process.kill()
    assert [process.returncode for process in processes] == [1, 1]
    assert "IsADirectoryError" in errors[0]
    assert errors[1].strip().splitlines()[-1].startswith("Error: the main process (rank 0) failed: IsADirectoryError")
