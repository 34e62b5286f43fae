import csv
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from torchvision import transforms as T

from conftest import CLASSES
from image_factory import (
    UNREADABLE,
    write_awkward_images,
    write_good_images,
    write_not_images,
)
from quorum.cli import main
from quorum.data.images import load_rgb
from quorum.errors import QuorumError
from quorum.predict import pipeline as predict_module
from quorum.predict.members import load_members, read_members, select_models
from quorum.predict.options import PredictOptions
from quorum.predict.pipeline import predict, predict_arrays
from quorum.predict.table import closing_lines
from quorum.predict.trust_table import trust_table
from quorum.predict.vote import vote

CAT, DOG, FOX = range(3)
TRIO = ["mobilenet_v3_small-40", "tinyvgg-32", "tinyvgg-32-copy"]  # select_models' order: by name
FIXED = ["path", "prediction", "votes", "members", "agreement", "decided_by", "confidence"]
MEMBER_COLUMNS = [column for name in TRIO for column in (f"{name}_prediction", f"{name}_confidence")]
LABELS = [f"{name}_prediction" for name in TRIO]
UNKNOWN = ["unknown_score", "unknown"]


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    """Good images at the top, every awkward kind (broken ones included) in a sub-folder."""
    root = tmp_path_factory.mktemp("mixed")
    write_good_images(root, 6, size=(64, 48))
    write_awkward_images(root / "awkward")
    return root


def run(folder, models_dir, names=(), **options):
    options = PredictOptions(**{"workers": 0, "batch_size": 4, **options})
    return predict(folder, select_models(models_dir, names), options, quiet=True)


def cli(*args):
    result = CliRunner().invoke(main, ["predict", *map(str, args)])
    assert "Traceback" not in result.output
    return result


def constant_models(tmp_path, make_model, votes, classes=CLASSES):
    """One tinyvgg per entry in `votes` that always votes that class: model i is named m<i>."""
    for index, label in enumerate(votes):
        make_model(tmp_path / "models", f"m{index}", "tinyvgg", 32, classes=classes, constant=label,
                   accuracy=0.5 + index / 10)
    return tmp_path / "models"


# --- the pipeline ---------------------------------------------------------------------------


