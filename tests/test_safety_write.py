"""Writes stay inside the command's output and reads inside its folder (issue 17): review's folder,
edited predict CSVs, predict --out over a user's file, locks between two runs, links out of a folder."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from image_factory import COLOUR_CLASSES, write_good_images, write_labelled_folder
from quorum import files
from quorum.cli import main
from quorum.data.predictions_csv import paths_digest, sidecar
from quorum.data.pseudo_labels import read_pseudo_labels, read_soft_targets
from quorum.errors import QuorumError
from quorum.predict.table import read_predictions

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py
COLOURS = tuple(sorted(COLOUR_CLASSES))


def cli(*args):
    result = CliRunner().invoke(main, [*map(str, args)])
    assert "Traceback" not in result.output, result.output
    return result


def tree(root: Path) -> dict[str, bytes | str]:
    """Every entry under `root`: a file's bytes, a link's target, a folder as 'dir'."""
    found = {}
    for path in sorted(root.rglob("*")):
        key = path.relative_to(root).as_posix()
        found[key] = os.readlink(path) if path.is_symlink() else "dir" if path.is_dir() else path.read_bytes()
    return found


@pytest.fixture(scope="module")
def red_models(tmp_path_factory, one_thread):
    """Two members that always say red and one that always says green: every row is a 2-of-3 majority."""
    from conftest import save_model

    root = tmp_path_factory.mktemp("red_models")
    for name, colour in (("r1", "red"), ("r2", "red"), ("g", "green")):
        save_model(root, name, "tinyvgg", 32, classes=COLOURS, constant=COLOURS.index(colour))
    return root


@pytest.fixture
def voted(tmp_path, red_models) -> tuple[Path, Path]:
    """(folder, predict CSV) of real images, among them a/b.png and a__b.png, which review once mixed up."""
    folder = tmp_path / "U"
    for index, path in enumerate(write_good_images(tmp_path / "staging", 4, seed=3)):
        name = ["a/b.png", "a__b.png", "c.jpg", "d/e/f.jpg"][index]
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        path.rename(folder / name)
    (tmp_path / "staging").rmdir()
    csv = tmp_path / "preds.csv"
    result = cli("predict", folder, "--out", csv, "--models-dir", red_models, "--workers", 0, "--quiet")
    assert result.exit_code == 0, result.output
    return folder, csv


def forge(csv: Path, edit) -> None:
    """Edit the CSV as an attacker would, then redo its sidecar's hashes (they are unkeyed)."""
    frame = edit(read_predictions(csv))
    frame.to_csv(csv, index=False)
    info = json.loads(sidecar(csv).read_text())
    folder = Path(info["folder"])

    def fingerprint(path: str) -> str:
        try:
            return files.fingerprint(folder / path)
        except OSError:
            return ""

    info.update(rows=len(frame), paths=paths_digest(frame["path"].tolist()),
                fingerprints=[fingerprint(path) for path in frame["path"]])
    sidecar(csv).write_text(json.dumps(info))


def add_row(frame: pd.DataFrame, path: str) -> pd.DataFrame:
    return pd.concat([frame, frame.iloc[[0]].assign(path=path)], ignore_index=True)


# --- review: where it writes --------------------------------------------------------------------


def test_review_keeps_sub_folders_so_two_files_never_share_a_name(voted, tmp_path):
    folder, csv = voted
    before = tree(folder)
    result = cli("review", csv, "--out", tmp_path / "R")
    assert result.exit_code == 0, result.output
    assert tree(folder) == before  # a/b.png was once rewritten with a__b.png's bytes
    placed = {p.relative_to(tmp_path / "R").as_posix() for p in (tmp_path / "R").rglob("*") if p.is_file()}
    assert placed == {"red/a/b.png", "red/a__b.png", "red/c.jpg", "red/d/e/f.jpg", "review.csv", "README.txt"}
    for name in ("a/b.png", "a__b.png", "d/e/f.jpg"):
        assert (tmp_path / "R" / "red" / name).read_bytes() == (folder / name).read_bytes()
    assert sorted(pd.read_csv(tmp_path / "R" / "review.csv")["file"]) == sorted(f"red/{p}" for p in before
                                                                                 if "." in p)


