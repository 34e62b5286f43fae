"""Which rows to label next: the ranking on a hand-made predictions CSV, and `quorum review --budget`."""

from __future__ import annotations

import math

import numpy as np
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


def hand_made(folder, with_probs=True, with_unknown=True, rows_=ROWS, kl=None) -> pd.DataFrame:
    """The rows as predict writes them; `kl` {path: consensus_kl} adds that column (predict --probs writes it)."""
    rows = []
    for path, votes, p_cat, p_dog, p_fox, unknown in rows_:
        probs = {"cat": p_cat, "dog": p_dog, "fox": p_fox}
        row = {"path": path, "prediction": max(probs, key=probs.get), "votes": max(votes.count(v) for v in votes),
               "members": 3, "decided_by": "", "confidence": max(probs.values())}
        row["agreement"] = row["votes"] / 3
        for m, label in enumerate(votes):
            row[f"m{m}_prediction"], row[f"m{m}_confidence"] = label, 0.6
        if with_probs:
            row.update({f"p_{name}": p for name, p in probs.items()})
        if kl is not None:
            row["consensus_kl"] = kl[path]
        if with_unknown:
            row["unknown"] = unknown
        rows.append({**row, "status": "ok", "error": ""})
    rows.append({"path": "broken.png", "status": "error", "error": "truncated image file"})
    frame = pd.DataFrame(rows)
    frame.attrs["folder"] = str(folder)
    return frame


def write_csv(tmp_path, rows=ROWS, with_probs=True, kl=None):
    """Hand-made rows as a real CSV with its .json, over real image files."""
    folder = tmp_path / "unlabelled"
    for (path, *_), written in zip(rows + [("broken.png",)], write_good_images(folder, len(rows) + 1)):
        written.rename(folder / path)
    out = tmp_path / "preds.csv"
    write_predictions(hand_made(folder, with_probs, rows_=rows, kl=kl), out)
    return out


def review_budget(csv, out, *options):
    return CliRunner().invoke(main, ["review", str(csv), "--out", str(out), "--budget", *map(str, options)])


@pytest.fixture
def preds_csv(tmp_path):
    return write_csv(tmp_path)


# The members' consensus KL, as predict --probs writes it: b's two-to-one split is sure, c's a near tie.
KL = {"a.png": 0.02, "b.png": 0.40, "c.png": 0.05, "d.png": 0.40, "f.png": 0.90}


def test_disagreement_ranks_by_the_mean_of_its_consensus_kl_and_margin_ranks(tmp_path):
    # By hand, ranks from the bottom among a-d (f is apart): consensus KL a 1, c 2, b and d 3.5 (tied);
    # margin a 1, b 2, d 3, c 4. Their means over 4 rows: a 0.25, b 0.6875, c 0.75, d 0.8125.
    ranked, apart = ranking.rank(read_predictions(write_csv(tmp_path, kl=KL)), "disagreement")
    assert ranked["path"].tolist() == ["d.png", "c.png", "b.png", "a.png"]  # c's near tie outranks b's sure split
    assert ranked["score"].tolist() == pytest.approx([0.8125, 0.75, 0.6875, 0.25]) and apart == 1
    assert ranked["rank"].tolist() == [1, 2, 3, 4]
    # Consensus KL alone would put b first with d: the joint rank is what moved it.
    assert ranking.disagreement(ranked.set_index("path").loc[["b.png", "c.png"]]).tolist() == [0.40, 0.05]


def test_without_consensus_kl_disagreement_joins_vote_entropy_and_margin_and_keeps_unknown_apart(preds_csv):
    # Vote entropy: a 0, b and c two to one, d all differ: ranks a 1, b and c 2.5, d 4; with margin's
    # a 1, b 2, d 3, c 4 the means over 4 rows are a 0.25, b 0.5625, c 0.8125, d 0.875.
    ranked, apart = ranking.rank(read_predictions(preds_csv), "disagreement")
    assert ranked["path"].tolist() == ["d.png", "c.png", "b.png", "a.png"]
    assert ranked["score"].tolist() == pytest.approx([0.875, 0.8125, 0.5625, 0.25])
    two_of_three = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    assert ranking.vote_entropy(ranked).tolist() == pytest.approx([math.log(3), two_of_three, two_of_three, 0.0])
    assert apart == 1


