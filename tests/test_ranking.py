"""Which rows to label next: the ranking on a hand-made predictions CSV, and `quorum review --budget`."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from click.testing import CliRunner

from image_factory import write_good_images
from quorum.cli import main
from quorum.errors import QuorumError
from quorum.predict import ranking
from quorum.predict.table import read_predictions, write_predictions

# Three members; p_ is the members' mean probability. By hand:
#   vote entropy: all differ ln 3 = 1.0986; two of three 0.6365; unanimous 0.
#   margin score 1 - (top - second): A 0.15, B 0.75, C 0.95, D 0.85.
ROWS = [  # path, member votes, p_cat, p_dog, p_fox, unknown
    ("a.png", ("cat", "cat", "cat"), 0.90, 0.05, 0.05, False),
    ("b.png", ("cat", "cat", "dog"), 0.60, 0.35, 0.05, False),
    ("c.png", ("dog", "dog", "cat"), 0.45, 0.50, 0.05, False),
    ("d.png", ("cat", "dog", "fox"), 0.45, 0.30, 0.25, False),
    ("f.png", ("fox", "dog", "cat"), 0.34, 0.33, 0.33, True),  # of no known class: kept apart
]


def hand_made(folder, with_probs=True, with_unknown=True) -> pd.DataFrame:
    rows = []
    for path, votes, p_cat, p_dog, p_fox, unknown in ROWS:
        probs = {"cat": p_cat, "dog": p_dog, "fox": p_fox}
        row = {"path": path, "prediction": max(probs, key=probs.get), "votes": max(votes.count(v) for v in votes),
               "members": 3, "decided_by": "", "confidence": max(probs.values())}
        row["agreement"] = row["votes"] / 3
        for m, label in enumerate(votes):
            row[f"m{m}_prediction"], row[f"m{m}_confidence"] = label, 0.6
        if with_probs:
            row.update({f"p_{name}": p for name, p in probs.items()})
        if with_unknown:
            row["unknown"] = unknown
        rows.append({**row, "status": "ok", "error": ""})
    rows.append({"path": "broken.png", "status": "error", "error": "truncated image file"})
    frame = pd.DataFrame(rows)
    frame.attrs["folder"] = str(folder)
    return frame


@pytest.fixture
def preds_csv(tmp_path):
    """The hand-made rows as a real CSV with its .json, over real image files."""
    folder = tmp_path / "unlabelled"
    for (path, *_), written in zip(ROWS + [("broken.png",)], write_good_images(folder, len(ROWS) + 1)):
        written.rename(folder / path)
    out = tmp_path / "preds.csv"
    write_predictions(hand_made(folder), out)
    return out


def test_disagreement_ranks_by_vote_entropy_then_margin_and_keeps_unknown_apart(preds_csv):
    ranked, apart = ranking.rank(read_predictions(preds_csv), "disagreement")
    assert ranked["path"].tolist() == ["d.png", "c.png", "b.png", "a.png"]  # c before b: the thinner margin
    assert ranked["rank"].tolist() == [1, 2, 3, 4]
    two_of_three = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    assert ranked["score"].tolist() == pytest.approx([math.log(3), two_of_three, two_of_three, 0.0])
    assert apart == 1


def test_margin_ranks_by_the_gap_between_the_two_lead_classes(preds_csv):
    ranked, _ = ranking.rank(read_predictions(preds_csv), "margin")
    assert ranked["path"].tolist() == ["c.png", "d.png", "b.png", "a.png"]
    assert ranked["score"].tolist() == pytest.approx([0.95, 0.85, 0.75, 0.15])


def test_random_is_a_seeded_shuffle_of_the_same_rows(preds_csv):
    frame = read_predictions(preds_csv)
    draws = {tuple(ranking.rank(frame, "random", seed)[0]["path"]) for seed in range(6)}
    assert len(draws) > 1 and all(sorted(draw) == ["a.png", "b.png", "c.png", "d.png"] for draw in draws)
    assert ranking.rank(frame, "random", 3)[0]["path"].tolist() == ranking.rank(frame, "random", 3)[0]["path"].tolist()


def test_without_probabilities_disagreement_still_ranks_and_margin_says_what_it_needs(tmp_path):
    frame = hand_made(tmp_path, with_probs=False, with_unknown=False)
    ranked, apart = ranking.rank(frame, "disagreement")
    assert ranked["path"].iloc[0] == "f.png" and apart == 0  # without the column nothing is kept apart
    with pytest.raises(QuorumError, match="run quorum predict with --probs"):
        ranking.rank(frame, "margin")


def test_review_budget_places_the_top_rows_and_lists_them_in_order(preds_csv, tmp_path):
    out = tmp_path / "review"
    result = CliRunner().invoke(main, ["review", str(preds_csv), "--out", str(out), "--budget", "2"])
    assert result.exit_code == 0, result.output
    listing = pd.read_csv(out / "review.csv")
    assert listing["file"].tolist() == ["cat/d.png", "dog/c.png"]  # in the folder of the vote (mean probabilities)
    assert listing["rank"].tolist() == [1, 2] and listing["score"].iloc[0] == pytest.approx(math.log(3), abs=1e-6)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == ["cat/d.png", "dog/c.png"]
    assert "1 rows flagged unknown" in result.stderr
    assert "the 2 rows most worth a label, by disagreement" in (out / "README.txt").read_text()


def test_review_margin_without_probs_is_one_error_line(tmp_path):
    folder = tmp_path / "unlabelled"
    for (path, *_), written in zip(ROWS + [("broken.png",)], write_good_images(folder, len(ROWS) + 1)):
        written.rename(folder / path)
    write_predictions(hand_made(folder, with_probs=False), tmp_path / "preds.csv")
    out = tmp_path / "review"
    result = CliRunner().invoke(main, ["review", str(tmp_path / "preds.csv"), "--out", str(out), "--budget", "2",
                                       "--rank", "margin"])
    assert result.exit_code == 1 and not out.exists()
    assert result.stderr == ("Error: --rank margin needs the members' mean probabilities: "
                             "run quorum predict with --probs\n")
