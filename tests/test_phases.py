"""The phase switch: unfreezing keeps what phase 1 learned; defaults for random backbones; the logged LR."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file
from torch import nn

from image_factory import write_labelled_folder
from quorum.cli import main
from quorum.device import threads_for
from quorum.models import weights
from quorum.models.classifier import freeze, set_train_mode
from quorum.models.registry import get_backbone
from quorum.train.finetune import finetune
from quorum.train.loop import make_optimizer, train_one_epoch, warmup_cosine
from quorum.train.recipe import Recipe


@pytest.fixture
def labelled(tmp_path) -> Path:
    return write_labelled_folder(tmp_path / "data", per_class=8)


@pytest.fixture
def labelled_more(tmp_path) -> Path:
    return write_labelled_folder(tmp_path / "data_more", per_class=16)


def norms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@pytest.fixture
def pretrained_like(tmp_path) -> Path:
    """tinyvgg weights whose BatchNorm running statistics come from other data than the test's:
    dark, low-contrast images, as ImageNet statistics differ from a grayscale data set's."""
    torch.manual_seed(0)
    model = weights.build(get_backbone("tinyvgg"), 3, "none")
    model.train()
    for m in norms(model):
        m.momentum = None  # a plain average over the batches below
    with torch.no_grad():
        for _ in range(4):
            model(torch.rand(16, 3, 32, 32) * 0.3 - 1.5)
    path = tmp_path / "pretrained_like.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def test_keeping_norm_stats_leaves_the_features_of_phase_one_unchanged():
    model = weights.build(get_backbone("mobilenet_v2"), 4, "none")
    for m in norms(model):  # running statistics unlike any batch's
        m.running_mean.fill_(0.5)
        m.running_var.fill_(3.0)
    images = torch.rand(6, 3, 32, 32)
    with torch.no_grad():
        model.eval()
        frozen = model.forward_blocks(images)
        freeze(model, None)
        set_train_mode(model, None, keep_norm_stats=True)
        kept = model.forward_blocks(images)
        set_train_mode(model, None)
        batch = model.forward_blocks(images)
    assert all(p.requires_grad for p in model.parameters())
    torch.testing.assert_close(kept, frozen)
    assert not torch.allclose(batch, frozen, atol=1e-3)


def phase_switch_run(data: Path, weights_file: Path, models: Path, norm_stats: str | None) -> pd.DataFrame:
    # A learning rate too small to move the weights in phase 2: what changes there is BatchNorm's mode.
    recipe = Recipe(backbone="tinyvgg", data=str(data), models_dir=str(models), image_size=32, epochs=7,
                    unfreeze_after=6, batch_size=8, workers=0, weights=str(weights_file), lr=1e-2,
                    finetune_lr=1e-9, norm_stats=norm_stats, name="lite")
    return pd.read_csv(finetune(recipe, quiet=True) / "history.csv")


def test_unfreezing_a_pretrained_backbone_keeps_phase_one_accuracy(labelled_more, pretrained_like, tmp_path):
    kept = phase_switch_run(labelled_more, pretrained_like, tmp_path / "kept", None)  # pretrained weights' default
    updated = phase_switch_run(labelled_more, pretrained_like, tmp_path / "updated", "update")
    last_frozen, first_unfrozen = kept.iloc[-2], kept.iloc[-1]
    assert (last_frozen.phase, first_unfrozen.phase) == (1, 2)
    assert last_frozen.val_accuracy >= 0.8, "phase 1 learned the colours"
    assert first_unfrozen.val_accuracy == last_frozen.val_accuracy
    assert first_unfrozen.val_loss == pytest.approx(last_frozen.val_loss, abs=1e-4)
    assert first_unfrozen.train_accuracy >= 0.8
    # The old switch, batch statistics from the first unfrozen batch on, moves the head's features:
    # training accuracy collapses (here 90% -> 33%), as it did with real ImageNet weights.
    assert updated.val_accuracy.iloc[-2] == last_frozen.val_accuracy
    assert updated.train_accuracy.iloc[-1] < updated.train_accuracy.iloc[-2] - 0.3
    assert updated.val_loss.iloc[-1] > updated.val_loss.iloc[-2] + 0.1


def test_a_backbone_without_pretrained_weights_trains_whole_from_the_start(labelled, tmp_path, capsys):
    recipe = Recipe(backbone="tinyvgg", data=str(labelled), models_dir=str(tmp_path / "m"), image_size=32, epochs=2,
                    batch_size=8, workers=0)
    resolved = recipe.resolve(64, pretrained_available=False)
    assert (resolved.weights, resolved.unfreeze_after, resolved.norm_stats) == ("none", 0, "update")
    history = pd.read_csv(finetune(recipe, quiet=True) / "history.csv")
    assert list(history.phase) == [2, 2]
    assert "random weights" not in capsys.readouterr().err


