"""`quorum finetune` through the CLI: every user mistake is one `Error:` line, exit 1, nothing written."""

from __future__ import annotations

import pickle
import socket
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from image_factory import write_good_images, write_labelled_folder
from quorum.cli import main
from quorum.models import weights
from quorum.models.registry import get_backbone

FAST = ["--image-size", "32", "--epochs", "1", "--workers", "0", "--quiet"]


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    write_labelled_folder(tmp_path / "data")
    return tmp_path


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def assert_error(result, message: str) -> None:
    assert result.exit_code == 1, result.output
    assert result.output == f"Error: {message}\n"
    assert not any(p.name.endswith("-32") for p in Path("models").glob("*")), "no model folder was written"


def test_finetune_on_the_command_line_writes_a_model(workdir):
    result = run("finetune", "tinyvgg", "--data", "data", *FAST)
    assert result.exit_code == 0, result.output
    assert (workdir / "models" / "tinyvgg-32" / "model.json").is_file()


def test_missing_data_folder(workdir):
    assert_error(run("finetune", "tinyvgg", "--data", "nowhere", *FAST),
                 "data folder nowhere does not exist: give --data a folder with one sub-folder per class")


def test_data_folder_without_class_folders(workdir):
    (workdir / "flat").mkdir()
    write_good_images(workdir / "flat", 2)
    assert_error(run("finetune", "tinyvgg", "--data", "flat", *FAST),
                 "flat has no class sub-folders: put each class's images in flat/<class>/")


def test_class_folder_without_images(workdir):
    (workdir / "data" / "purple").mkdir()
    assert_error(run("finetune", "tinyvgg", "--data", "data", *FAST),
                 "class folder data/purple has no images: add some or remove the folder")


def test_class_folder_with_only_unreadable_images(workdir):
    (workdir / "data" / "purple").mkdir()
    (workdir / "data" / "purple" / "a.png").write_bytes(b"")
    assert_error(run("finetune", "tinyvgg", "--data", "data", *FAST),
                 "class purple in data has no readable image (purple/a.png: empty file): "
                 "replace the files or remove the folder")


def test_a_single_class(workdir):
    write_good_images(workdir / "one" / "only", 3)
    assert_error(run("finetune", "tinyvgg", "--data", "one", *FAST),
                 "one has only one class (only): a classifier needs at least two class folders")


def test_the_scan_takes_every_pillow_format_and_names_what_it_skipped(workdir):
    from PIL import Image

    Image.new("RGB", (40, 30), (220, 30, 30)).save(workdir / "data" / "red" / "scan.tga")
    (workdir / "data" / "red" / "notes.txt").write_text("not pixels")
    (workdir / "data" / "green" / ".DS_Store").write_bytes(b"Bud1")
    (workdir / "data" / "README.md").write_text("outside every class folder")
    result = run("finetune", "tinyvgg", "--data", "data", *[a for a in FAST if a != "--quiet"])
    assert result.exit_code == 0, result.output
    split = pd.read_csv(workdir / "models" / "split.csv")
    assert "red/scan.tga" in set(split["path"]) and len(split) == 25
    assert "Not images, so left out: skipped 3 files (1 .md, 1 .txt, 1 hidden) under data" in result.output


def test_unknown_backbone_lists_the_choices(workdir):
    result = run("finetune", "resnet51", "--data", "data", *FAST)
    assert_error(result, "unknown backbone 'resnet51': choose one of mobilenet_v2, mobilenet_v3_small, "
                 "mobilenet_v3_large, resnet18, resnet50, efficientnet_b0, efficientnet_b2, vit_b_16, tinyvgg, "
                 "or timm/<model> with timm installed")


def test_no_network_names_the_offline_alternatives(workdir, monkeypatch):
    def no_network(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setenv("TORCH_HOME", str(workdir / "empty-cache"))
    result = run("finetune", "resnet18", "--data", "data", "--weights", "imagenet", *FAST)
    assert result.exit_code == 1
    # torchvision also says what it tried to download; quorum adds exactly one error line.
    [error] = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert error.startswith("Error: could not download ImageNet weights for resnet18 (")
    assert "use --weights none (random init), --weights PATH" in error and "--weights efficientnet-lite0" in error
    assert "Traceback" not in result.output
    assert not (workdir / "models").exists()  # no split.csv left behind by a run that never trained


def test_a_failed_start_keeps_a_split_made_before(workdir):
    assert run("finetune", "tinyvgg", "--data", "data", *FAST).exit_code == 0
    split = (workdir / "models" / "split.csv").read_text()
    result = run("finetune", "tinyvgg", "--data", "data", "--weights", "nope.safetensors", "--name", "x", *FAST)
    assert result.exit_code == 1 and result.output.startswith("Error: weights file nope.safetensors does not exist")
    assert (workdir / "models" / "split.csv").read_text() == split


def test_backbone_without_pretrained_weights(workdir):
    assert_error(run("finetune", "tinyvgg", "--data", "data", "--weights", "imagenet", *FAST),
                 "tinyvgg has no pretrained weights: use --weights none")


def test_weights_for_another_architecture(workdir):
    from safetensors.torch import save_file
    from torchvision.models import resnet18

    save_file(resnet18().state_dict(), "resnet18.safetensors")
    result = run("finetune", "mobilenet_v3_small", "--data", "data", "--weights", "resnet18.safetensors", *FAST)
    assert result.exit_code == 1
    assert result.output.startswith("Error: the weights do not fit mobilenet_v3_small (missing: features.0.0.weight")
    assert result.output.endswith(": use weights saved from mobilenet_v3_small\n")


def test_a_plain_pth_state_dict_loads_and_its_head_is_dropped(workdir):
    from safetensors.torch import load_file
    from torchvision.models import resnet18

    torch.manual_seed(5)
    given = resnet18(num_classes=7).state_dict()
    torch.save({"state_dict": given}, "resnet18.pth")
    # One frozen epoch: the backbone (BatchNorm statistics included) keeps exactly what it was given.
    result = run("finetune", "resnet18", "--data", "data", "--weights", "resnet18.pth", "--unfreeze-after", "1", *FAST)
    assert result.exit_code == 0, result.output
    saved = load_file(str(workdir / "models" / "resnet18-32" / "model.safetensors"))
    order = weights.build(get_backbone("resnet18"), 3, "none").state_dict()  # module order (the file's is sorted)
    backbone = [value for key, value in given.items() if not key.startswith("fc.")]
    kept = [saved[key] for key in order if not key.startswith("head.")]
    assert len(kept) == len(backbone) and all(torch.equal(a, b) for a, b in zip(kept, backbone))
    assert saved["head.0.weight"].shape == (3, 512)  # a new head for the 3 classes, not the file's 7


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path("pwned"),))