def test_margin_ranks_by_the_gap_between_the_two_lead_classes(preds_csv):
    ranked, _ = ranking.rank(read_predictions(preds_csv), "margin")
    assert ranked["path"].tolist() == ["c.png", "d.png", "b.png", "a.png"]
    assert ranked["score"].tolist() == pytest.approx([0.95, 0.85, 0.75, 0.15])



def test_members_named_p_something_are_not_taken_for_classes(tmp_path):
    """A model may be named `p_...`: its two columns are a member's, and the margin is the classes' alone."""
    frame = hand_made(tmp_path)
    frame = frame.rename(columns={f"m0{suffix}": f"p_m0{suffix}" for suffix in ("_prediction", "_confidence")})
    ranked, _ = ranking.rank(frame, "margin")
    assert ranked["path"].tolist() == ["c.png", "d.png", "b.png", "a.png"]
    assert ranked["score"].tolist() == pytest.approx([0.95, 0.85, 0.75, 0.15])

def test_random_is_a_seeded_shuffle_of_the_same_rows(preds_csv):
    frame = read_predictions(preds_csv)
    draws = {tuple(ranking.rank(frame, "random", seed)[0]["path"]) for seed in range(6)}
    assert len(draws) > 1 and all(sorted(draw) == ["a.png", "b.png", "c.png", "d.png"] for draw in draws)
    assert ranking.rank(frame, "random", 3)[0]["path"].tolist() == ranking.rank(frame, "random", 3)[0]["path"].tolist()


# Two cat rows lead on margin; balanced takes the best row of each predicted class in turn.
#   margin score: e 0.95 (cat), g 0.92 (cat), h 0.70 (dog), i 0.60 (fox).
CLASS_ROWS = [
    ("e.png", ("cat", "dog", "cat"), 0.50, 0.45, 0.05, False),
    ("g.png", ("cat", "dog", "cat"), 0.48, 0.40, 0.12, False),
    ("h.png", ("dog", "dog", "cat"), 0.30, 0.60, 0.10, False),
    ("i.png", ("fox", "fox", "fox"), 0.20, 0.20, 0.60, False),
]


def test_balanced_takes_the_most_uncertain_row_of_each_predicted_class_in_turn(tmp_path):
    frame = hand_made(tmp_path, rows_=CLASS_ROWS)
    assert ranking.rank(frame, "margin")[0]["path"].tolist() == ["e.png", "g.png", "h.png", "i.png"]
    ranked, _ = ranking.rank(frame, "balanced")
    assert ranked["path"].tolist() == ["e.png", "h.png", "i.png", "g.png"]  # cat, dog, fox, then cat's second
    assert ranked["score"].tolist() == pytest.approx([0.95, 0.70, 0.60, 0.92])  # each row's own margin score
    assert ranking.select(frame, 3, "balanced")[0]["prediction"].tolist() == ["cat", "dog", "fox"]


def test_review_ranks_by_margin_unless_told(tmp_path):
    out = tmp_path / "review"
    result = review_budget(write_csv(tmp_path, CLASS_ROWS), out, 3)
    assert result.exit_code == 0, result.output
    assert pd.read_csv(out / "review.csv")["file"].tolist() == ["cat/e.png", "cat/g.png", "dog/h.png"]
    assert "the 3 rows most worth a label, by margin" in (out / "README.txt").read_text()


def test_diverse_takes_the_most_uncertain_row_of_each_cluster_of_features(preds_csv):
    # a and b look alike, c and d look alike: with a budget of 2, one of each pair, each pair's thinner margin.
    looks = {"a.png": [1.0, 0.0], "b.png": [0.9, 0.1], "c.png": [0.0, 1.0], "d.png": [0.1, 0.9]}
    asked = []

    def features(paths):
        asked.extend(paths)
        return np.array([looks[path] for path in paths])

    ranked, apart = ranking.select(read_predictions(preds_csv), 2, "diverse", features=features)
    assert ranked["path"].tolist() == ["c.png", "b.png"]  # margin alone takes c and d, the same look twice
    assert sorted(asked) == ["a.png", "b.png", "c.png", "d.png"] and apart == 1  # neither unknown nor broken rows
    with pytest.raises(QuorumError, match="--rank diverse needs the images' features"):
        ranking.rank(read_predictions(preds_csv), "diverse")