def test_freezing_a_random_backbone_warns(labelled, tmp_path, capsys):
    recipe = Recipe(backbone="tinyvgg", data=str(labelled), models_dir=str(tmp_path / "m"), image_size=32, epochs=2,
                    unfreeze_after=1, batch_size=8, workers=0)
    finetune(recipe, quiet=True)
    err = " ".join(capsys.readouterr().err.split())
    assert ("Warning: tinyvgg starts from random weights, yet --unfreeze-after 1 keeps it frozen for 1 epoch(s)") in err


def test_pretrained_weights_keep_the_three_quarter_default():
    resolved = Recipe(backbone="mobilenet_v2", epochs=8).resolve(224, pretrained_available=True)
    assert (resolved.weights, resolved.unfreeze_after, resolved.norm_stats) == ("imagenet", 6, "keep")


def test_unfreeze_after_beyond_epochs_is_an_error_before_torch_loads(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    began = time.perf_counter()
    result = CliRunner().invoke(main, ["finetune", "tinyvgg", "--epochs", "8", "--unfreeze-after", "12"])
    assert result.exit_code == 1
    assert result.output == ("Error: --unfreeze-after 12 is more than --epochs 8: the backbone would never unfreeze; "
                             "give at most --unfreeze-after 8 (= --epochs: train only the head)\n")
    assert time.perf_counter() - began < 1.0
    assert not (tmp_path / "models").exists()


def test_the_cli_checks_the_epochs_without_importing_torch(tmp_path):
    """In a fresh interpreter: the error comes before `import torch` (seconds on a busy machine)."""
    code = ("import sys\nfrom quorum.cli import main\n"
            "try:\n    main(['finetune', 'tinyvgg', '--epochs', '2', '--unfreeze-after', '3'])\n"
            "except SystemExit as exit:\n    print(exit.code, 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert result.stdout.split() == ["1", "False"], result.stderr
    assert "Error: --unfreeze-after 3 is more than --epochs 2" in result.stderr


def test_the_logged_lr_is_the_mean_the_epoch_trained_with(labelled, tmp_path):
    recipe = Recipe(backbone="tinyvgg", data=str(labelled), models_dir=str(tmp_path / "m"), image_size=32, epochs=4,
                    unfreeze_after=2, batch_size=6, workers=0, lr=1e-2, finetune_lr=1e-3)
    history = pd.read_csv(finetune(recipe, quiet=True) / "history.csv")
    steps = 3  # 18 training images (6 of each class's 8; 2 are val), batches of 6

    def epoch_means(lr: float) -> list[float]:
        optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
        schedule, rates = warmup_cosine(optimizer, warmup_steps=steps, total_steps=2 * steps), []
        for _ in range(2 * steps):
            rates.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            schedule.step()
        return [sum(rates[:steps]) / steps, sum(rates[steps:]) / steps]

    expected = epoch_means(1e-2) + epoch_means(1e-3)
    assert list(history.lr) == pytest.approx(expected)
    assert (history.lr > 0).all(), "the last epoch of a phase trained at a rate above zero"


def test_torch_threads_leave_the_loader_workers_a_core_each(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0))
    with threads_for(workers=1) as threads:
        assert threads == torch.get_num_threads() == min(before, max(1, cores - 1))
    assert torch.get_num_threads() == before
    monkeypatch.setenv("OMP_NUM_THREADS", str(before))  # the user's choice wins
    with threads_for(workers=cores) as threads:
        assert threads == before


def test_quorum_asks_openmp_to_wait_passively_before_torch_loads():
    code = "import os, sys\nimport quorum\nprint(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert result.stdout.split() == ["PASSIVE", "False"], result.stderr


def test_torch_threads_take_this_process_share_of_the_cores(monkeypatch):
    """Two processes on this machine (torchrun's) each take half the cores, as predict's ONNX Runtime does."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before, cores = torch.get_num_threads(), len(os.sched_getaffinity(0))
    torch.set_num_threads(cores)
    try:
        with threads_for(workers=0, processes=2) as threads:
            assert threads == torch.get_num_threads() == max(1, cores // 2)
    finally:
        torch.set_num_threads(before)


def test_one_grad_scaler_carries_its_loss_scale_across_epochs():
    torch.manual_seed(0)
    model = weights.build(get_backbone("tinyvgg"), 3, "none")
    optimizer = make_optimizer(model, 1e-3, 0.0)
    scheduler = warmup_cosine(optimizer, 1, 4)
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0, growth_interval=1)  # doubles after every good step
    batch = (torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8), torch.tensor([0, 1, 2, 0]))
    normalize = get_backbone("tinyvgg").preprocessing(32).normalizer()
    scales = []
    for _ in range(2):
        train_one_epoch(model, [batch, batch], optimizer, scheduler, scaler, nn.CrossEntropyLoss(), torch.device("cpu"),
                        None, normalize, quiet=True)
        scales.append(scaler.get_scale())
    assert scales == [32.0, 128.0]