def test_a_pth_that_carries_code_is_refused_and_never_run(workdir):
    with open("evil.pth", "wb") as handle:
        pickle.dump({"fc.weight": torch.zeros(2, 2), "x": _Payload()}, handle)
    result = run("finetune", "resnet18", "--data", "data", "--weights", "evil.pth", *FAST)
    assert result.exit_code == 1
    assert result.output.startswith("Error: refused to load evil.pth: it contains pickled objects, not only tensors")
    assert not (workdir / "pwned").exists(), "the payload must never run"


def test_missing_weights_file(workdir):
    assert_error(run("finetune", "tinyvgg", "--data", "data", "--weights", "nope.safetensors", *FAST),
                 "weights file nope.safetensors does not exist: give --weights imagenet, none, efficientnet-lite0, "
                 "efficientnet-lite1, efficientnet-lite2 or an existing file")


def test_resume_with_nothing_to_resume(workdir):
    assert_error(run("finetune", "tinyvgg", "--data", "data", "--resume", *FAST),
                 "nothing to resume: no interrupted run at models/.tinyvgg-32.partial/checkpoint.pt; "
                 "run the same command without --resume")


def test_vit_needs_its_native_size(workdir):
    assert_error(run("finetune", "vit_b_16", "--data", "data", "--weights", "none", *FAST),
                 "vit_b_16 only takes 224 px images: use --image-size 224")


def test_too_many_train_blocks(workdir):
    assert_error(run("finetune", "tinyvgg", "--data", "data", "--train-blocks", "9", *FAST),
                 "--train-blocks 9 is more than tinyvgg's 3 blocks")


@pytest.mark.parametrize("option, value, message", [
    ("--epochs", "0", "--epochs must be at least 1 (got 0)"),
    ("--val-fraction", "1.5", "--val-fraction must be between 0 and 1 (got 1.5)"),
    ("--name", "a/b", "--name 'a/b' must be a plain folder name (no '/', not starting with '.')"),
])
def test_bad_numbers_and_names(workdir, option, value, message):
    args = [a for a in FAST if a not in ("--epochs", "1")]
    assert_error(run("finetune", "tinyvgg", "--data", "data", option, value, *args), message)


def test_changed_files_since_the_split_ask_for_resplit(workdir):
    assert run("finetune", "tinyvgg", "--data", "data", *FAST).exit_code == 0
    write_good_images(workdir / "data" / "red", 2, seed=9)
    result = run("finetune", "tinyvgg", "--data", "data", "--name", "second", *FAST)
    assert result.exit_code == 1
    assert result.output == (
        "Error: the images in data changed since models/split.csv was made (2 added, 0 removed): add --resplit "
        "to make a new split (then fine-tune the other models again so all share it)\n")
    assert run("finetune", "tinyvgg", "--data", "data", "--name", "second", "--resplit", *FAST).exit_code == 0


def test_every_command_has_help():
    for name, _command in main.commands.items():
        result = CliRunner().invoke(main, [name, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output, name


@pytest.mark.slow
def test_the_issue_command_on_sample_data(tmp_path, monkeypatch):
    """`quorum finetune mobilenet_v2 --image-size 64 --epochs 2 --unfreeze-after 1 --weights none`, as users type it."""
    sample = Path(__file__).resolve().parents[1] / "sample_data" / "labelled"
    monkeypatch.chdir(tmp_path)
    result = run("finetune", "mobilenet_v2", "--data", str(sample), "--image-size", "64", "--epochs", "2",
                 "--unfreeze-after", "1", "--weights", "none", "--workers", "0")
    assert result.exit_code == 0, result.output
    model_dir = tmp_path / "models" / "mobilenet_v2-64"
    assert sorted(p.name for p in model_dir.iterdir()) == [
        "features.npz", "history.csv", "model.json", "model.onnx", "model.safetensors", "val_predictions.csv"]
    assert len(pd.read_csv(model_dir / "val_predictions.csv")) == 60
    assert "Saved models/mobilenet_v2-64" in result.output
