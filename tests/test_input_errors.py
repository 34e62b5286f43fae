"""What a hostile folder or an unlucky machine does to a run: one `Error:` line (or a row that says
why), never a traceback. Link loops, names that are not UTF-8, a bundle without its weights, a
read-only output folder, a full disk (a real tmpfs where we may mount one, else RLIMIT_FSIZE)."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner

import quorum
from image_factory import write_good_images, write_labelled_folder
from quorum.cli import main
from quorum.data.split import load_or_make_split
from quorum.errors import QuorumError
from quorum.models import onnx_export
from quorum.models.bundle import WEIGHTS
from quorum.predict.members import select_models
from quorum.predict.options import PredictOptions
from quorum.predict.pipeline import predict

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py
LATIN1_NAME = os.fsdecode(b"caf\xe9.png")  # what a Windows-1252 machine wrote: not UTF-8


def cli(*args):
    result = CliRunner().invoke(main, [*map(str, args)])
    assert "Traceback" not in result.output
    return result


def link_loop(folder: Path) -> None:
    """a.png -> b.png -> a.png: opening either fails with ELOOP."""
    os.symlink("b.png", folder / "a.png")
    os.symlink("a.png", folder / "b.png")


@contextmanager
def tmpfs(path: Path, options: str):
    """A real tmpfs at `path` (needs root); skips the test where it cannot be mounted."""
    path.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                                                   capture_output=True).returncode == 0
    if not mounted:
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=True)  # lazy: a file a failed run left open


@pytest.fixture
def read_only(tmp_path):
    """A folder nobody may write into: a read-only tmpfs as root (root ignores permission bits), else chmod."""
    folder = tmp_path / "read_only"
    if os.geteuid() == 0:
        with tmpfs(folder, "ro,size=64k"):
            yield folder
    else:
        folder.mkdir()
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)


# --- the scanned folder -----------------------------------------------------------------------------------


def test_a_link_loop_is_an_unreadable_row_not_a_traceback(tmp_path, tiny_models):
    folder = tmp_path / "images"
    write_good_images(folder, 2)
    link_loop(folder)
    frame = predict(folder, select_models(tiny_models, ["tinyvgg-32"]), PredictOptions(workers=0), quiet=True)
    errors = frame.set_index("path")["error"]
    assert errors["a.png"] == errors["b.png"] == "too many levels of symbolic links"
    assert (frame["status"] == "ok").sum() == 2


def test_a_link_loop_in_the_labelled_folder_is_recorded_as_unreadable(tmp_path):
    data = write_labelled_folder(tmp_path / "labelled", per_class=3, classes=2)
    link_loop(data / "red")
    split, _ = load_or_make_split(data, tmp_path / "models", 0.34, 0)
    assert sorted(split.unreadable.path) == ["red/a.png", "red/b.png"]


def test_a_file_name_that_is_not_utf8_is_one_error_line(tmp_path, tiny_models):
    folder = tmp_path / "images"
    write_good_images(folder, 2)
    shutil.copy(next(folder.iterdir()), folder / LATIN1_NAME)
    result = cli("predict", folder, "--models-dir", tiny_models, "--out", tmp_path / "p.csv", "--workers", 0)
    assert result.exit_code == 1
    assert result.output == (f"Error: 1 file name(s) in {folder} are not UTF-8 (caf\\xe9.png): rename them, "
                             f"e.g. convmv -f latin1 -t utf-8 -r --notest {folder}\n")
    assert not (tmp_path / "p.csv").exists()


def test_a_class_folder_whose_name_is_not_utf8_is_refused(tmp_path):
    data = write_labelled_folder(tmp_path / "labelled", per_class=2, classes=2)
    (data / "red").rename(data / LATIN1_NAME.removesuffix(".png"))
    with pytest.raises(QuorumError, match=r"1 file name\(s\) in .* are not UTF-8 \(caf\\xe9\)"):
        load_or_make_split(data, tmp_path / "models", 0.5, 0)


# --- the models --------------------------------------------------------------------------------------------


def test_a_bundle_without_its_weights_under_the_onnx_engine_is_one_error_line(tmp_path, tiny_models):
    models = tmp_path / "models"
    shutil.copytree(tiny_models / "tinyvgg-32", models / "tinyvgg-32")
    onnx_export.export_onnx(models / "tinyvgg-32")
    (models / "tinyvgg-32" / WEIGHTS).unlink()
    write_good_images(tmp_path / "images", 2)
    for engine in ("onnx", "auto"):
        result = cli("predict", tmp_path / "images", "--models-dir", models, "--out", tmp_path / "p.csv",
                     "--workers", 0, "--engine", engine)
        assert result.exit_code == 1
        assert result.output == (f"Error: cannot load the weights of {models / 'tinyvgg-32'} (No such file or "
                                 "directory): fine-tune it again\n")


# --- where the output goes ---------------------------------------------------------------------------------


def test_a_read_only_output_folder_is_one_error_line_before_any_work(read_only, tmp_path, tiny_models):
    data = write_labelled_folder(tmp_path / "labelled", per_class=2, classes=2)
    for models_dir in (read_only, read_only / "models"):
        result = cli("finetune", "tinyvgg", "--data", data, "--models-dir", models_dir, "--weights", "none")
        assert result.exit_code == 1
        assert result.output == (f"Error: cannot write {models_dir}: {_refusal()}; choose another --models-dir\n")
    for out in (read_only, read_only / "report"):
        result = cli("report", "--models-dir", tiny_models, "--out", out)
        assert result.exit_code == 1
        assert result.output == f"Error: cannot write {out}: {_refusal()}; choose another --out\n"
    write_good_images(tmp_path / "images", 2)
    preds = tmp_path / "preds.csv"
    assert cli("predict", tmp_path / "images", "--models-dir", tiny_models, "--out", preds,
               "--workers", 0).exit_code == 0
    result = cli("review", preds, "--out", read_only / "review")
    assert result.exit_code == 1
    assert result.output == f"Error: cannot write {read_only / 'review'}: {_refusal()}; choose another --out\n"


def _refusal() -> str:
    return "read-only file system" if os.geteuid() == 0 else "permission denied"


# --- a full disk during finetune ---------------------------------------------------------------------------


def finetune_args(data: Path, models_dir: Path) -> list[str]:
    return ["finetune", "tinyvgg", "--data", str(data), "--models-dir", str(models_dir), "--epochs", "1",
            "--weights", "none", "--image-size", "32", "--workers", "0"]


@pytest.mark.slow
def test_a_full_disk_during_finetune_is_one_error_line(tmp_path):
    """A real full disk: a 2 MB tmpfs takes split.csv, not the first checkpoint (about 4.6 MB)."""
    data = write_labelled_folder(tmp_path / "labelled", per_class=3, classes=2)
    with tmpfs(tmp_path / "disk", "size=2m") as disk:
        result = cli(*finetune_args(data, disk))
        assert result.exit_code == 1
        assert result.output.splitlines()[-1] == (
            f"Error: cannot write {disk / '.tinyvgg-32.partial' / 'checkpoint.pt'}: no space left on device; "
            "free some space or write elsewhere, then run again")
        assert not list((disk / ".tinyvgg-32.partial").iterdir())  # no half-written checkpoint left


def _limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, (2 * 2**20, 2 * 2**20))


@pytest.mark.slow
def test_a_file_size_limit_during_finetune_is_one_error_line(tmp_path):
    """Where no tmpfs can be mounted: RLIMIT_FSIZE (ulimit -f) of 2 MB on a real finetune process."""
    data = write_labelled_folder(tmp_path / "labelled", per_class=3, classes=2)
    env = {**os.environ, "PYTHONPATH": str(Path(quorum.__file__).parent.parent), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "quorum", *finetune_args(data, tmp_path / "models")],
                            capture_output=True, text=True, env=env, timeout=600, preexec_fn=_limit_file_size)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    checkpoint = tmp_path / "models" / ".tinyvgg-32.partial" / "checkpoint.pt"
    assert result.stderr.splitlines()[-1] == (f"Error: cannot write {checkpoint}: file too large; the file system "
                                              "(or ulimit -f) allows no file this large: write elsewhere")


def test_a_full_disk_during_review_is_one_error_line_and_leaves_nothing(tmp_path):
    """A file system out of inodes (a real tmpfs): review's folders fail after every check passed."""
    from quorum.predict.table import write_predictions
    from test_csv_format import disagreeing_frame, write_files

    names = ["a.png", "b.png"]
    write_files(tmp_path / "images", names)
    write_predictions(disagreeing_frame(tmp_path / "images", names, ("cat", "dog")), tmp_path / "p.csv")
    with tmpfs(tmp_path / "disk", "size=1m,nr_inodes=4") as disk:  # the root, the probe, .out.partial, one more
        result = cli("review", tmp_path / "p.csv", "--out", disk / "out")
        assert result.exit_code == 1
        assert result.output.startswith(f"Error: cannot write {disk / 'out'}: no space left on device (")
        assert result.output.count("\n") == 1
        assert not list(disk.iterdir())
