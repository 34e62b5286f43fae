"""Interrupted fine-tuning runs: what a new run says it discards, what --resume honours and refuses,
and that a resumed run equals an uninterrupted one wherever it was stopped."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from conftest import assert_same_model
from image_factory import write_labelled_folder
from quorum.errors import QuorumError
from quorum.models import weights
from quorum.models.registry import get_backbone
from quorum.train.finetune import finetune
from quorum.train.recipe import Recipe

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    return write_labelled_folder(tmp_path_factory.mktemp("data") / "data")


def recipe(data, models, **overrides) -> Recipe:
    settings = dict(backbone="tinyvgg", data=str(data), models_dir=str(models), image_size=32, epochs=3,
                    unfreeze_after=1, batch_size=8, workers=0, weights="none", lr=3e-3, finetune_lr=1e-3)
    return Recipe(**{**settings, **overrides})


def interrupted(run: Recipe, after_epoch: int) -> None:
    """Run `run` and stop it (as Ctrl-C would) once epoch `after_epoch` (0-based) has finished."""
    def stop(epoch: int) -> None:
        if epoch == after_epoch:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(run, quiet=True, on_epoch_end=stop)


def test_a_new_run_says_which_interrupted_run_it_discards(labelled, tmp_path, capsys):
    run = recipe(labelled, tmp_path / "models")
    interrupted(run, after_epoch=0)
    capsys.readouterr()
    finetune(run, quiet=True)
    said = " ".join(capsys.readouterr().err.split())
    assert (f"Discarding the interrupted run in {tmp_path / 'models' / '.tinyvgg-32.partial'} (1 of 3 epochs done): "
            "add --resume to continue such a run instead") in said


def test_resume_honours_more_epochs(labelled, tmp_path):
    run = recipe(labelled, tmp_path / "models")
    interrupted(run, after_epoch=1)
    model_dir = finetune(recipe(labelled, tmp_path / "models", epochs=5), resume=True, quiet=True)
    info = json.loads((model_dir / "model.json").read_text())
    assert info["recipe"]["epochs"] == 5 and info["epochs_run"] == 5
    assert pd.read_csv(model_dir / "history.csv")["epoch"].tolist() == [1, 2, 3, 4, 5]


def test_resume_with_more_epochs_keeps_the_worked_out_unfreeze_after(labelled, tmp_path):
    """--unfreeze-after left out is 3/4 of --epochs: a larger --epochs on --resume must not count as a change."""
    torch.manual_seed(0)
    start = tmp_path / "start.safetensors"  # weights given, so the default freezes the backbone for 3/4 of the run
    save_file(weights.build(get_backbone("tinyvgg"), 3, "none").state_dict(), str(start))
    run = recipe(labelled, tmp_path / "models", epochs=2, unfreeze_after=None, weights=str(start))
    interrupted(run, after_epoch=0)
    model_dir = finetune(recipe(labelled, tmp_path / "models", epochs=4, unfreeze_after=None, weights=str(start)),
                         resume=True, quiet=True)
    info = json.loads((model_dir / "model.json").read_text())
    assert (info["recipe"]["epochs"], info["recipe"]["unfreeze_after"]) == (4, 1)
    assert pd.read_csv(model_dir / "history.csv")["phase"].tolist() == [1, 2, 2, 2]


@pytest.mark.parametrize(("change", "message"), [
    ({"lr": 1e-2}, "--resume cannot change --lr (0.003 then, 0.01 now)"),
    ({"batch_size": 4, "seed": 3}, "--resume cannot change --batch-size (8 then, 4 now), --seed (0 then, 3 now)"),
    ({"epochs": 1}, "--resume cannot undo epochs already run: --epochs 1 now, 2 of 3 done"),
])
def test_resume_refuses_what_it_cannot_honour_by_name(labelled, tmp_path, change, message):
    run = recipe(labelled, tmp_path / "models")
    interrupted(run, after_epoch=1)
    with pytest.raises(QuorumError) as caught:
        finetune(recipe(labelled, tmp_path / "models", **change), resume=True, quiet=True)
    assert str(caught.value).startswith(message)
    assert (tmp_path / "models" / ".tinyvgg-32.partial" / "checkpoint.pt").is_file()  # still resumable


def test_resume_inside_the_cached_phase_one_equals_an_uninterrupted_run(labelled, tmp_path):
    settings = dict(epochs=4, unfreeze_after=3, train_blocks=1)
    whole = finetune(recipe(labelled, tmp_path / "a", **settings), quiet=True)
    run = recipe(labelled, tmp_path / "b", **settings)
    interrupted(run, after_epoch=0)
    assert_same_model(finetune(run, resume=True, quiet=True), whole)
