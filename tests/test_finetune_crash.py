"""A fine-tuning run killed (SIGKILL: no handler, no cleanup) at each step that writes files.

Each kill happens in a real process, at a precise point: the script below wraps the step so the
process signals itself there. Afterwards the work folder must hold nothing that contradicts the
checkpoint, and --resume must give the model an uninterrupted run gives.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from image_factory import write_labelled_folder
from quorum.models.bundle import load_model
from quorum.train.finetune import finetune
from test_resume import assert_same_model, recipe

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

KILL = """
import json, os, signal, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from quorum.train import checkpoint, finetune as ft
from quorum.train.recipe import Recipe

point, recipe = sys.argv[1], Recipe(**json.loads(sys.argv[2]))
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
if point == "before-checkpoint-1":  # epoch 2 validated (and maybe its best weights kept), not yet checkpointed
    save = checkpoint.save
    checkpoint.save = lambda work_dir, state: die() if state["epoch"] == 1 else save(work_dir, state)
elif point == "before-swap":  # the bundle complete in the work folder, not yet moved into place
    ft._replace_dir = lambda new, target: die()
elif point == "between-renames":  # the previous model moved aside, the new one not yet in its place
    rename = Path.rename
    Path.rename = lambda self, target: die() if self.name.endswith(".partial") else rename(self, target)
ft.finetune(recipe, quiet=True)
"""


def killed_at(point: str, run) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", KILL, point, json.dumps(asdict(run))], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    return write_labelled_folder(tmp_path_factory.mktemp("data") / "data")


@pytest.fixture(scope="module")
def whole(labelled, tmp_path_factory) -> Path:
    return finetune(recipe(labelled, tmp_path_factory.mktemp("whole")), quiet=True)


def test_killed_before_a_checkpoint_leaves_weights_that_match_it(labelled, whole, tmp_path):
    run = recipe(labelled, tmp_path / "models")
    killed_at("before-checkpoint-1", run)
    work = tmp_path / "models" / ".tinyvgg-32.partial"
    state = torch.load(work / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 0 and json.loads(state["best"])["epoch"] == 1  # the first epoch is always the best
    # Whatever the folder holds as best weights is the first epoch's, the one the checkpoint calls best.
    kept = load_file(str(work / "model.safetensors")) if (work / "model.safetensors").exists() else state["best_model"]
    for key, value in state["model"].items():
        torch.testing.assert_close(kept[key], value, msg=key)
    assert_same_model(finetune(run, resume=True, quiet=True), whole)


def test_killed_before_the_swap_resumes_to_the_finished_model(labelled, whole, tmp_path):
    run = recipe(labelled, tmp_path / "models")
    killed_at("before-swap", run)
    assert not (tmp_path / "models" / "tinyvgg-32").exists()
    assert_same_model(finetune(run, resume=True, quiet=True), whole)
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["split.csv", "split.csv.json", "tinyvgg-32"]


def test_killed_between_the_renames_resumes_to_the_new_model(labelled, whole, tmp_path):
    first = finetune(recipe(labelled, tmp_path / "models", epochs=1, unfreeze_after=0), quiet=True)
    run = recipe(labelled, tmp_path / "models")
    killed_at("between-renames", run)
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [  # no model folder at this instant;
        ".tinyvgg-32.lock", ".tinyvgg-32.old", ".tinyvgg-32.partial", "split.csv",  # the lock freed by the kill
        "split.csv.json"]
    assert_same_model(finetune(run, resume=True, quiet=True), whole)
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["split.csv", "split.csv.json", "tinyvgg-32"]
    load_model(first)  # and it loads
