"""`finetune --keep best|last`: which epoch's weights, validation predictions and metrics the bundle keeps,
and what model.json says about it."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from conftest import assert_same_model
from image_factory import write_labelled_folder
from quorum.cli import main
from quorum.errors import QuorumError
from quorum.models import bundle
from quorum.train import checkpoint, summary
from quorum.train.finetune import finetune
from quorum.train.recipe import Recipe

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def recipe(data, models, **overrides) -> Recipe:
    # Two epochs with the whole net training, then one at a learning rate far too high: the last epoch reads
    # worse on validation than the second (checked below, so the case is real, not assumed).
    settings = dict(backbone="tinyvgg", data=str(data), models_dir=str(models), image_size=32, epochs=3,
                    unfreeze_after=2, train_blocks=3, lr=1e-2, finetune_lr=3.0, batch_size=8, workers=0,
                    weights="none", cache_features=False)
    return Recipe(**{**settings, **overrides})


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    return write_labelled_folder(tmp_path_factory.mktemp("data") / "data")


@pytest.fixture(scope="module")
def last_run(labelled, tmp_path_factory) -> tuple[Path, dict]:
    """The keep-last bundle, and the weights the final epoch ended with (from its checkpoint)."""
    models, final = tmp_path_factory.mktemp("last"), {}

    def grab_final(epoch: int) -> None:
        if epoch == 2:
            final.update(checkpoint.load(models / ".tinyvgg-32.partial")["model"])

    return finetune(recipe(labelled, models, keep="last"), quiet=True, on_epoch_end=grab_final), final


def accuracy_of(val_predictions: Path) -> float:
    frame = pd.read_csv(val_predictions)
    return float((frame["true_label"] == frame["predicted_label"]).mean())


def test_keep_last_keeps_the_final_epoch_though_an_earlier_one_read_higher(labelled, last_run, tmp_path):
    model_dir, final = last_run
    history = pd.read_csv(model_dir / "history.csv")
    assert history["val_accuracy"].iloc[:2].max() > history["val_accuracy"].iloc[2]  # the case this test needs
    info = json.loads((model_dir / "model.json").read_text())
    best = int(history["val_accuracy"].idxmax()) + 1
    assert (info["keep"], info["kept_epoch"], info["best_epoch"], info["recipe"]["keep"]) == ("last", 3, best, "last")
    assert info["metrics"]["accuracy"] == pytest.approx(history["val_accuracy"].iloc[2])
    assert accuracy_of(model_dir / bundle.VAL_PREDICTIONS) == pytest.approx(history["val_accuracy"].iloc[2])
    kept = load_file(str(model_dir / "model.safetensors"))
    assert kept.keys() == final.keys()
    for key, value in final.items():
        torch.testing.assert_close(kept[key], value, rtol=0, atol=0, msg=key)

    # The same run keeping the best epoch: the same epochs (seeded), a different kept one.
    best_dir = finetune(recipe(labelled, tmp_path / "models", keep="best"), quiet=True)
    pd.testing.assert_frame_equal(pd.read_csv(best_dir / "history.csv").drop(columns="seconds"),
                                  history.drop(columns="seconds"))
    best_info = json.loads((best_dir / "model.json").read_text())
    assert (best_info["keep"], best_info["kept_epoch"], best_info["best_epoch"]) == ("best", best, best)
    assert accuracy_of(best_dir / bundle.VAL_PREDICTIONS) == pytest.approx(history["val_accuracy"].max())
    assert bundle.read_info(best_dir).kept_epoch == best and bundle.read_info(model_dir).kept_epoch == 3


def test_resume_keeps_the_last_epoch_and_refuses_another_keep(labelled, last_run, tmp_path):
    run = recipe(labelled, tmp_path / "models", keep="last")

    def stop(epoch: int) -> None:
        if epoch == 1:  # after the epoch best on validation: a resumed run must still keep the last
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(run, quiet=True, on_epoch_end=stop)
    with pytest.raises(QuorumError, match=r"--resume cannot change --keep \(last then, best now\)"):
        finetune(recipe(labelled, tmp_path / "models", keep="best"), resume=True, quiet=True)
    resumed = finetune(run, resume=True, quiet=True)
    assert_same_model(resumed, last_run[0])
    assert json.loads((resumed / "model.json").read_text())["kept_epoch"] == 3


def test_the_default_keeps_the_last_epoch_and_says_when_it_read_far_below_the_best(labelled, last_run, tmp_path,
                                                                                   capsys):
    model_dir = finetune(recipe(labelled, tmp_path / "models"), quiet=True)  # no keep given
    assert_same_model(model_dir, last_run[0])
    assert json.loads((model_dir / "model.json").read_text())["keep"] == "last"
    history = pd.read_csv(model_dir / "history.csv")
    best = int(history["val_accuracy"].idxmax()) + 1
    assert f"Warning: the last epoch, kept, reads {history['val_accuracy'].iloc[2]:.1%} on validation" in " ".join(
        capsys.readouterr().err.split())
    assert summary.last_epoch_warning(history.to_dict("records"), "best") is None  # best kept: nothing to say
    steady = history.assign(val_accuracy=history["val_accuracy"].max()).to_dict("records")
    assert summary.last_epoch_warning(steady, "last") is None
    assert f"epoch {best}" in summary.last_epoch_warning(history.to_dict("records"), "last")


def test_a_run_from_before_keep_resumes_keeping_its_best_epoch(labelled, tmp_path):
    saved = recipe(labelled, tmp_path).resolve(native_size=32, pretrained_available=False).as_dict()
    del saved["keep"]  # as a checkpoint written before --keep existed
    assert checkpoint.resumed_recipe(saved, recipe(labelled, tmp_path), done=1).keep == "best"
    with pytest.raises(QuorumError, match=r"--resume cannot change --keep \(best then, last now\)"):
        checkpoint.resumed_recipe(saved, recipe(labelled, tmp_path, keep="last"), done=1)


def test_a_bundle_from_before_keep_reads_its_best_epoch_as_the_kept_one(tmp_path):
    assert bundle.ModelInfo(tmp_path, "tinyvgg", 32, ("a", "b"), {"best_epoch": 4}).kept_epoch == 4


def test_a_bad_keep_is_one_error_line(tmp_path):
    result = CliRunner().invoke(main, ["finetune", "tinyvgg", "--keep", "first", "--models-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "Error: Invalid value for '--keep': 'first' is not one of 'best', 'last'." in result.output
    assert not any(tmp_path.iterdir())
    with pytest.raises(QuorumError, match="--keep must be best or last"):  # the library's own check
        Recipe(backbone="tinyvgg", keep="first").check()