def test_review_takes_names_that_flattened_would_pass_255_bytes(red_models, tmp_path):
    deep = tmp_path / "U" / ("d" * 150) / ("e" * 150 + ".png")  # a__b-style flattening: 306 bytes, too long
    deep.parent.mkdir(parents=True)
    write_good_images(tmp_path / "staging", 1)[0].rename(deep)
    csv = tmp_path / "preds.csv"
    assert cli("predict", tmp_path / "U", "--out", csv, "--models-dir", red_models, "--workers", 0, "-q").exit_code == 0
    result = cli("review", csv, "--out", tmp_path / "R")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "R" / "red" / deep.relative_to(tmp_path / "U")).read_bytes() == deep.read_bytes()


@pytest.mark.parametrize("label", ["..", "../escape", "ABSOLUTE", "purple", "review.csv"])
def test_review_refuses_a_label_the_run_does_not_have(voted, tmp_path, label):
    _, csv = voted
    label = str(tmp_path / "escape") if label == "ABSOLUTE" else label
    forge(csv, lambda frame: frame.assign(prediction=label))
    before = tree(tmp_path)
    result = cli("review", csv, "--out", tmp_path / "R")
    assert result.exit_code == 1
    assert result.stderr == (f"Error: {csv} predicts label(s) its run does not have: {label!r} (its classes: "
                             f"{', '.join(COLOURS)}); run quorum predict again\n")
    assert tree(tmp_path) == before


def outside_paths(folder: Path) -> list[str]:
    """Three ways out of `folder`: `..`, an absolute path and a link, each to a real image beside it."""
    secret = write_good_images(folder.parent / "private", 1, seed=8)[0]
    (folder / "link.png").symlink_to(secret)
    return [f"../private/{secret.name}", str(secret), "link.png"]


@pytest.mark.parametrize("way", range(3))
def test_review_and_pseudo_labels_refuse_a_path_outside_the_folder(voted, tmp_path, way):
    folder, csv = voted
    path = outside_paths(folder)[way]
    forge(csv, lambda frame: add_row(frame, path))
    before = tree(tmp_path)
    result = cli("review", csv, "--out", tmp_path / "R")
    assert result.exit_code == 1
    assert result.stderr == (f"Error: {csv} has 1 path(s) that lead outside its folder {folder.resolve()} "
                             f"({path!r}): only the files quorum predict found there are used; run quorum predict "
                             "again\n")
    assert tree(tmp_path) == before
    with pytest.raises(QuorumError, match="1 path\\(s\\) that lead outside its folder"):
        read_pseudo_labels(csv, COLOURS, min_agreement=0.6)
    # --distill reads the same rows: probabilities added, the same refusal.
    forge(csv, lambda frame: frame.assign(**{f"p_{colour}": 1 / len(COLOURS) for colour in COLOURS}))
    with pytest.raises(QuorumError, match="1 path\\(s\\) that lead outside its folder"):
        read_soft_targets(csv, COLOURS)


def test_review_refuses_while_another_review_writes_the_same_folder(voted, tmp_path):
    _, csv = voted
    with files.exclusive(tmp_path / ".R.lock", "held by the test"):  # what a running review holds
        result = cli("review", csv, "--out", tmp_path / "R")
    assert result.exit_code == 1
    assert result.stderr == (f"Error: another quorum review is writing {tmp_path / 'R'} now: wait for it, "
                             "or choose another --out\n")
    assert not (tmp_path / "R").exists()
    assert cli("review", csv, "--out", tmp_path / "R").exit_code == 0  # free again, and no lock left behind
    assert not (tmp_path / ".R.lock").exists()


def test_review_never_deletes_a_partial_folder_it_did_not_make(voted, tmp_path):
    _, csv = voted
    users = tmp_path / ".R.partial"
    users.mkdir()
    (users / "notes.txt").write_text("mine")
    result = cli("review", csv, "--out", tmp_path / "R")
    assert result.exit_code == 1
    assert result.stderr == (f"Error: {users} exists and is not a review quorum left unfinished: move it away, "
                             "or choose another --out\n")
    assert (users / "notes.txt").read_text() == "mine" and not (tmp_path / "R").exists()
    # One a killed review left (it carries review's mark) is replaced.
    (users / "notes.txt").unlink()
    (users / ".quorum-review-partial").write_text("")
    assert cli("review", csv, "--out", tmp_path / "R").exit_code == 0
    assert not users.exists() and not (tmp_path / "R" / ".quorum-review-partial").exists()


