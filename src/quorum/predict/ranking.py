"""Which rows of a predictions table a person should label first: query-by-committee ranking.

Read straight from a `quorum predict` CSV, so it needs no model run:
- `disagreement`: vote entropy over the members' labels (modAL's `vote_entropy`: the entropy of
  the share of members voting each class), highest first. Ties (e.g. every 2-of-3 row) go to the
  thinner margin of the members' mean probabilities when the CSV has p_<class> (predict --probs),
  else to the lower `confidence`.
- `margin`: 1 - (top mean probability - second), from the p_<class> columns: needs --probs.
- `random`: a seeded shuffle, the baseline every ranking must beat.

modAL's consensus KL (each member's KL divergence from the mean) and consensus entropy need every
member's whole probability vector; the CSV holds each member's label and the probability it gave
that label only, so they are not offered here.

Rows flagged `unknown` (a column some predictions carry) are kept apart, never ranked: an image of
no known class is not worth a label of a known one.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import entropy

from quorum.errors import QuorumError
from quorum.predict.table import OK, member_columns, members_of

RANKINGS = ("disagreement", "margin", "random")


def probability_columns(frame: pd.DataFrame) -> list[str]:
    return [column for column in frame.columns if column.startswith("p_")]


def vote_entropy(frame: pd.DataFrame) -> np.ndarray:
    """Per row, the entropy (nats) of the members' votes; members that did not run (--lazy) are left out."""
    labels = frame[[member_columns(name)[0] for name in members_of(frame.columns)]]
    counts = labels.apply(lambda row: row.value_counts().to_numpy(), axis=1)
    return np.array([entropy(row) if len(row) else 0.0 for row in counts], dtype=float)


def margin_score(frame: pd.DataFrame) -> np.ndarray:
    """1 - (largest - second largest mean probability): 1 where the two lead classes tie, 0 where one has it all."""
    columns = probability_columns(frame)
    if len(columns) < 2:
        raise QuorumError("--rank margin needs the members' mean probabilities: run quorum predict with --probs")
    top_two = -np.sort(-frame[columns].to_numpy(dtype=float), axis=1)[:, :2]
    return 1.0 - (top_two[:, 0] - top_two[:, 1])


def flagged_unknown(frame: pd.DataFrame) -> pd.Series:
    """True where an `unknown` column says the image is of no known class (False without the column)."""
    if "unknown" not in frame.columns:
        return pd.Series(False, index=frame.index)
    return frame["unknown"].astype(str).str.lower().isin(["true", "1", "1.0"])


def rank(frame: pd.DataFrame, how: str = "disagreement", seed: int = 0) -> tuple[pd.DataFrame, int]:
    """(the readable rows not flagged unknown, best first, with `rank` from 1 and `score`; how many were kept apart)."""
    if how not in RANKINGS:
        raise QuorumError(f"unknown ranking '{how}': choose one of {', '.join(RANKINGS)}")
    ok = frame[frame["status"] == OK]
    apart = flagged_unknown(ok)
    rows = ok[~apart]
    if how == "random":
        score = np.random.default_rng(seed).random(len(rows))
        order = np.argsort(-score, kind="stable")
    elif how == "margin":
        score = margin_score(rows)
        order = np.argsort(-score, kind="stable")
    else:
        score = vote_entropy(rows)
        tie = margin_score(rows) if len(probability_columns(rows)) >= 2 else 1.0 - rows["confidence"].to_numpy(float)
        order = np.lexsort((-tie, -score))  # the last key sorts first
    ranked = rows.iloc[order].assign(score=score[order], rank=np.arange(1, len(rows) + 1))
    return ranked, int(apart.sum())


def select(frame: pd.DataFrame, budget: int, how: str = "disagreement", seed: int = 0) -> tuple[pd.DataFrame, int]:
    """The `budget` rows a person should label first, in order; and how many unknown rows were kept apart."""
    if budget < 1:
        raise QuorumError(f"--budget must be at least 1 (got {budget})")
    ranked, apart = rank(frame, how, seed)
    return ranked.head(budget), apart