def test_without_probabilities_every_ranking_ranks_by_the_votes_confidence(tmp_path):
    frame = hand_made(tmp_path, with_probs=False, with_unknown=False)
    ranked, apart = ranking.rank(frame, "disagreement")
    assert ranked["path"].iloc[0] == "f.png" and apart == 0  # without the column nothing is kept apart
    # margin and balanced fall back on 1 - the vote's confidence: cat f .66, d .55, b .40, a .10; dog c .50
    assert ranking.rank(frame, "margin")[0]["path"].tolist() == ["f.png", "d.png", "c.png", "b.png", "a.png"]
    assert ranking.rank(frame, "balanced")[0]["path"].tolist() == ["f.png", "c.png", "d.png", "b.png", "a.png"]


def test_review_budget_places_the_top_rows_and_lists_them_in_order(preds_csv, tmp_path):
    out = tmp_path / "review"
    result = review_budget(preds_csv, out, 2, "--rank", "disagreement")
    assert result.exit_code == 0, result.output
    listing = pd.read_csv(out / "review.csv")
    assert listing["file"].tolist() == ["cat/d.png", "dog/c.png"]  # in the folder of the vote (mean probabilities)
    assert listing["rank"].tolist() == [1, 2] and listing["score"].iloc[0] == pytest.approx(0.875)  # its joint rank
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == ["cat/d.png", "dog/c.png"]
    assert "1 rows flagged unknown" in result.stderr
    readme = (out / "README.txt").read_text()
    assert "the 2 rows most worth a label, by disagreement" in readme
    assert "The 1 rows flagged unknown" in readme and "kept apart" in readme and "_unknown/" not in readme


def test_review_diverse_clusters_the_real_images_features(preds_csv, tmp_path):
    out = tmp_path / "review"
    result = review_budget(preds_csv, out, 2, "--rank", "diverse")
    assert result.exit_code == 0, result.output
    listing = pd.read_csv(out / "review.csv")
    assert listing["rank"].tolist() == [1, 2] and listing["file"].nunique() == 2
    assert {file.split("/")[1] for file in listing["file"]} <= {"a.png", "b.png", "c.png", "d.png"}  # never f or broken
    assert "the 2 rows most worth a label, by diverse" in (out / "README.txt").read_text()


def test_review_without_probs_ranks_by_the_votes_confidence(tmp_path):
    out = tmp_path / "review"
    result = review_budget(write_csv(tmp_path, with_probs=False), out, 2)
    assert result.exit_code == 0, result.output
    # confidence (hand_made: the top mean probability) a .90, b .60, c .50, d .45; f unknown, kept apart
    assert pd.read_csv(out / "review.csv")["file"].tolist() == ["cat/d.png", "dog/c.png"]


def test_review_unknown_ranking_is_one_error_line(preds_csv, tmp_path):
    result = review_budget(preds_csv, tmp_path / "r", 2, "--rank", "entropy")
    assert result.exit_code == 2 and not (tmp_path / "r").exists()
    assert result.output.endswith("Error: Invalid value for '--rank': 'entropy' is not one of 'disagreement', "
                                  "'margin', 'balanced', 'diverse', 'random'.\n")
    assert ranking.RANKINGS == ("disagreement", "margin", "balanced", "diverse", "random")  # the CLI's list


def test_diverse_refuses_a_changed_candidate_before_the_backbone_loads(tmp_path):
    """--rank diverse reads every candidate's pixels: a file changed since predict is refused by name first, not
    clustered by its new pixels (nor found only after the backbone has run, and only if it was picked)."""
    from test_cli_fast import quorum_without_torch

    csv, folder = write_csv(tmp_path), tmp_path / "unlabelled"
    write_good_images(tmp_path / "other", 1, seed=7)[0].replace(folder / "c.png")
    status, output = quorum_without_torch("review", str(csv), "--out", str(tmp_path / "r"), "--budget", "1",
                                          "--rank", "diverse")
    assert (status, output) == ("1 False", f"Error: 1 file(s) in {folder} changed since {csv} was written (c.png): "
                                           "their votes may no longer fit; run quorum predict again\n")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("budget", [[], ["--budget", "2"]])
def test_review_refuses_a_class_named_like_its_unknown_folder(tmp_path, budget):
    """A class `_unknown` would share _unknown/ with the rows of no known class: one Error line, nothing written."""
    csv = write_csv(tmp_path)
    csv.write_text(csv.read_text().replace("fox", "_unknown"))  # a member's vote and p__unknown
    result = CliRunner().invoke(main, ["review", str(csv), "--out", str(tmp_path / "review"), *budget])
    assert result.exit_code == 1 and not (tmp_path / "review").exists()
    assert "a class is named '_unknown', the folder review keeps for rows of no known class" in result.output