def test_broken_files_get_error_rows_and_change_no_other_row(mixed, tiny_models, tmp_path):
    frame = run(mixed, tiny_models)
    broken = {"awkward/" + name for name in ("empty.jpg", "truncated.jpg", "truncated.png", "notes.jpg", "bomb.png")}
    assert len(broken) == len(UNREADABLE)

    # One row per file, in scan_images order, errors marked with their reason.
    assert frame["path"].tolist() == sorted(frame["path"], key=str) and len(frame) == 6 + 22
    errors = frame[frame["status"] == "error"]
    assert set(errors["path"]) == broken
    assert errors.set_index("path").loc["awkward/empty.jpg", "error"] == "empty file"
    assert errors[FIXED[1:] + MEMBER_COLUMNS].isna().all().all()
    assert (frame.loc[frame["status"] == "ok", "error"] == "").all()

    # The same files without the broken ones: every good row is the same (batches differ: batch_size 4).
    clean = tmp_path / "clean"
    for path in frame.loc[frame["status"] == "ok", "path"]:
        (clean / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(mixed / path, clean / path)
    alone = run(clean, tiny_models).set_index("path")
    assert frame["tinyvgg-32_confidence"].nunique() > 15  # rows differ, so a shifted row would show
    good = frame[frame["status"] == "ok"].set_index("path")
    assert good.index.tolist() == alone.index.tolist()
    labels = ["prediction", "votes", "members", "decided_by", *LABELS]
    pd.testing.assert_frame_equal(good[labels], alone[labels])
    numbers = ["agreement", "confidence", *(f"{name}_confidence" for name in TRIO)]
    np.testing.assert_allclose(good[numbers].to_numpy(float), alone[numbers].to_numpy(float), atol=1e-6)


def test_every_image_file_gets_a_row_and_everything_else_is_named(tmp_path, tiny_models):
    """The awkward kinds (.tga, .ppm, .jfif included), a dot-file, text files, a linked folder with a loop."""
    folder = tmp_path / "images"
    awkward = write_awkward_images(folder)
    write_good_images(folder / "elsewhere", 2)
    write_not_images(folder, linked=folder / "elsewhere")
    out = tmp_path / "preds.csv"
    result = cli(folder, "--models-dir", tiny_models, "--out", out, "--workers", 0)
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(out, keep_default_na=False)
    expected = sorted([p.name for p in awkward.values()] + ["linked/good_00_000.png", "linked/good_00_001.jpg",
                                                            "elsewhere/good_00_000.png", "elsewhere/good_00_001.jpg"])
    assert rows["path"].tolist() == expected
    assert (rows["status"] == "error").sum() == len(UNREADABLE)
    skipped = "skipped 4 files (1 .json, 2 .txt, 1 hidden) and 2 folder link loops"
    assert f"Not images, so no rows: {skipped} under {folder}" in " ".join(result.output.split())


def test_each_file_is_decoded_once(mixed, tiny_models, monkeypatch):
    calls = []

    def counting_load_rgb(path):
        calls.append(Path(path).name)
        return load_rgb(path)

    monkeypatch.setattr(predict_module, "load_rgb", counting_load_rgb)
    frame = run(mixed, tiny_models)
    assert len(calls) == len(frame) == len(set(calls))


def test_each_member_sees_the_pixels_torchvisions_eval_transform_gives(mixed, tiny_models):
    """The reference is written with torchvision's own float transforms, not quorum's preprocessing."""
    members = load_members(read_members(select_models(tiny_models)), torch.device("cpu"))
    paths = sorted(mixed.glob("good_*"))
    outputs = predict_arrays(paths, members, 0, torch.device("cpu"), batch_size=4, workers=0, quiet=True)
    for m, member in enumerate(members):
        info = member.info
        transform = T.Compose([T.Resize(int(info.image_size / 0.875), antialias=True), T.CenterCrop(info.image_size),
                               T.ToTensor(), T.Normalize(info.preprocessing.mean, info.preprocessing.std)])
        x = torch.stack([transform(load_rgb(path)) for path in paths])
        with torch.inference_mode():
            # member.run is the calibrated wrapper; these models have no val_predictions.csv, so T = 1.
            expected = torch.softmax(member.run.run.model(x), dim=1).numpy()
        np.testing.assert_allclose(outputs.probs[m], expected, atol=1e-5)


def test_workers_give_the_same_rows_as_the_main_process(mixed, tiny_models):
    pd.testing.assert_frame_equal(run(mixed, tiny_models, workers=2), run(mixed, tiny_models))


@pytest.mark.parametrize(("votes", "tie_breaker", "label", "decided_by"), [
    ((CAT, CAT, CAT), None, CAT, "unanimous"),
    ((CAT, DOG, CAT), None, CAT, "majority"),
    ((CAT, DOG, FOX), "m0", CAT, "tie-breaker"),
    ((CAT, DOG, FOX), "m1", DOG, "tie-breaker"),
    ((CAT, DOG, FOX), None, FOX, "tie-breaker"),  # m2 has the best validation accuracy
])
def test_three_members_vote_by_the_rule(tmp_path, make_model, mixed, votes, tie_breaker, label, decided_by):
    models = constant_models(tmp_path, make_model, votes)
    frame = run(mixed, models, tie_breaker=tie_breaker)
    ok = frame[frame["status"] == "ok"]
    assert (ok["prediction"] == CLASSES[label]).all() and (ok["decided_by"] == decided_by).all()
    assert (ok["votes"] == max(votes.count(v) for v in votes)).all() and (ok["members"] == 3).all()


def test_members_that_disagree_on_classes_are_refused_naming_both(tmp_path, make_model):
    make_model(tmp_path, "resnet50-224", "tinyvgg", 32, classes=("cat", "dog"))
    make_model(tmp_path, "mobilenet_v2-64", "tinyvgg", 32, classes=("cat", "fox"))
    with pytest.raises(QuorumError) as error:
        read_members(select_models(tmp_path, ["resnet50-224", "mobilenet_v2-64"]))
    assert str(error.value) == ("models disagree on classes: resnet50-224 has [cat, dog], "
                                "mobilenet_v2-64 has [cat, fox]; "
                                "pick models fine-tuned on the same classes with --model")


# --- lazy ------------------------------------------------------------------------------------


def test_lazy_skips_the_third_member_when_two_cheaper_ones_agree(mixed, tiny_models):
    full, lazy = run(mixed, tiny_models), run(mixed, tiny_models, lazy=True)
    assert lazy["prediction"].equals(full["prediction"])
    ok = lazy["status"] == "ok"
    # The identical tinyvggs run first (cheapest) and always agree: the MobileNet never runs.
    assert lazy.loc[ok, "mobilenet_v3_small-40_prediction"].isna().all()
    assert lazy.loc[ok, "mobilenet_v3_small-40_confidence"].isna().all()
    assert lazy.loc[ok, ["tinyvgg-32_prediction", "tinyvgg-32-copy_prediction"]].notna().all().all()
    # What a full run would say where it is determined; plainly unknown where the MobileNet could change it.
    assert (lazy.loc[ok, "members"] == 3).all()
    assert lazy.loc[ok, ["votes", "agreement"]].isna().all().all()
    assert (lazy.loc[ok, "decided_by"] == "unknown").all()
    assert (full.loc[ok, "decided_by"] != "unknown").all()
    # review: determined where every outcome of the skipped vote falls on one side of the level.
    at_half = run(mixed, tiny_models, lazy=True, min_agreement=0.5)  # 2 or 3 of 3: never below
    assert (at_half.loc[ok, "review"] == False).all()  # noqa: E712 (a boolean column with NA)
    unanimous = run(mixed, tiny_models, lazy=True, min_agreement=1.0)  # 2 of 3 or 3 of 3: either side
    assert unanimous.loc[ok, "review"].isna().all()


def test_a_lazy_run_closes_with_how_many_rows_at_least_2_of_3_agreed(mixed, tiny_models):
    """Every row of this lazy run is decided_by unknown (the MobileNet never runs), so decided_by's trust says
    nothing; 'at least 2 of 3' is known for every row, and validation says how right such rows were."""
    lazy = run(mixed, tiny_models, lazy=True)
    # Validation, by hand: 3 of 3 right; 2 of 3 right; 2 of 3 wrong; all differ. At least 2 of 3: 2 of 3 right.
    voted = np.array([[0, 0, 1, 0], [0, 0, 1, 1], [0, 1, 2, 2]])
    trust = trust_table(np.array([0, 0, 2, 0]), vote(np.eye(3)[voted] * 0.6 + 0.1, 0))
    lines = closing_lines(lazy, trust)
    expected = lazy.loc[lazy["status"] == "ok", "confidence"].mean()  # every row: at least 2 of 3 agree
    assert (f"at least 2 of 3 agree on 100% of rows (expected {expected:.0%} right by their confidence; on validation "
            "67% right, 3 images, 95% interval 21%-94%)") in lines
    assert any(line.endswith("confidence and p_<class> average the members that ran") for line in lines)


@pytest.mark.parametrize(("votes", "tie_breaker", "skipped"), [
    ((CAT, DOG, FOX), None, None),  # all differ: the tie-breaker, last to run, decides
    ((CAT, DOG), "m0", "m1"),  # the tie-breaker runs first, so the other can at most tie it
    ((CAT, DOG), "m1", None),
])
def test_lazy_runs_exactly_the_members_that_can_change_the_winner(tmp_path, make_model, mixed, votes, tie_breaker,
                                                                   skipped):
    models = constant_models(tmp_path, make_model, votes)  # equal costs: they run in name order
    full, lazy = run(mixed, models, tie_breaker=tie_breaker), run(mixed, models, tie_breaker=tie_breaker, lazy=True)
    assert lazy["prediction"].equals(full["prediction"])
    ok = lazy["status"] == "ok"
    for index in range(len(votes)):
        assert lazy.loc[ok, f"m{index}_prediction"].isna().all() == (f"m{index}" == skipped)


# --- the table -------------------------------------------------------------------------------


def test_probs_and_min_agreement_add_their_columns(mixed, tiny_models):
    frame = run(mixed, tiny_models, probs=True, min_agreement=0.9)
    p_columns = [f"p_{name}" for name in CLASSES]
    assert frame.columns.tolist() == (FIXED + MEMBER_COLUMNS + p_columns + ["consensus_kl"] + UNKNOWN
                                      + ["review", "status", "error"])
    ok = frame[frame["status"] == "ok"]
    assert ok["consensus_kl"].between(0, np.log(len(TRIO))).all() and ok["consensus_kl"].max() > 0
    np.testing.assert_allclose(ok[p_columns].sum(axis=1), 1.0, atol=1e-5)
    winner = [row[f"p_{row['prediction']}"] for _, row in ok.iterrows()]
    np.testing.assert_allclose(winner, ok["confidence"], atol=1e-6)
    assert ok["review"].tolist() == (ok["agreement"] < 0.9).tolist()
    assert frame.loc[frame["status"] == "error", "review"].isna().all()


def test_cli_writes_the_csv_and_a_summary(mixed, tiny_models, tmp_path):
    out = tmp_path / "preds.csv"
    result = cli(mixed, "--out", out, "--models-dir", tiny_models, "--workers", 0, "--lazy")
    assert result.exit_code == 0, result.output
    with open(out, newline="") as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == FIXED + MEMBER_COLUMNS + UNKNOWN + ["status", "error"]
    assert len(rows) == 28 and sum(row["status"] == "error" for row in rows) == 5
    assert rows[0]["path"] == "awkward/UPPER.PNG" and rows[-1]["path"] == "good_00_005.jpg"
    assert f"Wrote {out}: 28 rows, 5 errors" in result.stderr
    assert "lazy: skipped 23 of 69 member runs (33%)" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preds.csv", "preds.csv.json"]  # no temporary file left


def test_cli_help_states_the_vote_rule():
    result = cli("--help")
    assert result.exit_code == 0
    assert "all three differ -> the tie-breaker's label" in result.output


# --- errors through the CLI ---------------------------------------------------------------


@pytest.fixture
def env(tmp_path, tiny_models, mixed):
    return {"tmp": tmp_path, "models": tiny_models, "images": mixed, "out": tmp_path / "out" / "preds.csv"}


def error_cases(env):
    tmp, models, images = env["tmp"], env["models"], env["images"]
    (tmp / "out").mkdir()
    (tmp / "empty" / "sub").mkdir(parents=True)
    (tmp / "empty" / "notes.txt").write_text("no images here")
    (tmp / "a_file").write_text("")
    return {
        "missing folder": ([tmp / "nowhere"], f"image folder not found: {tmp / 'nowhere'}"),
        "empty folder": ([tmp / "empty"], f"no images in {tmp / 'empty'} (skipped 1 file (1 .txt)): quorum reads "
                                          "every format Pillow opens, e.g. .jpg, .png, .tif, .webp, .tga, .ppm"),
        "unknown model": ([images, "--model", "nope"],
                          f"unknown model 'nope' in {models}: choose from {', '.join(TRIO)}"),
        "unknown tie-breaker": ([images, "--tie-breaker", "nope"],
                                f"--tie-breaker nope is not one of the members: choose from {', '.join(TRIO)}"),
        "no models": ([images, "--models-dir", tmp / "out"],
                      f"no models in {tmp / 'out'}: fine-tune one with `quorum finetune BACKBONE` "
                      "or point --models-dir at a folder of models"),
        "out folder missing": ([images, "--out", tmp / "no" / "p.csv"],
                               f"cannot write {tmp / 'no' / 'p.csv'}: {tmp / 'no'} does not exist; "
                               "create the folder or choose another --out"),
        "out inside a file": ([images, "--out", tmp / "a_file" / "p.csv"],
                              f"cannot write {tmp / 'a_file' / 'p.csv'}: {tmp / 'a_file'} is a file, not a folder; "
                              "create the folder or choose another --out"),
        "out is a folder": ([images, "--out", tmp / "out"],
                            f"--out {tmp / 'out'} is a folder: give a file name, "
                            f"e.g. {tmp / 'out' / 'predictions.csv'}"),
    }


CASES = ["missing folder", "empty folder", "unknown model", "unknown tie-breaker", "no models", "out folder missing",
         "out inside a file", "out is a folder"]


@pytest.mark.parametrize("case", CASES)
def test_cli_errors_are_one_line_and_leave_no_file(env, case):
    args, message = error_cases(env)[case]
    if "--out" not in args:
        args = [*args, "--out", env["out"]]
    if "--models-dir" not in args:
        args = [*args, "--models-dir", env["models"]]
    result = cli(*args, "--workers", 0)
    assert result.exit_code == 1
    assert result.output == f"Error: {message}\n"
    assert not any(p.is_file() for p in (env["tmp"] / "out").rglob("*"))


def test_cli_refuses_class_mismatch_and_a_broken_model(tmp_path, make_model, mixed):
    make_model(tmp_path / "models", "a", "tinyvgg", 32, classes=("cat", "dog"))
    make_model(tmp_path / "models", "b", "tinyvgg", 32, classes=("dog", "cat"))
    out = tmp_path / "preds.csv"
    result = cli(mixed, "--out", out, "--models-dir", tmp_path / "models")
    assert result.exit_code == 1 and not out.exists()
    assert result.output == ("Error: models disagree on classes: a has [cat, dog], b has [dog, cat]; "
                             "pick models fine-tuned on the same classes with --model\n")

    (tmp_path / "models" / "a" / "model.safetensors").unlink()
    result = cli(mixed, "--out", out, "--models-dir", tmp_path / "models", "--model", "a")
    assert result.exit_code == 1 and not out.exists()
    assert result.output.startswith(f"Error: cannot load the weights of {tmp_path / 'models' / 'a'} (")


def test_an_interrupted_run_leaves_no_csv(mixed, tiny_models, tmp_path, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(predict_module, "predict_arrays", interrupt)
    out = tmp_path / "preds.csv"
    result = cli(mixed, "--out", out, "--models-dir", tiny_models, "--workers", 0)
    assert result.exit_code == 130 and list(tmp_path.iterdir()) == []
