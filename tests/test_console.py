"""Progress where nobody watches a terminal: CI, nohup, a pipe. The runs are real subprocesses whose
stdout and stderr are pipes, so the console sees exactly what it would under CI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import quorum
from image_factory import write_good_images

SRC = str(Path(quorum.__file__).parent.parent)


def run_piped(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def test_a_slow_loop_prints_plain_progress_lines_into_a_pipe():
    result = run_piped(
        "import time\n"
        "from quorum import console\n"
        "console.PLAIN_EVERY = 0.2\n"
        "def slow():\n"
        "    for i in range(10):\n"
        "        time.sleep(0.1)\n"
        "        yield [i, i]\n"
        "for _ in console.track(slow(), 20, 'Predicting', unit='images', size=len):\n"
        "    pass\n")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert 2 <= len(lines) <= 6, lines  # about one per 0.2 s of a 1 s loop; none at the end
    assert all(re.fullmatch(r"Predicting: \d+/20 images, \d+\.\d images/s, about \d+s left", line) for line in lines)
    assert "\x1b" not in result.stderr and result.stdout == ""  # no bar redraws, nothing on stdout


def test_quorum_predict_into_a_pipe_says_how_far_it_is(tiny_models, tmp_path):
    write_good_images(tmp_path / "images", 6)
    out = tmp_path / "preds.csv"
    result = run_piped(
        "import sys\n"
        "from quorum import console\n"
        "console.PLAIN_EVERY = 0  # a line after every batch: the run is too short to wait seconds\n"
        "from quorum.cli import main\n"
        f"main(['predict', {str(tmp_path / 'images')!r}, '--models-dir', {str(tiny_models)!r}, '--out', {str(out)!r},"
        " '--batch-size', '2', '--workers', '0', '--engine', 'torch'])\n")
    assert result.returncode == 0, result.stderr
    assert "Predicting: 2/6 images" in result.stderr and "Predicting: 4/6 images" in result.stderr
    assert out.is_file()