def test_pseudo_labels_count_only_the_images_that_train(voted, tmp_path):
    folder, csv = voted
    (folder / "notes.png").write_text("not pixels")  # a row an edited CSV calls readable
    forge(csv, lambda frame: add_row(frame, "notes.png"))
    data = write_labelled_folder(tmp_path / "labelled", per_class=4)
    result = cli("finetune", "tinyvgg", "--data", data, "--models-dir", tmp_path / "models", "--image-size", 32,
                 "--epochs", 1, "--weights", "none", "--workers", 0, "--name", "p", "--quiet",
                 "--pseudo-labels", csv, "--pseudo-min-agreement", 0.6)
    assert result.exit_code == 0, result.output
    assert f"Left out 1 --pseudo-labels file(s) that cannot be read (e.g. {folder.resolve() / 'notes.png'}: " \
           in result.stderr
    info = json.loads((tmp_path / "models" / "p" / "model.json").read_text())["pseudo_labels"]
    assert info["added"] == 4 and info["per_class"]["red"] == 4 and info["rows"] == 5


# --- predict --out and merge --out: never over a user's file ------------------------------------


def test_predict_refuses_to_replace_an_image_a_model_or_a_users_file(voted, red_models, tmp_path):
    folder, csv = voted
    (tmp_path / "notes.txt").write_text("mine")
    before = {**tree(folder), **{f"models/{k}": v for k, v in tree(red_models).items()}}
    cases = {
        folder / "c.jpg": f"would replace {folder / 'c.jpg'}, inside the image folder {folder}",
        red_models / "r1" / "model.json": f"would replace {red_models / 'r1' / 'model.json'}, inside --models-dir "
                                          f"{red_models}",
        red_models / "r1" / "model": f"would replace {red_models / 'r1' / 'model.json'}, inside --models-dir "
                                     f"{red_models}",  # its sidecar would be model.json
        tmp_path / "notes.txt": f"would replace {tmp_path / 'notes.txt'}, which is not a quorum predictions CSV "
                                "(with notes.txt.json beside it)",
    }
    for out, problem in cases.items():
        result = cli("predict", folder, "--out", out, "--models-dir", red_models, "--workers", 0)
        assert result.exit_code == 1, out
        assert result.stderr == f"Error: --out {out} {problem}: choose another --out, or add --force to replace it\n"
    assert {**tree(folder), **{f"models/{k}": v for k, v in tree(red_models).items()}} == before
    assert (tmp_path / "notes.txt").read_text() == "mine"
    # An earlier predictions CSV is replaced, as is anything with --force.
    assert cli("predict", folder, "--out", csv, "--models-dir", red_models, "--workers", 0, "-q").exit_code == 0
    result = cli("predict", folder, "--out", tmp_path / "notes.txt", "--models-dir", red_models, "--workers", 0,
                 "-q", "--force")
    assert result.exit_code == 0 and read_predictions(tmp_path / "notes.txt").equals(read_predictions(csv))


@pytest.fixture
def parts(voted, red_models, tmp_path) -> list[Path]:
    """The two shards of a predict run over `voted`'s folder."""
    for index in range(2):
        result = cli("predict", voted[0], "--out", tmp_path / f"part{index}.csv", "--models-dir", red_models,
                     "--workers", 0, "-q", "--shard", f"{index}/2")
        assert result.exit_code == 0, result.output
    return [tmp_path / "part0.csv", tmp_path / "part1.csv"]


def test_merge_refuses_to_replace_a_users_file(parts, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = cli("merge", *parts, "--out", tmp_path / "notes.txt")
    assert result.exit_code == 1 and "add --force to replace it" in result.stderr
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_merge_never_replaces_one_of_its_parts(parts, tmp_path, force):
    """A part is the run's only copy of its rows until the merged CSV is checked: --out over one is refused."""
    before = {part: (part.read_bytes(), sidecar(part).read_bytes()) for part in parts}
    result = cli("merge", *parts, "--out", tmp_path / "." / "part0.csv", *force)  # another spelling of part0.csv
    assert (result.exit_code, result.stderr) == (1, f"Error: --out {tmp_path / '.' / 'part0.csv'} is one of the "
                                                    "parts being merged: choose another --out\n")
    assert {part: (part.read_bytes(), sidecar(part).read_bytes()) for part in parts} == before


@pytest.mark.parametrize("resplit", [[], ["--resplit"]])
def test_a_split_csv_quorum_did_not_write_is_neither_read_nor_replaced(tmp_path, resplit):
    """A user's own split.csv in the folder given as --models-dir: one Error line, where finetune crashed on
    its columns (and --resplit would have replaced it)."""
    data, models = write_labelled_folder(tmp_path / "data", per_class=4), tmp_path / "models"
    models.mkdir()
    (models / "split.csv").write_text("path,label\nmine.png,cat\n")
    result = cli(*finetune_args(data, models, epochs=1), *resplit)
    assert (result.exit_code, result.stderr) == (1, f"Error: {models / 'split.csv'} is not a split quorum wrote "
                                                    "(columns path, label, subset, reason): move it away, or "
                                                    "choose another --models-dir\n")
    assert sorted(p.name for p in models.iterdir()) == ["split.csv"]
    assert (models / "split.csv").read_text() == "path,label\nmine.png,cat\n"


@pytest.mark.parametrize("kind", ["folder", "file", "link"])
def test_finetune_never_replaces_a_folder_that_is_not_a_model(tmp_path, kind):
    """--name photos in a --models-dir that holds the user's photos/ (or a file, or a link, of that name): the
    finished run moved it aside and deleted it."""
    data, models = write_labelled_folder(tmp_path / "data", per_class=4), tmp_path / "models"
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    models.mkdir()
    users = models / "photos"
    {"folder": lambda: users.mkdir(), "file": lambda: users.write_text("mine"),
     "link": lambda: users.symlink_to(tmp_path / "mine", target_is_directory=True)}[kind]()
    if kind == "folder":
        (users / "notes.txt").write_text("mine")
    result = cli(*finetune_args(data, models, name="photos", epochs=1))
    assert (result.exit_code, result.stderr) == (1, f"Error: {users} exists and is not a quorum model: the finished "
                                                    "run would replace it; move it away, or give another --name\n")
    assert sorted(p.name for p in models.iterdir()) == ["photos"]
    assert (users / "notes.txt" if kind != "file" else users).read_text() == "mine"
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"


def test_finetune_never_deletes_a_users_folder_named_like_its_old_model(tmp_path):
    """.photos.old is where the previous model waits during the swap: a user's folder of that name was deleted
    when the run finished."""
    data, models = write_labelled_folder(tmp_path / "data", per_class=4), tmp_path / "models"
    users = models / ".photos.old"
    users.mkdir(parents=True)
    (users / "notes.txt").write_text("mine")
    result = cli(*finetune_args(data, models, name="photos", epochs=1))
    assert (result.exit_code, result.stderr) == (1, f"Error: {users} exists and is not a model quorum set aside: the "
                                                    "finished run would delete it; move it away, or give another "
                                                    "--name\n")
    assert (users / "notes.txt").read_text() == "mine" and not (models / "photos").exists()


def test_finetune_never_discards_a_partial_folder_it_did_not_make(tmp_path):
    data, models = write_labelled_folder(tmp_path / "data", per_class=4), tmp_path / "models"
    users = models / ".m.partial"
    users.mkdir(parents=True)
    (users / "notes.txt").write_text("mine")
    result = cli(*finetune_args(data, models, epochs=1))
    assert (result.exit_code, result.stderr) == (1, f"Error: {users} exists and is not a run quorum left "
                                                    "unfinished: move it away, or give another --name\n")
    assert (users / "notes.txt").read_text() == "mine"
    # One a killed run left before its first epoch (only a write cut short) is discarded, as before.
    (users / "notes.txt").unlink()
    (users / ".checkpoint.pt.123.tmp").write_bytes(b"cut short")
    assert cli(*finetune_args(data, models, epochs=1)).exit_code == 0
    assert not users.exists() and (models / "m" / "model.json").is_file()


# --- two runs at once ----------------------------------------------------------------------------


def finetune_args(data: Path, models: Path, name: str = "m", epochs: int = 2) -> list:
    return ["finetune", "tinyvgg", "--data", data, "--models-dir", models, "--image-size", 32, "--epochs", epochs,
            "--unfreeze-after", 0, "--weights", "none", "--workers", 0, "--name", name, "--quiet"]


def test_a_second_finetune_of_the_same_name_is_refused_while_the_first_runs(tmp_path):
    from quorum.train.finetune import finetune
    from quorum.train.recipe import Recipe

    data, models = write_labelled_folder(tmp_path / "data", per_class=4), tmp_path / "models"
    second = []

    def start_another(epoch: int) -> None:  # the first run is mid-training: its partial folder is live
        if epoch == 0:
            second.append(cli(*finetune_args(data, models)))

    recipe = Recipe(backbone="tinyvgg", data=str(data), models_dir=str(models), image_size=32, epochs=2,
                    unfreeze_after=1, workers=0, weights="none", name="m")
    finetune(recipe, quiet=True, on_epoch_end=start_another)
    assert second[0].exit_code == 1
    assert second[0].stderr == (f"Error: another quorum finetune is making {models / 'm'} now: wait for it to "
                                "finish, or give another --name\n")
    assert {"model.json", "model.safetensors", "model.onnx"} <= {p.name for p in (models / "m").iterdir()}
    assert json.loads((models / "m" / "model.json").read_text())["epochs_run"] == 2
    assert sorted(p.name for p in models.iterdir()) == ["m", "split.csv", "split.csv.json"]  # no lock file left behind


def test_two_finetunes_starting_at_once_share_one_split(tmp_path, monkeypatch):
    from quorum.data import split as split_module

    data, models = write_labelled_folder(tmp_path / "data", per_class=6), tmp_path / "models"
    both_checked = threading.Barrier(2, timeout=2)
    real = split_module.find_unreadable

    def meet_then_decode(*args, **kwargs):  # hold each maker here until the other has looked for split.csv
        try:
            both_checked.wait()
        except threading.BrokenBarrierError:
            pass  # the other one is waiting for the lock, as it should
        return real(*args, **kwargs)

    monkeypatch.setattr(split_module, "find_unreadable", meet_then_decode)
    made = {}

    def make(seed: int, fraction: float) -> None:
        made[seed] = split_module.load_or_make_split(data, models, fraction, seed)

    threads = [threading.Thread(target=make, args=args) for args in ((0, 0.2), (1, 0.5))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    (first, first_new), (second, second_new) = made[0], made[1]
    assert first.digest == second.digest and first_new != second_new
    assert split_module._digest(pd.read_csv(models / "split.csv", keep_default_na=False, dtype=str)) == first.digest


# --- a member fewer ------------------------------------------------------------------------------


def test_predict_names_a_model_folder_it_leaves_out(voted, red_models, tmp_path):
    import shutil

    folder, _ = voted
    models = tmp_path / "models"
    shutil.copytree(red_models, models)
    (models / "g" / "model.json").unlink()  # weights there, model.json lost: once dropped without a word
    result = cli("predict", folder, "--out", tmp_path / "p.csv", "--models-dir", models, "--workers", 0, "-q")
    assert result.exit_code == 0, result.output
    assert (f"Warning: left out {models / 'g'}: no model.json (an unfinished or damaged model; fine-tune it again); "
            "using the 2 other model(s)") in result.stderr
    assert result.stderr.count("Warning: left out") == 1  # said once, not again with the closing lines
    assert list(read_predictions(tmp_path / "p.csv").filter(like="_prediction").columns) == [
        "r1_prediction", "r2_prediction"]
    (models / "r2" / "model.safetensors").unlink()  # model.json there, weights gone: an error naming it
    result = cli("predict", folder, "--out", tmp_path / "q.csv", "--models-dir", models, "--workers", 0, "-q")
    assert result.exit_code == 1 and f"\nError: cannot load the weights of {models / 'r2'} (" in result.stderr


# --- nothing from outside the folder -------------------------------------------------------------


def test_a_scan_never_follows_a_link_out_of_its_folder(tmp_path):
    from quorum.data.images import scan_images

    folder = tmp_path / "U"
    write_good_images(folder / "inside", 2)
    write_good_images(tmp_path / "private", 2, seed=5)  # beside FOLDER: must never become a row
    (folder / "up").symlink_to(tmp_path, target_is_directory=True)
    (folder / "photo.png").symlink_to(tmp_path / "private" / "good_05_000.png")
    (folder / "inside" / "again").symlink_to(folder / "inside", target_is_directory=True)  # inside: a loop
    scan = scan_images(folder)
    assert [p.relative_to(folder).as_posix() for p in scan.images] == ["inside/good_00_000.png",
                                                                        "inside/good_00_001.jpg"]
    assert scan.summary() == "skipped 1 folder link loop and 2 links out of the folder"


def test_merge_refuses_a_part_with_a_label_the_members_do_not_have(parts, tmp_path):
    part = parts[1]
    read_predictions(part).assign(prediction="purple").to_csv(part, index=False)  # the sidecar still matches
    result = cli("merge", *parts, "--out", tmp_path / "all.csv")
    assert result.exit_code == 1
    assert result.stderr == (f"Error: {part} has label(s) the members do not have ('purple'; their classes: "
                             f"{', '.join(COLOURS)}): edited? predict shard 1/2 again\n")
    assert not (tmp_path / "all.csv").exists()


# --- the whole workflow --------------------------------------------------------------------------


def freeze(*roots: Path) -> None:
    """Read-only, files and folders: what a careful user's data looks like (root ignores it: bytes are compared too)."""
    for root in roots:
        for path in [root, *root.rglob("*")] if root.is_dir() else [root]:
            if not path.is_symlink():
                path.chmod(0o555 if path.is_dir() else 0o444)


def snapshot(root: Path, skip: Path) -> dict:
    """Every entry under `root` but `skip`: bytes, link targets, folders, and each file's mtime."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path == skip or skip in path.parents:
            continue
        key = path.relative_to(root).as_posix()
        if path.is_symlink():
            found[key] = os.readlink(path)
        elif path.is_dir():
            found[key] = "dir"
        else:
            found[key] = (path.read_bytes(), path.stat().st_mtime_ns)
    return found


@pytest.mark.slow  # about 40 s: two fine-tunings and a report
def test_the_whole_workflow_writes_only_its_own_outputs(tmp_path):
    """finetune -> predict -> review -> finetune --pseudo-labels -> report, on real images, in a tree where
    everything but each command's output is read-only: afterwards every other file is byte-identical."""
    from conftest import save_model

    labelled = write_labelled_folder(tmp_path / "labelled", per_class=4)
    unlabelled = tmp_path / "unlabelled"
    names = ["a/b.png", "a__b.png", "c/d.png", "e.png"]  # a/b.png and a__b.png: review once mixed them up
    for name, path in zip(names, write_good_images(tmp_path / "staging", len(names), seed=20)):
        (unlabelled / name).parent.mkdir(parents=True, exist_ok=True)
        path.rename(unlabelled / name)
    (tmp_path / "staging").rmdir()
    (unlabelled / "f.png").symlink_to(unlabelled / "c" / "d.png")  # a link inside the folder: a row as any
    (tmp_path / "notes.txt").write_text("the user's own file beside everything\n")
    work, models = tmp_path / "work", tmp_path / "work" / "models"
    models.mkdir(parents=True)
    freeze(labelled, unlabelled, tmp_path / "notes.txt")
    users = snapshot(tmp_path, skip=work)

    def run(*args) -> None:
        result = cli(*args)
        assert result.exit_code == 0, result.output

    run(*finetune_args(labelled, models, "a"))
    for name in ("red", "green"):  # with them every row is a majority or a tie: all go to review
        save_model(models, name, "tinyvgg", 32, classes=COLOURS, constant=COLOURS.index(name))
    freeze(*models.iterdir())
    before = {**snapshot(tmp_path, skip=work), **{f"models/{k}": v for k, v in snapshot(models, skip=work).items()}}
    run("predict", unlabelled, "--out", work / "preds.csv", "--models-dir", models, "--workers", 0, "-q")
    freeze(work / "preds.csv", work / "preds.csv.json")
    before |= {name: snapshot(work, skip=models)[name] for name in ("preds.csv", "preds.csv.json")}
    run("review", work / "preds.csv", "--out", work / "review")
    assert len(pd.read_csv(work / "review" / "review.csv")) == len(names) + 1
    run(*finetune_args(labelled, models, "b"), "--pseudo-labels", work / "preds.csv", "--pseudo-min-agreement", 0.01)
    run("report", "--models-dir", models, "--model", "a", "--model", "b", "--out", work / "reports",
        "--preds", work / "preds.csv", "--no-timing", "--workers", 0, "-q")

    after = {**snapshot(tmp_path, skip=work), **{f"models/{k}": v for k, v in snapshot(models, skip=work).items()}}
    after |= {name: snapshot(work, skip=models)[name] for name in ("preds.csv", "preds.csv.json")}
    assert snapshot(tmp_path, skip=work) == users
    assert {name: value for name, value in after.items() if not name.startswith("models/b")} == before
    assert sorted(p.name for p in work.iterdir()) == ["models", "preds.csv", "preds.csv.json", "reports", "review"]
    # no lock, no partial
    assert sorted(p.name for p in models.iterdir()) == ["a", "b", "green", "red", "split.csv", "split.csv.json"]


def test_the_reports_review_gallery_shows_no_image_from_outside_the_folder(voted, tmp_path):
    from quorum.report.gallery import review_gallery

    folder, csv = voted
    path = outside_paths(folder)[0]
    forge(csv, lambda frame: add_row(frame, path))
    frame = read_predictions(csv)
    rows = frame[["path", "prediction"]].assign(agreement=2 / 3, r1="red", r2="red", g="green").to_dict("records")
    groups, _ = review_gallery(csv, frame, rows, ["r1", "r2", "g"])
    sources = {tile["title"]: tile["src"] for tile in groups["red"]}
    assert sources[path] is None and all(sources[name] for name in sources if name != path)


def test_a_csv_whose_folder_was_moved_says_so(voted, tmp_path):
    folder, csv = voted
    folder.rename(tmp_path / "moved")
    result = cli("review", csv, "--out", tmp_path / "R")
    assert (result.exit_code, result.stderr) == (1, f"Error: the folder {csv} was written for, {folder}, is not there "
                                                    "(moved or deleted): run quorum predict again on the folder where "
                                                    "the images are now\n")


def test_review_never_writes_into_the_folder_it_reviews(voted):
    folder, csv = voted
    before = tree(folder)
    result = cli("review", csv, "--out", folder / "d" / "to-sort")
    assert (result.exit_code, result.stderr) == (1, f"Error: --out {folder / 'd' / 'to-sort'} is inside the folder "
                                                    f"{csv} was written for, {folder}: the links would join the images "
                                                    "there (a later predict would vote on them twice); choose a folder "
                                                    "outside it\n")
    assert tree(folder) == before


def test_predict_and_merge_refuse_while_another_run_writes_the_same_csv(voted, red_models, parts, tmp_path):
    """Two predicts of one --out shared its progress folder (the second replaced the first's) and could leave one's
    CSV beside the other's .json."""
    folder, _ = voted
    out = tmp_path / "same.csv"
    with files.exclusive(tmp_path / ".same.csv.lock", "held by the test"):  # what a running predict holds
        runs = [cli("predict", folder, "--out", out, "--models-dir", red_models, "--workers", 0, "-q"),
                cli("merge", *parts, "--out", out)]
    for result in runs:
        assert (result.exit_code, result.stderr) == (1, f"Error: another quorum run is writing {out} now: wait for "
                                                        "it, or choose another --out\n")
    assert not [path.name for path in tmp_path.iterdir() if path.name.startswith(("same", ".same"))]
    assert cli("predict", folder, "--out", out, "--models-dir", red_models, "--workers", 0, "-q").exit_code == 0
    assert not (tmp_path / ".same.csv.lock").exists()
